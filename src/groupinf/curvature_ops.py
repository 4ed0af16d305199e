"""Symmetric ``p×p`` operators for the target curvature ``H_f``; products only, never inverted.

Every operator maps ``V`` ``(k, p)`` to ``V H_f`` ``(k, p)``. ``LowRankCurvature`` holds
``H_f ≈ Bᵀ diag(σ) B`` (``B`` ``(r, p)``, ``σ = ±1``) so interactions become ``r``-dim inner products.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor


class TargetCurvature(ABC):
    """A symmetric operator ``H_f``."""

    @abstractmethod
    def matmul(self, V: Tensor) -> Tensor:
        """``V H_f`` for ``V`` ``(k, p)``."""

    def bilinear(self, U: Tensor, V: Tensor) -> Tensor:
        """All ``u_iᵀ H_f v_j``: ``(k_u, k_v)``."""
        return U @ self.matmul(V).T


class DenseCurvature(TargetCurvature):
    """An explicit symmetric matrix ``(p, p)``."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"expected a square matrix, got {tuple(matrix.shape)}")
        self.matrix = matrix

    def matmul(self, V: Tensor) -> Tensor:
        return V @ self.matrix


class OperatorCurvature(TargetCurvature):
    """Products computed on demand (Hessian- or GGN-vector products), in chunks of ``chunk`` vectors."""

    def __init__(self, product: Callable[[Tensor], Tensor], chunk: int = 256) -> None:
        self.product, self.chunk = product, chunk

    def matmul(self, V: Tensor) -> Tensor:
        return torch.cat([self.product(V[i : i + self.chunk]) for i in range(0, len(V), self.chunk)])


class LowRankCurvature(TargetCurvature):
    """``H_f = Bᵀ diag(sign) B`` with ``B`` ``(r, p)`` and ``sign`` ``(r,)`` in {−1, +1}."""

    def __init__(self, factor: Tensor, sign: Tensor | None = None) -> None:
        if factor.ndim != 2:
            raise ValueError(f"the factor B must be (r, p), got {tuple(factor.shape)}")
        self.factor = factor
        self.sign = torch.ones(len(factor), dtype=factor.dtype, device=factor.device) if sign is None else sign
        if self.sign.shape != (len(factor),):
            raise ValueError(f"sign must have shape ({len(factor)},), got {tuple(self.sign.shape)}")

    @property
    def rank(self) -> int:
        return len(self.factor)

    def project(self, V: Tensor) -> Tensor:
        """``b = V Bᵀ`` ``(k, r)``: the coordinates in which interactions are ``b_iᵀ diag(sign) b_j``."""
        return V @ self.factor.T

    def matmul(self, V: Tensor) -> Tensor:
        return (self.project(V) * self.sign) @ self.factor

    @classmethod
    def from_matrix(cls, matrix: Tensor, rank: int | None = None) -> LowRankCurvature:
        """Top-``rank`` eigenpairs by magnitude of a symmetric matrix (all of them by default)."""
        evals, evecs = torch.linalg.eigh(matrix.double())
        order = evals.abs().argsort(descending=True)[: rank or len(evals)]
        evals, evecs = evals[order], evecs[:, order]
        factor = (evals.abs().sqrt().unsqueeze(1) * evecs.T).to(matrix.dtype)
        return cls(factor, torch.sign(evals).to(matrix.dtype))

    @classmethod
    def from_operator(cls, op: TargetCurvature, dim: int, rank: int, like: Tensor) -> LowRankCurvature:
        """Top-``rank`` eigenpairs by magnitude of an operator (Lanczos, scipy ``eigsh``)."""
        if not 0 < rank < dim:
            raise ValueError(f"Lanczos needs 0 < rank < p = {dim}, got {rank}; use from_matrix for full rank")

        def matvec(v: np.ndarray) -> np.ndarray:
            vec = torch.as_tensor(np.asarray(v).reshape(1, -1), dtype=like.dtype, device=like.device)
            return op.matmul(vec)[0].double().cpu().numpy()

        linop = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
        evals, evecs = eigsh(linop, k=rank, which="LM")
        evals_t = torch.as_tensor(evals, dtype=like.dtype, device=like.device)
        evecs_t = torch.as_tensor(evecs, dtype=like.dtype, device=like.device)
        return cls(evals_t.abs().sqrt().unsqueeze(1) * evecs_t.T, torch.sign(evals_t))

"""Products with a fixed matrix, on the fastest kernel torch has for it.

``FixedMatrix(W)`` with ``W`` ``(m, c)`` computes ``x Wᵀ`` ``(B, m)`` for many batches ``x`` ``(B, c)``. On CPU in
float32, ``torch.mm`` calls MKL, whose kernels do not use AVX-512 on AMD processors; oneDNN's inner product
(``aten::mkldnn_linear``, the kernel behind ``torch.utils.mkldnn``) does. ``W`` is converted to oneDNN's layout
once, each ``x`` on every call. On the project's 2-core AMD EPYC the influence-score products ran at about twice
MKL's throughput this way (docs/results.md §3). Same float32 arithmetic in another summation order: results
agree with ``x @ W.T`` to float32 rounding, not bit for bit. Elsewhere (other dtypes, other devices, a torch built
without oneDNN, ``torch.backends.mkldnn`` disabled when the matrix is made, or a product autograd must
differentiate) it is ``x @ W.T``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def onednn_applies(matrix: Tensor) -> bool:
    """Whether ``FixedMatrix(matrix)`` uses oneDNN: a float32 CPU matrix, oneDNN available and enabled."""
    return (
        matrix.device.type == "cpu"
        and matrix.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


class FixedMatrix:
    """A matrix ``W`` ``(m, c)`` to multiply many batches with: ``self(x) = x Wᵀ`` ``(B, m)`` for ``x`` ``(B, c)``."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2:
            raise ValueError(f"expected a matrix (m, c), got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self._onednn = matrix.detach().contiguous().to_mkldnn() if onednn_applies(matrix) else None

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.matrix.shape[1]:
            raise ValueError(f"expected rows (B, {self.matrix.shape[1]}), got shape {tuple(x.shape)}")
        if x.dtype != self.matrix.dtype or x.device != self.matrix.device:
            raise ValueError(
                f"rows in {x.dtype} on {x.device} do not match the matrix ({self.matrix.dtype} on {self.matrix.device})"
            )
        differentiable = torch.is_grad_enabled() and (x.requires_grad or self.matrix.requires_grad)
        if self._onednn is None or differentiable:  # oneDNN's layout has no autograd
            return x @ self.matrix.T
        return torch.ops.aten.mkldnn_linear(x.contiguous().to_mkldnn(), self._onednn, None).to_dense()

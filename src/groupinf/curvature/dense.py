"""Dense curvature for small models: the exact Hessian of ``R``, the Gauss–Newton matrix, or the second moment
of given per-example gradients (a Fisher).

The matrix is built once, eigendecomposed once in float64 and reused for every solve.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.func import hessian
from tqdm.auto import tqdm

from groupinf.checks import check_count
from groupinf.curvature.base import Curvature, Damping, check_damping, resolve_damping
from groupinf.gradients import batches, per_example_jacobians
from groupinf.task import Task, check_inputs, check_lengths


def exact_hessian(task: Task, theta: Tensor, inputs: Tensor, targets: Tensor, n: int, batch_size: int = 512) -> Tensor:
    """``∇²R(θ) = (1/n) Σ_i ∇²l_i(θ) + λI`` over the given examples: ``(p, p)``."""
    check_inputs(theta, inputs, what="training inputs")
    check_count(n, "n (the training-set size)")
    check_lengths(inputs, targets)
    total = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype, device=theta.device)
    for sl in tqdm(list(batches(len(inputs), batch_size)), desc="exact Hessian", leave=False):
        total += hessian(lambda th, sl=sl: task.losses(th, inputs[sl], targets[sl]).sum())(theta)
    return total / n + task.l2 * torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)


def gauss_newton(task: Task, theta: Tensor, inputs: Tensor, n: int, batch_size: int = 256) -> Tensor:
    """``G = (1/n) Σ_i Φ_iᵀ Λ_i Φ_i + λI``: ``(p, p)`` (equals the Fisher for NLL losses)."""
    check_inputs(theta, inputs, what="training inputs")
    check_count(n, "n (the training-set size)")
    total = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype, device=theta.device)
    for sl in tqdm(list(batches(len(inputs), batch_size)), desc="Gauss-Newton", leave=False):
        jac = per_example_jacobians(task, theta, inputs[sl])  # (b, C, p)
        root = task.loss.output_hessian_sqrt(task.outputs(theta, inputs[sl]).detach())
        rows = (root.transpose(-1, -2) @ jac).reshape(-1, theta.numel())
        total += rows.T @ rows
    return total / n + task.l2 * torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)


def second_moment(batches: Iterable[Tensor]) -> Tensor:
    """``(1/N) Σ_i g_i g_iᵀ`` ``(d, d)`` in float64 over the rows ``g_i`` of ``batches`` ``(rows, d)`` (``N`` rows in
    all), on their device."""
    total, count = None, 0
    for batch in batches:
        rows = batch.double()
        if total is None:
            total = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=rows.device)
        total.addmm_(rows.T, rows)
        count += len(rows)
    if total is None or count == 0:
        raise ValueError("no per-example gradients to take the second moment of")
    return total / count


class EigenCurvature(Curvature):
    """``H + ρI`` held as the float64 eigendecomposition of a dense symmetric ``H`` ``(p, p)``.

    Raises ``ValueError`` when ``H + ρI`` is singular or not positive definite.
    """

    def __init__(self, matrix: Tensor, damping: Damping = 0.0) -> None:
        check_damping(damping)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"expected a square matrix, got {tuple(matrix.shape)}")
        if not torch.isfinite(matrix).all():
            raise ValueError("the curvature matrix contains NaN or inf")
        sym = 0.5 * (matrix + matrix.T).double()
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(sym)
        self.damping = resolve_damping(damping, self.eigenvalues.mean().item())
        shifted = self.eigenvalues + self.damping
        largest = shifted.abs().max().item()
        tol = matrix.shape[0] * torch.finfo(torch.float64).eps * max(largest, 1e-300)
        smallest = shifted.min().item()
        if not smallest > tol:
            kind = "singular" if abs(smallest) <= tol else "not positive definite"
            raise ValueError(
                f"the damped Hessian is {kind}: its smallest eigenvalue is {smallest:.3g} "
                f"(damping {self.damping:.3g}, largest {largest:.3g}); pass a damping > 0 "
                "(or 'heuristic'), an L2 strength, or use the Gauss-Newton curvature"
            )

    def solve(self, V: Tensor) -> Tensor:
        Q = self.eigenvectors.to(V.device)
        rotated = (V.double() @ Q) / (self.eigenvalues.to(V.device) + self.damping)
        return (rotated @ Q.T).to(V.dtype)

    def matvec(self, V: Tensor) -> Tensor:
        Q = self.eigenvectors.to(V.device)
        rotated = (V.double() @ Q) * (self.eigenvalues.to(V.device) + self.damping)
        return (rotated @ Q.T).to(V.dtype)

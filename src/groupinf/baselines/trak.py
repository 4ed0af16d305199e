"""TRAK (Park et al. 2023) with randomly projected output-function gradients and a ridge.

For each model ``θ_s`` in the ensemble: ``φ_i = P ∇m_i`` (``P`` the ``k×p`` Gaussian projection of
``groupinf.projection``, drawn as ``Pᵀ`` from the seed ``seed + s`` on the parameters' device and in their
dtype; ``m`` the output function, e.g. the margin ``log p_y − log(1 − p_y)``), ``K = Σ_i φ_i φ_iᵀ + ρI``.
Each training loss gradient is ``g_i = −Q_i ∇m_i`` exactly (``Q_i = 1 − p_{y_i}`` for softmax, ``y − h``
for squared error), so the removal effect on the target is estimated by
``∇fᵀ (ΦᵀΦ)⁻¹ P g_i`` = ``−Q_i (P∇f)ᵀ K⁻¹ φ_i``, averaged over the ensemble: larger = larger target
increase on removal, the orientation of the removal estimators.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, vmap

from groupinf.gradients import batches
from groupinf.losses import BinaryLogistic, CrossEntropy, SquaredError
from groupinf.projection import gaussian_projection
from groupinf.task import Task


def output_function(task: Task, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(m, Q)`` per example ``(B,)``: TRAK's output function and the weight with ``g = −Q ∇m``."""
    loss = task.loss
    if isinstance(loss, CrossEntropy):
        log_p = F.log_softmax(outputs, dim=-1).gather(1, targets[:, None])[:, 0]
        margin = log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-12))
        return margin, 1 - log_p.detach().exp()
    if isinstance(loss, BinaryLogistic):
        sign = 2 * targets.to(outputs.dtype) - 1
        margin = sign * outputs[:, 0]
        return margin, torch.sigmoid(-margin.detach())
    if isinstance(loss, SquaredError):
        prediction = outputs[:, 0]
        return prediction, targets.to(outputs.dtype) - prediction.detach()
    raise ValueError(f"TRAK has no output function for the loss {type(loss).__name__}")


def trak_scores(
    task: Task,
    thetas: Sequence[Tensor],
    inputs: Tensor,
    targets: Tensor,
    proj_dim: int = 512,
    ridge: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """Per-example TRAK removal scores ``(N,)`` averaged over the models ``thetas``.

    ``ridge`` is relative: ``ρ = ridge · trace(ΦᵀΦ) / k``.
    """
    if not thetas:
        raise ValueError("TRAK needs at least one model")
    if proj_dim < 1:
        raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
    p = thetas[0].numel()
    scores = torch.zeros(len(inputs), dtype=thetas[0].dtype, device=thetas[0].device)
    for s, theta in enumerate(thetas):
        projection = gaussian_projection(
            proj_dim, p, seed + s, dtype=theta.dtype, device=theta.device, transposed=True, divisor=proj_dim**0.5
        )

        def margin_one(th: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return output_function(task, task.outputs(th, x[None]), y[None])[0][0]

        per_example = vmap(grad(margin_one), in_dims=(None, 0, 0))
        features, weights = [], []
        for sl in batches(len(inputs), batch_size):
            features.append(per_example(theta, inputs[sl], targets[sl]) @ projection)
            weights.append(output_function(task, task.outputs(theta, inputs[sl]), targets[sl])[1])
        phi, q = torch.cat(features), torch.cat(weights)
        kernel = phi.T @ phi
        kernel += ridge * kernel.trace() / proj_dim * torch.eye(proj_dim, dtype=kernel.dtype, device=kernel.device)
        target = task.target.gradient(task, theta) @ projection
        scores += -q * (phi @ torch.linalg.solve(kernel, target))
    return scores / len(thetas)

"""TracIn (Pruthi et al. 2020), checkpoint version: ``Σ_t η_t ∇f(θ_t)ᵀ g_i(θ_t)``.

Sign: a positive score means training on example ``i`` lowered the target ``f`` along the
trajectory, so removing it raises ``f``: larger = larger target increase on removal, the same
orientation as the removal estimators. A group's score is the sum over its members.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from groupinf.gradients import batches, per_example_gradients
from groupinf.task import Task


def tracin_scores(
    task: Task,
    checkpoints: Sequence[tuple[Tensor, float]],
    inputs: Tensor,
    targets: Tensor,
    batch_size: int = 256,
) -> Tensor:
    """Per-example TracIn scores ``(N,)`` from ``(theta_t, learning_rate_t)`` checkpoints."""
    if not checkpoints:
        raise ValueError("TracIn needs at least one (parameters, learning rate) checkpoint")
    scores = torch.zeros(len(inputs), dtype=checkpoints[0][0].dtype, device=checkpoints[0][0].device)
    for theta, lr in checkpoints:
        grad_f = task.target.gradient(task, theta)
        for sl in batches(len(inputs), batch_size):
            scores[sl] += lr * (per_example_gradients(task, theta, inputs[sl], targets[sl], batch_size) @ grad_f)
    return scores

"""Per-example gradients and output Jacobians with ``torch.func`` (vmap over grad/jacrev).

Gradients are of the unscaled per-example loss ``l_i`` with respect to the attributed parameters.
Put the model in ``eval()`` mode first: dropout inside ``vmap`` raises.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.func import grad, jacrev, vmap
from tqdm.auto import tqdm

from groupinf.task import Task, check_inputs


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def per_example_gradients(
    task: Task,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    batch_size: int = 256,
    progress: bool = False,
) -> Tensor:
    """``g_i = ∇l_i(θ)`` for every example: ``(N, p)`` in ``theta``'s dtype and device."""
    check_inputs(theta, inputs, what="inputs")

    def single_loss(th: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return task.losses(th, x.unsqueeze(0), y.unsqueeze(0))[0]

    per_example = vmap(grad(single_loss), in_dims=(None, 0, 0))
    out = torch.empty(len(inputs), theta.numel(), dtype=theta.dtype, device=theta.device)
    for sl in tqdm(list(batches(len(inputs), batch_size)), desc="gradients", disable=not progress):
        out[sl] = per_example(theta, inputs[sl], targets[sl])
    if not torch.isfinite(out).all():
        raise ValueError("per-example gradients contain NaN or inf: check the model, the loss and the data")
    return out


def per_example_jacobians(task: Task, theta: Tensor, inputs: Tensor) -> Tensor:
    """Output Jacobians ``Φ_i = ∂h(x_i)/∂θ``: ``(B, C, p)`` for one batch of inputs."""
    check_inputs(theta, inputs, what="inputs")

    def single_output(th: Tensor, x: Tensor) -> Tensor:
        return task.outputs(th, x.unsqueeze(0))[0]

    return vmap(jacrev(single_output), in_dims=(None, 0))(theta, inputs)

"""Products of many vectors with summed per-example curvature, never forming a ``p×p`` matrix.

``V`` is ``(k, p)``; results are ``(k, p)``. Both sums are over the given examples, unscaled:
exact ``Σ_i ∇²l_i(θ) V`` and Gauss–Newton ``Σ_i Φ_iᵀ Λ_i Φ_i V``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from groupinf.gradients import batches
from groupinf.task import Task, check_inputs


def loss_hvp(task: Task, theta: Tensor, inputs: Tensor, targets: Tensor, V: Tensor, batch_size: int = 1024) -> Tensor:
    """Exact ``Σ_i ∇²l_i(θ) Vᵀ`` as ``(k, p)`` (forward-over-reverse)."""
    check_inputs(theta, inputs, V, what="inputs and vectors")
    out = torch.zeros_like(V)
    for sl in batches(len(inputs), batch_size):
        x, y = inputs[sl], targets[sl]

        def batch_grad(th: Tensor, x: Tensor = x, y: Tensor = y) -> Tensor:
            return torch.func.grad(lambda t: task.losses(t, x, y).sum())(th)

        out += vmap(lambda v, f=batch_grad: jvp(f, (theta,), (v,))[1])(V)
    return out


def loss_ggn_vp(task: Task, theta: Tensor, inputs: Tensor, V: Tensor, batch_size: int = 1024) -> Tensor:
    """Gauss–Newton ``Σ_i Φ_iᵀ Λ_i Φ_i Vᵀ`` as ``(k, p)``; ``Λ_i`` from the task's loss."""
    check_inputs(theta, inputs, V, what="inputs and vectors")
    out = torch.zeros_like(V)
    for sl in batches(len(inputs), batch_size):
        x = inputs[sl]

        def outputs(th: Tensor, x: Tensor = x) -> Tensor:
            return task.outputs(th, x)

        h, pullback = vjp(outputs, theta)
        lam = task.loss.output_hessian(h.detach())

        def one(v: Tensor, outputs=outputs, pullback=pullback, lam=lam) -> Tensor:
            jv = jvp(outputs, (theta,), (v,))[1]
            return pullback(torch.einsum("bij,bj->bi", lam, jv))[0]

        out += vmap(one)(V)
    return out


def per_example_hvp(
    task: Task, theta: Tensor, inputs: Tensor, targets: Tensor, v: Tensor, batch_size: int = 256
) -> Tensor:
    """``∇²l_i(θ) v`` for every example and one vector ``v`` ``(p,)``: ``(N, p)``."""
    check_inputs(theta, inputs, v, what="inputs and vector")

    def single(x: Tensor, y: Tensor) -> Tensor:
        g = torch.func.grad(lambda t: task.losses(t, x.unsqueeze(0), y.unsqueeze(0))[0])
        return jvp(g, (theta,), (v,))[1]

    return torch.cat([vmap(single)(inputs[sl], targets[sl]) for sl in batches(len(inputs), batch_size)])


def per_example_ggn_vp(task: Task, theta: Tensor, inputs: Tensor, v: Tensor, batch_size: int = 256) -> Tensor:
    """``Φ_iᵀ Λ_i Φ_i v`` for every example and one vector ``v`` ``(p,)``: ``(N, p)``."""
    check_inputs(theta, inputs, v, what="inputs and vector")

    def single(x: Tensor) -> Tensor:
        def output(t: Tensor) -> Tensor:
            return task.outputs(t, x.unsqueeze(0))

        h, jv = jvp(output, (theta,), (v,))
        lam = task.loss.output_hessian(h.detach())
        _, pullback = vjp(output, theta)
        return pullback(torch.einsum("bij,bj->bi", lam, jv))[0]

    return torch.cat([vmap(single)(inputs[sl]) for sl in batches(len(inputs), batch_size)])

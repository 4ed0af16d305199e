"""Target functions ``f(θ)`` (to be MINIMISED), their gradients and their curvature ``H_f``.

A target is evaluated through the task's model at flat parameters ``theta``. ``LossTarget`` is the
mean training-type loss over a set of examples (a held-out set, or a single test example);
``CallableTarget`` wraps any user function of the model. Products with ``H_f`` are returned as
``TargetCurvature`` operators (``curvature_ops``), which the estimators consume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from math import sqrt

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jvp, vmap

from groupinf.gradients import batches, per_example_jacobians
from groupinf.products import loss_ggn_vp, loss_hvp
from groupinf.task import Task, check_inputs, check_lengths


class Target(ABC):
    """A scalar function of the attributed parameters, to be minimised."""

    @abstractmethod
    def value(self, task: Task, theta: Tensor) -> Tensor:
        """``f(θ)``, a scalar tensor."""

    def gradient(self, task: Task, theta: Tensor) -> Tensor:
        """``∇f(θ)`` ``(p,)``."""
        g = grad(lambda th: self.value(task, th))(theta)
        if not torch.isfinite(g).all():
            raise ValueError("the target gradient contains NaN or inf")
        return g

    def hvp(self, task: Task, theta: Tensor, V: Tensor) -> Tensor:
        """Exact ``∇²f(θ) Vᵀ`` for ``V`` ``(k, p)`` -> ``(k, p)``."""
        g = grad(lambda th: self.value(task, th))
        return vmap(lambda v: jvp(g, (theta,), (v,))[1])(V)

    def hessian(self, task: Task, theta: Tensor) -> Tensor:
        """Dense exact ``∇²f(θ)`` ``(p, p)`` (small models only)."""
        return hessian(lambda th: self.value(task, th))(theta)

    def ggn_vp(self, task: Task, theta: Tensor, V: Tensor) -> Tensor:
        """Gauss–Newton products; only defined for loss-type targets."""
        raise ValueError(f"{type(self).__name__} has no Gauss–Newton form; use the exact target Hessian (hvp) instead")


class LossTarget(Target):
    """``f(θ) = (1/m) Σ_j l(h(x_j; θ), y_j)`` over ``m`` held-out examples (the task's loss)."""

    def __init__(self, inputs: Tensor, targets: Tensor, batch_size: int = 1024) -> None:
        if len(inputs) == 0:
            raise ValueError("the target set has no examples")
        check_lengths(inputs, targets, what="target inputs")
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size

    @property
    def size(self) -> int:
        return len(self.inputs)

    def value(self, task: Task, theta: Tensor) -> Tensor:
        check_inputs(theta, self.inputs, what="target inputs")
        total = sum(
            task.losses(theta, self.inputs[sl], self.targets[sl]).sum() for sl in batches(self.size, self.batch_size)
        )
        return total / self.size

    def hvp(self, task: Task, theta: Tensor, V: Tensor) -> Tensor:
        return loss_hvp(task, theta, self.inputs, self.targets, V, self.batch_size) / self.size

    def ggn_vp(self, task: Task, theta: Tensor, V: Tensor) -> Tensor:
        return loss_ggn_vp(task, theta, self.inputs, V, self.batch_size) / self.size

    def ggn_factor(self, task: Task, theta: Tensor, batch_size: int = 256) -> Tensor:
        """``B`` ``(m·C, p)`` with ``BᵀB`` = the target's Gauss–Newton matrix (rows ``L_jᵀΦ_j / √m``)."""
        rows = []
        for sl in batches(self.size, batch_size):
            jac = per_example_jacobians(task, theta, self.inputs[sl])  # (b, C, p)
            root = task.loss.output_hessian_sqrt(task.outputs(theta, self.inputs[sl]).detach())
            rows.append((root.transpose(-1, -2) @ jac).reshape(-1, theta.numel()))
        return torch.cat(rows) / sqrt(self.size)


def mean_loss(inputs: Tensor, targets: Tensor) -> LossTarget:
    """Mean task loss over a held-out set (the default target)."""
    return LossTarget(inputs, targets)


def example_loss(x: Tensor, y: Tensor) -> LossTarget:
    """The loss of one test example ``x`` (feature shape, no batch dim) with label ``y``."""
    return LossTarget(x.unsqueeze(0), y.reshape(1))


class _Apply(nn.Module):
    """Runs ``fn(model)`` as a forward pass, so ``functional_call`` can swap the parameters."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module], Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self) -> Tensor:
        return self.fn(self.model)


class CallableTarget(Target):
    """Any scalar function of the model, e.g. ``lambda m: -log_likelihood(m, batch)``."""

    def __init__(self, fn: Callable[[nn.Module], Tensor]) -> None:
        self.fn = fn

    def value(self, task: Task, theta: Tensor) -> Tensor:
        params = {f"model.{k}": v for k, v in task.space.unflatten(theta).items()}
        out = functional_call(_Apply(task.model, self.fn), params, ())
        if out.numel() != 1:
            raise ValueError(f"a target must return a scalar, got shape {tuple(out.shape)}")
        return out.reshape(())

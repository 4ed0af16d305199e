"""Target functions ``f(θ)`` (to be MINIMISED), their gradients and their curvature ``H_f``.

A target (the ``Target`` interface of ``task.py``) is evaluated through the task's model at flat parameters
``theta``. ``LossTarget`` is the mean training-type loss over a set of examples (a held-out set, or a single
test example); ``CallableTarget`` wraps any user function of the model. ``target_curvature`` returns
products with ``H_f`` as ``TargetCurvature`` operators (``curvature_ops``), which the estimators consume.
"""

from __future__ import annotations

from collections.abc import Callable
from math import sqrt
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.func import functional_call

from groupinf.curvature_ops import OperatorCurvature, TargetCurvature
from groupinf.gradients import batches, per_example_jacobians
from groupinf.products import loss_ggn_vp, loss_hvp
from groupinf.target_blocks import BlockDiagonalCurvature
from groupinf.task import Target, Task, check_inputs, check_lengths

#: ``H_f`` choices: exact Hessian or Gauss–Newton products, whole or restricted to per-layer blocks.
TargetKind = Literal["exact", "ggn", "block-exact", "block-ggn"]
TARGET_KINDS: tuple[str, ...] = get_args(TargetKind)
#: ``H_f`` of a network when none is given: per-layer Gauss–Newton blocks. At the cpu suite's damping it ranked
#: groups best (tied with block-exact, the same matrix on ReLU networks) on every network setting, and F+I
#: beat F with it (docs/math.md §7).
NETWORK_TARGET_CURVATURE: TargetKind = "block-ggn"
#: ``H_f`` of a linear model when none is given. It is one layer whose Hessian is its Gauss–Newton matrix, so
#: the four kinds are the same matrix there.
LINEAR_TARGET_CURVATURE: TargetKind = "exact"


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


def target_curvature(task: Task, theta: Tensor, kind: TargetKind) -> TargetCurvature:
    """``H_f`` of the task's target as an operator: exact Hessian- or Gauss–Newton-vector products, or
    ("block-…") their per-layer diagonal blocks (docs/math.md §7)."""
    if kind == "exact":
        return OperatorCurvature(lambda V: task.target.hvp(task, theta, V))
    if kind == "ggn":
        return OperatorCurvature(lambda V: task.target.ggn_vp(task, theta, V))
    if kind in ("block-exact", "block-ggn"):
        return BlockDiagonalCurvature.of_target(task, theta, "exact" if kind == "block-exact" else "ggn")
    raise ValueError(f"target curvature must be one of {TARGET_KINDS}, got {kind!r}")

"""Group influence for a fitted model: gradients -> curvature -> shifts -> estimators.

``GroupInfluence`` computes the per-example shifts ``δ_i = (1/n) H⁻¹ g_i`` and ``∇f`` once and then
estimates F, I, F+I, F+B and F+I+B for many groups at once, in the removal or addition setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from groupinf import estimators
from groupinf.checks import check_count
from groupinf.curvature import Curvature
from groupinf.curvature_ops import OperatorCurvature, TargetCurvature
from groupinf.estimators import Setting
from groupinf.gradients import per_example_gradients
from groupinf.groups import GroupLike, group_sums, validate_groups
from groupinf.products import loss_ggn_vp, loss_hvp
from groupinf.target_blocks import BlockDiagonalCurvature
from groupinf.task import Task

ProductKind = Literal["exact", "ggn"]
#: ``H_f`` choices: exact Hessian or Gauss–Newton products, whole or restricted to per-layer blocks.
TargetKind = Literal["exact", "ggn", "block-exact", "block-ggn"]
TARGET_KINDS: tuple[str, ...] = get_args(TargetKind)


def compute_shifts(curvature: Curvature, gradients: Tensor, n: int) -> Tensor:
    """``δ_i = (1/n) (H + ρI)⁻¹ g_i`` for gradients ``(N, p)`` -> ``(N, p)``."""
    check_count(n, "n (the training-set size)")
    if not torch.isfinite(gradients).all():
        raise ValueError("gradients contain NaN or inf; check the model and the data")
    return curvature.solve(gradients) / n


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


class GroupInfluence:
    """Interaction-aware group influence of the training set ``(inputs, targets)`` at ``theta``.

    ``n`` is the training-set size used in ``R`` (default: ``len(inputs)``); ``hf`` is the target
    curvature (an operator, or "exact"/"ggn"); ``group_hessian`` chooses the per-example curvature
    ``H_z`` of Basu's correction ("exact" Hessians, or "ggn" when ``H`` is a Gauss–Newton matrix).
    """

    def __init__(
        self,
        task: Task,
        theta: Tensor,
        inputs: Tensor,
        targets: Tensor,
        curvature: Curvature,
        *,
        n: int | None = None,
        hf: TargetCurvature | TargetKind = "exact",
        group_hessian: ProductKind = "exact",
        batch_size: int = 256,
    ) -> None:
        self.task, self.theta, self.inputs, self.targets = task, theta, inputs, targets
        self.n = len(inputs) if n is None else check_count(n, "n (the training-set size)")
        self.curvature = curvature
        self.hf = target_curvature(task, theta, hf) if isinstance(hf, str) else hf
        if group_hessian not in ("exact", "ggn"):
            raise ValueError(f"group_hessian must be 'exact' or 'ggn', got {group_hessian!r}")
        self.group_hessian = group_hessian
        self.batch_size = batch_size
        self.shifts = self.shifts_for(inputs, targets)  # (N, p)
        self.grad_f = task.target.gradient(task, theta)  # (p,)

    def shifts_for(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Shifts ``(N', p)`` of any examples (e.g. addition candidates from outside D), with this H and n."""
        gradients = per_example_gradients(self.task, self.theta, inputs, targets, self.batch_size)
        return compute_shifts(self.curvature, gradients, self.n)

    def group_shifts(self, groups: Sequence[GroupLike]) -> tuple[list[Tensor], Tensor]:
        """Validated groups and their shifts ``δ_G`` ``(M, p)``."""
        valid = validate_groups(groups, len(self.shifts))
        return valid, group_sums(valid, self.shifts)

    def estimate(
        self,
        groups: Sequence[GroupLike],
        setting: Setting = "removal",
        basu: bool = True,
    ) -> dict[str, Tensor]:
        """Estimates ``(M,)`` per method name (F, I, F+I, and F+B, F+I+B when ``basu``; removal only)."""
        estimators.check_setting(setting)
        valid, delta_g = self.group_shifts(groups)
        first = estimators.first_order(self.grad_f, delta_g, setting)
        inter = estimators.interaction(delta_g, self.hf)
        basu_first = None
        if basu:
            if setting != "removal":
                raise ValueError("Basu et al.'s correction is defined for removal; pass basu=False")
            basu_first = self.basu_shift(valid, delta_g) @ self.grad_f
        return estimators.combine(first, inter, basu_first)

    def basu_shift(self, groups: Sequence[Tensor], delta_g: Tensor) -> Tensor:
        """Basu et al.'s ``Δθ_B`` for each (validated) group ``(M, p)``."""
        hz_delta = torch.cat([self.group_curvature_product(g, delta_g[m : m + 1]) for m, g in enumerate(groups)])
        response = self.curvature.solve(hz_delta) / self.n
        sizes = torch.tensor([len(g) for g in groups], device=delta_g.device)
        return estimators.basu_shift(delta_g, response, sizes, self.n)

    def group_curvature_product(self, group: Tensor, V: Tensor) -> Tensor:
        """``V Σ_{z∈G} H_z`` ``(k, p)`` with the unscaled per-example curvature of the group's members."""
        idx = group.to(self.inputs.device)
        x, y = self.inputs[idx], self.targets[idx]
        if self.group_hessian == "exact":
            return loss_hvp(self.task, self.theta, x, y, V)
        return loss_ggn_vp(self.task, self.theta, x, V)

    def pairwise(self, group: GroupLike) -> Tensor:
        """The pairwise interaction matrix ``J`` ``(k, k)`` of one group's members (in the given order)."""
        (idx,) = validate_groups([group], len(self.shifts))
        return estimators.pairwise_interactions(self.shifts[idx.to(self.shifts.device)], self.hf)

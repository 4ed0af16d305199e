"""Group influence for a fitted model: gradients -> curvature -> shifts -> estimators and selection.

``GroupInfluence`` is the library's one entry point (in the spirit of Kronfluence's ``Analyzer``): it fits the
training curvature once, computes the per-example shifts ``δ_i = (1/n) H⁻¹ g_i`` and ``∇f`` once, and then
estimates F, I, F+I, F+B and F+I+B for many groups at once (removal or addition), gives the pairwise
interactions ``J`` of a group, and scores and selects candidates from outside the training set
(docs/math.md §2-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from groupinf import estimators
from groupinf.checks import check_count
from groupinf.curvature import Curvature, CurvatureKind, Damping, fit_curvature
from groupinf.curvature_ops import TargetCurvature
from groupinf.digests import content_digest
from groupinf.estimators import Setting
from groupinf.features import SelectionFeatures, candidate_shifts, compute_features
from groupinf.gradients import per_example_gradients
from groupinf.groups import GroupLike, group_sums, validate_groups
from groupinf.methods import METHODS, PoolInputs, run_method
from groupinf.products import loss_ggn_vp, loss_hvp
from groupinf.selection import Selection
from groupinf.target import LossTarget, TargetKind, target_curvature
from groupinf.task import Task

ProductKind = Literal["exact", "ggn"]


class GroupInfluence:
    """Interaction-aware group influence of the training set ``(inputs, targets)`` at ``theta``.

    Build it with ``GroupInfluence.fit`` (the training curvature by name), or from a fitted ``Curvature``.
    ``n`` is the training-set size used in ``R`` (default: ``len(inputs)``); ``hf`` is the target
    curvature (an operator, or a ``TargetKind``: "exact", "ggn", "block-exact", "block-ggn");
    ``group_hessian`` chooses the per-example curvature ``H_z`` of Basu's correction ("exact" Hessians, or
    "ggn" when ``H`` is a Gauss–Newton matrix). It keeps the curvature, the training shifts ``(N, p)``,
    ``∇f`` ``(p,)`` and the features of the last candidate pool it was given.
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
        self._features: tuple[tuple[str, str | None], SelectionFeatures] | None = None

    @classmethod
    def fit(
        cls,
        task: Task,
        inputs: Tensor,
        targets: Tensor,
        *,
        curvature: CurvatureKind = "exact",
        damping: Damping,
        n: int | None = None,
        theta: Tensor | None = None,
        hf: TargetCurvature | TargetKind = "exact",
        group_hessian: ProductKind | None = None,
        batch_size: int = 256,
    ) -> GroupInfluence:
        """Fit the training curvature named ``curvature`` (``curvature.fit_curvature``, damped by ``damping``)
        at ``theta`` (default: the model's current parameters, which should be ``θ*``) on the training set
        ``(inputs, targets)`` of size ``n`` (default ``len(inputs)``), and compute its shifts and ``∇f``.

        ``group_hessian`` defaults to "exact" for the exact curvature and to "ggn" for the Gauss–Newton ones.
        """
        theta = task.theta() if theta is None else theta
        n = len(inputs) if n is None else n
        fitted = fit_curvature(curvature, task, theta, inputs, targets, n, damping)
        if group_hessian is None:
            group_hessian = "exact" if curvature == "exact" else "ggn"
        return cls(task, theta, inputs, targets, fitted, n=n, hf=hf, group_hessian=group_hessian, batch_size=batch_size)

    def shifts_for(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Shifts ``(N', p)`` of any examples (e.g. addition candidates from outside D), with this H and n."""
        return candidate_shifts(self.task, self.theta, self.curvature, inputs, targets, self.n, self.batch_size)

    def features(self, inputs: Tensor, targets: Tensor, basu: ProductKind | None = None) -> SelectionFeatures:
        """Selection features of ``C`` candidates ``(inputs, targets)`` from outside the training set (the
        addition setting: ``a_c = ∇fᵀδ_c`` and the interaction factors of ``H_f``; with ``basu``, Basu's factors
        with exact or Gauss–Newton ``H_c``), computed once per pool: the last pool's features are kept."""
        key = (content_digest(inputs, targets), basu)
        if self._features is None or self._features[0] != key:
            features = compute_features(
                self.task, self.theta, self.curvature, inputs, targets, self.n, self.hf, basu, self.batch_size
            )
            self._features = (key, features)
        return self._features[1]

    def select(
        self,
        inputs: Tensor,
        targets: Tensor,
        k: int,
        method: str = "F+I",
        *,
        interaction_scale: float = 1.0,
        seed: int = 0,
    ) -> Selection:
        """``k`` of the candidates ``(inputs, targets)`` to add, by a method of the registry ``methods.METHODS``
        (default: greedy Algorithm 1 on F+I, its interaction term scaled by ``interaction_scale`` ``α``,
        docs/math.md §4-5); ``indices`` index the candidates, in pick order.

        Methods on influence features (F+I, F, F+B, F+I+B, random), labels (stratified: integer ``targets``)
        and gradients (CRAIG; LESS, with a ``LossTarget``'s examples as the target) run from here; for methods
        on representations (k-center) call ``methods.run_method`` with ``PoolInputs(embeddings=...)``.
        """
        needs = METHODS[method].needs if method in METHODS else ()  # run_method names the unknown method
        values: dict[str, Tensor | SelectionFeatures] = {}
        if "features" in needs:
            basu = self.group_hessian if "B" in method.split("+") else None
            values["features"] = self.features(inputs, targets, basu)
        if "labels" in needs and not targets.is_floating_point():
            values["labels"] = targets
        if "gradients" in needs:
            values["gradients"] = per_example_gradients(self.task, self.theta, inputs, targets, self.batch_size)
        target = self.task.target
        if "target_gradients" in needs and isinstance(target, LossTarget):
            values["target_gradients"] = per_example_gradients(
                self.task, self.theta, target.inputs, target.targets, self.batch_size
            )
        return run_method(method, PoolInputs(**values), k, seed, interaction_scale)

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

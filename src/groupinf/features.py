"""Per-candidate selection features: computed once from a fitted model, stored, reused by ``select``.

For candidates ``c`` (addition setting, gradients at ``θ*``, ``H`` and ``n`` of the training set):
``first_order`` ``a_c = ∇fᵀδ_c`` ``(C,)``; interaction factors ``left``/``right`` ``(C, d)`` with
``δ_cᵀH_fδ_c' = left_c·right_c'`` (dense: ``d = p``; low-rank ``H_f``: ``d = r``); optionally Basu's
``w_c = H_c q`` and ``δ_c`` ``(C, p)``. Stored as one safetensors file, written then renamed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import Tensor

from groupinf.curvature import Curvature
from groupinf.curvature_ops import LowRankCurvature, TargetCurvature
from groupinf.files import atomic_path, read_safetensors
from groupinf.gradients import per_example_gradients
from groupinf.products import per_example_ggn_vp, per_example_hvp
from groupinf.selection import (
    SCALE_GRID,
    BasuFactors,
    InteractionFactors,
    Selection,
    addition_objective,
    check_interaction_scale,
    greedy_select,
    lowest_scale,
    random_select,
    topk_select,
)
from groupinf.shifts import compute_shifts
from groupinf.task import Task

FORMAT = "groupinf-selection-features/1"
TERMS = ("F", "F+I", "F+B", "F+I+B")


@dataclass
class SelectionFeatures:
    """Everything greedy selection needs about a candidate pool (see the module docstring)."""

    first_order: Tensor
    interactions: InteractionFactors
    basu: BasuFactors | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        num = len(self.first_order)
        if self.interactions.num_candidates != num:
            raise ValueError(
                f"feature files disagree: {num} first-order scores but {self.interactions.num_candidates} "
                "rows of interaction factors"
            )
        if self.basu is not None and len(self.basu.shifts) != num:
            raise ValueError(f"feature files disagree: {num} first-order scores but {len(self.basu.shifts)} Basu rows")

    @property
    def num_candidates(self) -> int:
        return len(self.first_order)

    def parts(self, terms: str) -> tuple[InteractionFactors | None, BasuFactors | None]:
        """The factors that the objective named by ``terms`` (F, F+I, F+B, F+I+B) uses."""
        if terms not in TERMS:
            raise ValueError(f"terms must be one of {TERMS}, got {terms!r}")
        if "B" in terms and self.basu is None:
            raise ValueError("these features have no Basu factors; recompute them with basu='exact' or 'ggn'")
        return (self.interactions if "I" in terms else None), (self.basu if "B" in terms else None)

    def with_gram_interactions(self) -> SelectionFeatures:
        """The same features with ``InteractionFactors.gram`` factors when that makes them narrower
        (``C < d``), for many greedy runs over one pool; Basu's factors are kept."""
        if self.num_candidates >= self.interactions.left.shape[1]:
            return self
        return SelectionFeatures(self.first_order, self.interactions.gram(), self.basu, dict(self.meta))

    def to(self, device: str | torch.device) -> SelectionFeatures:
        """A copy with every tensor on ``device`` (shared shifts stay shared)."""
        moved: dict[int, Tensor] = {}

        def move(t: Tensor) -> Tensor:
            return moved.setdefault(id(t), t.to(device))

        interactions = InteractionFactors(move(self.interactions.left), move(self.interactions.right))
        basu = None
        if self.basu is not None:
            basu = BasuFactors(move(self.basu.response), move(self.basu.shifts), self.basu.n)
        return SelectionFeatures(move(self.first_order), interactions, basu, dict(self.meta))

    def save(self, path: str | Path) -> None:
        tensors = {
            "first_order": self.first_order,
            "left": self.interactions.left,
            "right": self.interactions.right,
        }
        meta = {**self.meta, "format": FORMAT}
        if self.basu is not None:
            tensors["basu_response"] = self.basu.response
            meta["basu_n"] = str(self.basu.n)
            if self.basu.shifts is not self.interactions.right:  # dense factors already hold δ as `right`
                tensors["basu_shifts"] = self.basu.shifts
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SelectionFeatures:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no feature file at {path}; `groupinf select --data ... --out DIR` (without --features) saves the "
                "features of its pool as DIR/work/<model hash>/<features hash>/features.safetensors"
            )
        tensors, meta = read_safetensors(path, "pass a features file saved by `groupinf select`", str(device))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a groupinf feature file (format {meta.get('format')!r}, want {FORMAT!r})")
        missing = {"first_order", "left", "right"} - set(tensors)
        if missing:
            raise ValueError(f"{path} lacks the arrays {sorted(missing)}")
        basu = None
        if "basu_response" in tensors:
            shifts = tensors.get("basu_shifts", tensors["right"])
            basu = BasuFactors(tensors["basu_response"], shifts, int(meta["basu_n"]))
        interactions = InteractionFactors(tensors["left"], tensors["right"])
        return cls(tensors["first_order"], interactions, basu, meta)


@dataclass(frozen=True)
class LowRankTarget:
    """A target as the target-side solve needs it: ``∇f`` ``(p,)`` and a low-rank ``H_f = Bᵀ diag(σ) B``
    (``B`` ``(r, p)``); ``name`` labels its features."""

    gradient: Tensor
    curvature: LowRankCurvature
    name: str = "target"


def target_side_features(
    gradients: Iterable[tuple[int, Tensor]],
    num_candidates: int,
    curvature: Curvature,
    targets: Sequence[LowRankTarget],
    n: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[SelectionFeatures]:
    """Features of ``num_candidates`` candidates for each of ``targets`` from one pass over the candidates'
    gradients, given as ``(first row, (rows, p) block)`` pairs in any order that covers every row once.

    ``H`` is symmetric, so ``a_c = g_cᵀ q`` and ``b_c = Q g_c`` with ``q = (1/n) H⁻¹ ∇f`` and
    ``Q = (1/n) B H⁻¹`` (docs/math.md §4): the curvature solves the ``1 + r`` vectors of each target, never
    the candidates' gradients. Products are formed in ``dtype`` on ``device``.
    """
    if not targets:
        raise ValueError("no target given")
    vectors = torch.cat([torch.cat([t.gradient[None], t.curvature.factor.to(t.gradient.dtype)]) for t in targets])
    solved = compute_shifts(curvature, vectors, n).to(device, dtype)  # rows (1/n) H⁻¹ v
    products = torch.empty(num_candidates, len(vectors), dtype=dtype, device=device)
    covered = torch.zeros(num_candidates, dtype=torch.bool, device=device)
    for start, rows in gradients:
        if start < 0 or start + len(rows) > num_candidates or covered[start : start + len(rows)].any():
            raise ValueError(f"gradient rows [{start}, {start + len(rows)}) overlap or leave [0, {num_candidates})")
        products[start : start + len(rows)] = rows.to(device, dtype) @ solved.T
        covered[start : start + len(rows)] = True
    if not covered.all():
        raise ValueError(f"the gradients cover {int(covered.sum())} of the {num_candidates} candidates")
    features, column = [], 0
    for target in targets:
        rank = target.curvature.rank
        projected = products[:, column + 1 : column + 1 + rank]
        sign = target.curvature.sign.to(device, dtype)
        meta = {"n": str(n), "damping": str(curvature.damping), "hf": "LowRankCurvature", "target_rank": str(rank)}
        meta["target"] = target.name
        interactions = InteractionFactors(projected * sign, projected.contiguous())
        features.append(SelectionFeatures(products[:, column].contiguous(), interactions, meta=meta))
        column += 1 + rank
    return features


def compute_features(
    task: Task,
    theta: Tensor,
    curvature: Curvature,
    inputs: Tensor,
    targets: Tensor,
    n: int,
    hf: TargetCurvature,
    basu: Literal["exact", "ggn"] | None = None,
    batch_size: int = 256,
    shifts: Tensor | None = None,
) -> SelectionFeatures:
    """Features of candidates ``(inputs, targets)`` at ``θ*`` for the task's target.

    ``hf`` gives ``H_f``: a ``LowRankCurvature`` yields ``r``-dim factors, anything else ``p``-dim
    ones (``u_c = H_f δ_c``). ``basu`` adds Basu's factors with exact or Gauss–Newton ``H_c``. ``shifts``
    ``(C, p)``, the candidates' ``δ_c`` if already computed (they do not depend on the target), saves
    recomputing them. With a low-rank ``hf``, no ``shifts`` and no Basu factors the curvature solves the
    target's ``1 + r`` vectors instead of the ``C`` candidates' gradients (``target_side_features``).
    """
    if isinstance(hf, LowRankCurvature) and basu is None and shifts is None:
        gradients = per_example_gradients(task, theta, inputs, targets, batch_size)
        target = LowRankTarget(task.target.gradient(task, theta), hf, type(task.target).__name__)
        device, dtype = gradients.device, gradients.dtype
        return target_side_features([(0, gradients)], len(gradients), curvature, [target], n, device, dtype)[0]
    if shifts is None:
        shifts = candidate_shifts(task, theta, curvature, inputs, targets, n, batch_size)
    elif shifts.shape != (len(inputs), theta.numel()):
        raise ValueError(f"shifts must be ({len(inputs)}, {theta.numel()}), got {tuple(shifts.shape)}")
    grad_f = task.target.gradient(task, theta)
    if isinstance(hf, LowRankCurvature):
        interactions = InteractionFactors.low_rank(shifts, hf)
    else:
        interactions = InteractionFactors.dense(shifts, hf)
    basu_factors = None
    if basu is not None:
        q = curvature.solve(grad_f[None])[0] / n
        if basu == "exact":
            response = per_example_hvp(task, theta, inputs, targets, q, batch_size)
        elif basu == "ggn":
            response = per_example_ggn_vp(task, theta, inputs, q, batch_size)
        else:
            raise ValueError(f"basu must be None, 'exact' or 'ggn', got {basu!r}")
        basu_factors = BasuFactors(response, shifts, n)
    meta = {"n": str(n), "damping": str(curvature.damping), "hf": type(hf).__name__}
    return SelectionFeatures(shifts @ grad_f, interactions, basu_factors, meta)


def candidate_shifts(
    task: Task, theta: Tensor, curvature: Curvature, inputs: Tensor, targets: Tensor, n: int, batch_size: int = 256
) -> Tensor:
    """``δ_c = (1/n) H⁻¹ g_c`` ``(C, p)`` of candidates ``(inputs, targets)`` at ``θ*``."""
    return compute_shifts(curvature, per_example_gradients(task, theta, inputs, targets, batch_size), n)


#: the selection rules over features: Algorithm 1, the top k by the objective's single-candidate score, uniform
RULES = ("greedy", "topk", "random")


def select_from_features(
    features: SelectionFeatures,
    k: int,
    method: str,
    terms: str = "F+I",
    seed: int = 0,
    progress: bool = False,
    interaction_scale: float = 1.0,
) -> Selection:
    """``k`` candidates by ``method`` (greedy | topk | random) under the objective named by ``terms``,
    its interaction term scaled by ``interaction_scale`` (``α``, docs/math.md)."""
    interactions, basu = features.parts(terms)
    if method == "greedy":
        return greedy_select(features.first_order, k, interactions, basu, progress, interaction_scale)
    if method == "topk":
        return topk_select(features.first_order, k, interactions, basu, interaction_scale)
    if method == "random":
        return random_select(features.first_order, k, seed)
    raise ValueError(f"method must be one of {RULES}, got {method!r}")


@dataclass(frozen=True)
class ScaleChoice:
    """The α chosen by ``cross_validated_scale``, the grid, the mean held-out objective per α ``(len(grid),)``
    and each fold's ``(folds, len(grid))``, and the scale the held-out objective used."""

    scale: float
    grid: tuple[float, ...]
    held_out: list[float]
    per_fold: list[list[float]]
    reference: float


def cross_validated_scale(
    folds: Sequence[tuple[SelectionFeatures, SelectionFeatures]],
    k: int,
    grid: Sequence[float] = SCALE_GRID,
    reference: float = 1.0,
) -> ScaleChoice:
    """Choose the interaction scale α of greedy F+I by cross-validation over parts of the target data.

    Each fold is ``(fit, held_out)``: features of the same candidates for two disjoint parts of the target
    set. For every α of ``grid``, greedy F+I selects ``k`` candidates with the ``fit`` features at scale α;
    the selection is scored with the ``held_out`` features by the F+I objective at the fixed scale
    ``reference``, ``−Σ_{c∈S} a'_c + reference·½ δ_Sᵀ H_f' δ_S`` (lower: a larger predicted decrease of the
    held-out loss; no retraining). The chosen α has the lowest mean over the folds; ties (the same set) go
    to the α closest to 1 in log scale.
    """
    if not folds:
        raise ValueError("cross_validated_scale needs at least one (fit, held_out) fold")
    if not grid:
        raise ValueError("the grid of interaction scales is empty")
    grid = tuple(check_interaction_scale(alpha) for alpha in grid)
    reference = check_interaction_scale(reference)
    per_fold = []
    for fit, held_out in folds:
        if fit.num_candidates != held_out.num_candidates:
            raise ValueError(f"fold features disagree: {fit.num_candidates} and {held_out.num_candidates} candidates")
        row = []
        for alpha in grid:
            chosen = greedy_select(fit.first_order, k, fit.interactions, interaction_scale=alpha).indices.sort().values
            value = addition_objective(held_out.first_order, chosen, held_out.interactions, interaction_scale=reference)
            row.append(float(value))
        per_fold.append(row)
    held = [sum(column) / len(per_fold) for column in zip(*per_fold, strict=True)]
    return ScaleChoice(lowest_scale(dict(zip(grid, held, strict=True))), grid, held, per_fold, reference)

"""Data selection over precomputed per-candidate arrays: pure tensor math, CPU or CUDA.

Addition setting (docs/math.md, Algorithm 1): choose ``S``, ``|S| = k``, minimising
``Î_add(S) = −∇fᵀδ_S + α·½ δ_Sᵀ H_f δ_S``. Candidate ``c`` has ``a_c = ∇fᵀδ_c`` and interaction
factors with ``δ_cᵀ H_f δ_c' = left_c · right_c'``; its marginal score given ``S`` is
``m(c|S) = −a_c + α(δ_cᵀH_fδ_S + ½ δ_cᵀH_fδ_c)`` (lower is better). ``α`` is the interaction scale
(1: the paper's objective; ``n/k`` gives the selected examples the weight ``1/k`` of a model retrained on
``S`` alone instead of the ``1/n`` of θ*'s training set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from groupinf.checks import check_count
from groupinf.curvature_ops import LowRankCurvature, TargetCurvature


@dataclass(frozen=True)
class InteractionFactors:
    """``left`` and ``right`` ``(C, d)`` with ``δ_cᵀ H_f δ_c' = left_c · right_c'``."""

    left: Tensor
    right: Tensor

    def __post_init__(self) -> None:
        if self.left.ndim != 2 or self.left.shape != self.right.shape:
            raise ValueError(
                f"interaction factors must both be (C, d), got {tuple(self.left.shape)} and {tuple(self.right.shape)}"
            )
        if self.left.device != self.right.device:
            raise ValueError(f"factors on different devices: {self.left.device} and {self.right.device}")

    @classmethod
    def dense(cls, shifts: Tensor, hf: TargetCurvature) -> InteractionFactors:
        """From candidate shifts ``δ`` ``(C, p)``: ``left = H_f δ_c`` (``u_c``), ``right = δ_c``; ``d = p``."""
        return cls(hf.matmul(shifts), shifts)

    @classmethod
    def low_rank(cls, shifts: Tensor, hf: LowRankCurvature) -> InteractionFactors:
        """From ``H_f = Bᵀ diag(σ) B``: ``b_c = B δ_c``, ``left = σ ∘ b_c``, ``right = b_c``; ``d = r``."""
        b = hf.project(shifts)
        return cls(b * hf.sign, b)

    @property
    def num_candidates(self) -> int:
        return self.left.shape[0]

    def gram(self) -> InteractionFactors:
        """The same interactions with ``d = C``: ``left`` = all ``δ_cᵀH_fδ_c'`` ``(C, C)``, ``right = I``.

        One matrix product instead of one memory-bound pass over ``(C, d)`` per greedy step: worth it when
        ``C < d`` and several greedy runs (budgets, interaction scales) share the factors.
        """
        eye = torch.eye(self.num_candidates, dtype=self.left.dtype, device=self.left.device)
        return InteractionFactors(self.left @ self.right.T, eye)

    def self_terms(self) -> Tensor:
        """``s_c = δ_cᵀ H_f δ_c`` ``(C,)``; a ``ValueError`` when one is not finite, which a NaN or ±inf anywhere in
        a candidate's factors makes it (this is the factors' finiteness check: one pass over them, not three)."""
        terms = torch.einsum("cd,cd->c", self.left, self.right)
        if not all_finite(terms):
            raise ValueError("interaction factors contain NaN or inf (a self term δ_cᵀ H_f δ_c is not finite)")
        return terms


@dataclass(frozen=True)
class Selection:
    """Selected candidate indices ``(k,)`` in pick order and the marginal score of each pick ``(k,)``.

    ``terms`` names the criterion the scores are of: "F+I" (Eq. 12) or "F" (``−a_c``);
    ``interaction_scale`` is the ``α`` of its interaction term (1 where it has none).
    """

    indices: Tensor
    scores: Tensor
    method: str
    terms: str
    interaction_scale: float = 1.0


def check_budget(k: int, num_candidates: int) -> None:
    if num_candidates < 1:
        raise ValueError("the candidate pool is empty")
    if not 1 <= k <= num_candidates:
        raise ValueError(f"k must be in [1, {num_candidates}] (the pool size), got {k}")


def check_interaction_scale(scale: float) -> float:
    """``α`` as a float, or a ``ValueError`` unless it is a finite number ``> 0``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"the interaction scale must be a number > 0, got {scale!r}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"the interaction scale must be finite and > 0, got {scale}")
    return float(scale)


#: ``α`` as users give it: a number > 0, or "auto" (chosen on held-out target data)
InteractionScale = float | Literal["auto"]

#: the α values that "auto" chooses from (selection-eval's K folds, ``features.cross_validated_scale``)
SCALE_GRID = tuple(2.0**e for e in range(-4, 7))


def lowest_scale(scores: dict[float, float]) -> float:
    """The ``α`` of ``scores`` ``{α: held-out score, lower is better}`` with the lowest score; ties go to the
    ``α`` nearest 1 in log scale (nearest the paper's form)."""
    return min(scores, key=lambda alpha: (scores[alpha], abs(math.log(alpha))))


def parse_interaction_scale(text: str | float) -> InteractionScale:
    """A number ``> 0`` (as text or a number), or ``"auto"``; ``ValueError`` for anything else."""
    if text == "auto":
        return "auto"
    if isinstance(text, str):
        try:
            text = float(text)
        except ValueError:
            raise ValueError(f"the interaction scale must be a number > 0 or 'auto', got {text!r}") from None
    return check_interaction_scale(text)


def all_finite(values: Tensor) -> bool:
    """Whether every entry is finite, in one pass: NaN propagates into the min and the max, ±inf shows in one
    of them (``torch.isfinite(values).all()`` makes several passes with temporaries the size of ``values``)."""
    if values.numel() == 0:
        return True
    low, high = torch.aminmax(values)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def first_argmin(values: Tensor) -> Tensor | int:
    """Index of the first smallest entry of ``values`` ``(C,)``: on the CPU numpy's vectorised argmin on the same
    memory (a Python int; torch's CPU argmin is a scalar loop, ~10x slower at C = 50 000 and the larger part of a
    low-rank greedy step), elsewhere or for dtypes numpy lacks ``torch.argmin`` (a tensor: no device sync)."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        return int(values.numpy().argmin())
    return torch.argmin(values)


def check_first_order(first_order: Tensor, factors: InteractionFactors | None = None) -> None:
    if first_order.ndim != 1:
        raise ValueError(f"first_order must be (C,), got {tuple(first_order.shape)}")
    if not all_finite(first_order):
        raise ValueError("first-order scores contain NaN or inf")
    if factors is not None:
        if factors.left.dtype != first_order.dtype:
            raise ValueError(f"scores are {first_order.dtype} but factors are {factors.left.dtype}")
        if factors.num_candidates != len(first_order):
            raise ValueError(
                f"{len(first_order)} first-order scores but {factors.num_candidates} candidates in the factors"
            )
        if factors.left.device != first_order.device:
            raise ValueError(f"scores on {first_order.device} but factors on {factors.left.device}")


@dataclass(frozen=True)
class BasuFactors:
    """Basu et al.'s second-order response for ADDING a set ``S`` (groupinf's extension to selection).

    Removal (docs/math.md §3): ``Δθ_B = (1−2p)/(1−p)² δ_G + 1/(1−p)² (1/n) H⁻¹ H_G δ_G``. The same
    second-order expansion of ``θ_ε`` at ``ε = +1/n`` per example gives, with ``p → −p``,
    ``Δθ_B^add(S) = −(1+2p)/(1+p)² δ_S + 1/(1+p)² (1/n) H⁻¹ H_S δ_S``, ``p = |S|/n``. Its target term
    ``∇fᵀ(1/n)H⁻¹H_Sδ_S = Σ_{z,c∈S} w_zᵀ δ_c`` with ``w_z = H_z q`` and ``q = (1/n) H⁻¹ ∇f``.
    ``response`` holds ``w_c`` and ``shifts`` holds ``δ_c``, both ``(C, p)``.
    """

    response: Tensor
    shifts: Tensor
    n: int

    def __post_init__(self) -> None:
        if self.response.ndim != 2 or self.response.shape != self.shifts.shape:
            raise ValueError(
                f"Basu factors must both be (C, p), got {tuple(self.response.shape)} and {tuple(self.shifts.shape)}"
            )
        check_count(self.n, "n (the training-set size)")

    def coefficients(self, size: int) -> tuple[float, float]:
        """``(c₁, c₂)`` of ``∇fᵀΔθ_B^add = −c₁ a_S + c₂ K_S`` for a set of ``size`` candidates."""
        frac = size / self.n
        return (1 + 2 * frac) / (1 + frac) ** 2, 1 / (1 + frac) ** 2

    def self_terms(self) -> Tensor:
        """``K_cc = w_cᵀ δ_c`` ``(C,)``."""
        return (self.response * self.shifts).sum(dim=1)


def greedy_select(
    first_order: Tensor,
    k: int,
    interactions: InteractionFactors | None = None,
    basu: BasuFactors | None = None,
    progress: bool = False,
    interaction_scale: float = 1.0,
) -> Selection:
    """Algorithm 1: ``k`` greedy steps, each an ``argmin`` of the marginal score and accumulator updates.

    ``first_order`` is ``a_c = ∇fᵀδ_c`` ``(C,)``. With ``interactions`` the objective has the term
    ``α·½ δ_Sᵀ H_f δ_S`` (F+I, Eq. 12; ``α`` = ``interaction_scale``); with ``basu`` the first-order term
    becomes Basu's addition response (F+B; both: F+I+B); with neither it is top-k by F. Cost
    ``O(k·C·d)``, memory ``O(C)`` beyond the factors.
    """
    alpha = check_interaction_scale(interaction_scale)
    check_first_order(first_order, interactions)
    num = len(first_order)
    check_budget(k, num)
    if basu is not None and len(basu.shifts) != num:
        raise ValueError(f"{num} first-order scores but {len(basu.shifts)} candidates in the Basu factors")
    a = first_order
    # the part of every score that greedy updates in place: α(½δ_cᵀH_fδ_c + δ_cᵀH_fδ_S), and −a_c without
    # Basu's terms (whose coefficients change with |S|); +inf once c is taken, so no mask is needed
    running = interactions.self_terms().mul_(0.5 * alpha) if interactions is not None else torch.zeros_like(a)
    if basu is None:
        running.sub_(a)
    else:
        self_basu = basu.self_terms()
        y = torch.zeros_like(a)  # Σ_{s∈S} (w_cᵀδ_s + w_sᵀδ_c)
        a_set = torch.zeros((), dtype=a.dtype, device=a.device)
        k_set = torch.zeros((), dtype=a.dtype, device=a.device)
    indices = torch.empty(k, dtype=torch.long, device=a.device)
    scores = torch.empty(k, dtype=a.dtype, device=a.device)
    for step in tqdm(range(k), desc="greedy", disable=not progress):
        score = running
        if basu is not None:
            (c1_old, c2_old), (c1, c2) = basu.coefficients(step), basu.coefficients(step + 1)
            score = c1 * (-a_set - a) + c1_old * a_set + c2 * (k_set + self_basu + y) - c2_old * k_set + running
        best = first_argmin(score)
        indices[step] = best
        scores[step] = score[best]
        running[best] = float("inf")
        if interactions is not None:
            running.addmv_(interactions.left, interactions.right[best], alpha=alpha)
        if basu is not None:
            a_set += a[best]
            k_set += self_basu[best] + y[best]
            y.addmv_(basu.response, basu.shifts[best]).addmv_(basu.shifts, basu.response[best])
    terms = "F" + ("+I" if interactions is not None else "") + ("+B" if basu is not None else "")
    return Selection(indices, scores, "greedy", terms, alpha if interactions is not None else 1.0)


def topk_select(
    first_order: Tensor,
    k: int,
    interactions: InteractionFactors | None = None,
    basu: BasuFactors | None = None,
    interaction_scale: float = 1.0,
) -> Selection:
    """The ``k`` best candidates by their own (singleton) objective, best first.

    With neither factor this is "Additive IF": the largest ``a_c``, scores ``−a_c``.
    """
    alpha = check_interaction_scale(interaction_scale)
    check_first_order(first_order, interactions)
    check_budget(k, len(first_order))
    single = -first_order
    if basu is not None:
        c1, c2 = basu.coefficients(1)
        single = -c1 * first_order + c2 * basu.self_terms()
    if interactions is not None:
        single = single + 0.5 * alpha * interactions.self_terms()
    values, indices = torch.topk(single, k, largest=False)
    terms = "F" + ("+I" if interactions is not None else "") + ("+B" if basu is not None else "")
    return Selection(indices, values, "topk", terms, alpha if interactions is not None else 1.0)


def random_select(first_order: Tensor, k: int, seed: int = 0) -> Selection:
    """``k`` candidates uniformly without replacement; scores are ``−a_c`` of each pick."""
    check_first_order(first_order)
    check_budget(k, len(first_order))
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(first_order), generator=generator)[:k].to(first_order.device)
    return Selection(indices, -first_order[indices], "random", "F")


def marginal_scores(
    first_order: Tensor,
    indices: Tensor,
    interactions: InteractionFactors | None = None,
    basu: BasuFactors | None = None,
    interaction_scale: float = 1.0,
) -> Tensor:
    """Marginal score of each pick of any ordered selection ``(k,)``: differences of the objective
    over its prefixes, from scratch (``O(k³d)``; for reports and tests, not for large ``k``)."""
    prefix = [
        addition_objective(first_order, indices[: t + 1], interactions, basu, interaction_scale)
        for t in range(len(indices))
    ]
    values = torch.stack(prefix)
    return values - torch.cat([values.new_zeros(1), values[:-1]])


def addition_objective(
    first_order: Tensor,
    indices: Tensor,
    interactions: InteractionFactors | None = None,
    basu: BasuFactors | None = None,
    interaction_scale: float = 1.0,
) -> Tensor:
    """The objective greedy minimises, from scratch (a scalar): ``−Σ_{c∈S} a_c`` (or Basu's
    ``−c₁ a_S + c₂ K_S``) plus ``α·½ Σ_{i,j∈S} δ_iᵀ H_f δ_j`` when ``interactions`` are given."""
    alpha = check_interaction_scale(interaction_scale)
    a_set = first_order[indices].sum()
    value = -a_set
    if basu is not None:
        c1, c2 = basu.coefficients(len(indices))
        value = -c1 * a_set + c2 * (basu.response[indices] @ basu.shifts[indices].T).sum()
    if interactions is not None:
        value = value + 0.5 * alpha * (interactions.left[indices] @ interactions.right[indices].T).sum()
    return value

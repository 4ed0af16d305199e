"""Data selection over precomputed per-candidate arrays: pure tensor math, CPU or CUDA.

Addition setting (MATH.md, Algorithm 1): choose ``S``, ``|S| = k``, minimising
``Î_add(S) = −∇fᵀδ_S + ½ δ_Sᵀ H_f δ_S``. Candidate ``c`` has ``a_c = ∇fᵀδ_c`` and interaction
factors with ``δ_cᵀ H_f δ_c' = left_c · right_c'``; its marginal score given ``S`` is
``m(c|S) = −a_c + δ_cᵀH_fδ_S + ½ δ_cᵀH_fδ_c`` (lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

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

    def self_terms(self) -> Tensor:
        """``s_c = δ_cᵀ H_f δ_c`` ``(C,)``."""
        return (self.left * self.right).sum(dim=1)


@dataclass(frozen=True)
class Selection:
    """Selected candidate indices ``(k,)`` in pick order and the marginal score of each pick ``(k,)``.

    ``terms`` names the criterion the scores are of: "F+I" (Eq. 12) or "F" (``−a_c``).
    """

    indices: Tensor
    scores: Tensor
    method: str
    terms: str


def check_budget(k: int, num_candidates: int) -> None:
    if num_candidates < 1:
        raise ValueError("the candidate pool is empty")
    if not 1 <= k <= num_candidates:
        raise ValueError(f"k must be in [1, {num_candidates}] (the pool size), got {k}")


def check_first_order(first_order: Tensor, factors: InteractionFactors | None = None) -> None:
    if first_order.ndim != 1:
        raise ValueError(f"first_order must be (C,), got {tuple(first_order.shape)}")
    if not torch.isfinite(first_order).all():
        raise ValueError("first-order scores contain NaN or inf")
    if factors is not None:
        if factors.num_candidates != len(first_order):
            raise ValueError(
                f"{len(first_order)} first-order scores but {factors.num_candidates} candidates in the factors"
            )
        if factors.left.device != first_order.device:
            raise ValueError(f"scores on {first_order.device} but factors on {factors.left.device}")
        if not (torch.isfinite(factors.left).all() and torch.isfinite(factors.right).all()):
            raise ValueError("interaction factors contain NaN or inf")


def greedy_select(first_order: Tensor, factors: InteractionFactors, k: int, progress: bool = False) -> Selection:
    """Algorithm 1: ``k`` greedy steps, each an ``argmin`` of ``m(c|S)`` and one accumulator update.

    ``first_order`` is ``a_c = ∇fᵀδ_c`` ``(C,)``. Cost ``O(k·C·d)``; memory ``O(C)`` beyond the factors.
    """
    check_first_order(first_order, factors)
    check_budget(k, factors.num_candidates)
    dtype = factors.left.dtype
    base = 0.5 * factors.self_terms() - first_order.to(dtype)
    accumulator = torch.zeros_like(base)  # x_c = δ_cᵀ H_f δ_S
    taken = torch.zeros_like(base, dtype=torch.bool)
    score = torch.empty_like(base)
    indices = torch.empty(k, dtype=torch.long, device=base.device)
    scores = torch.empty(k, dtype=dtype, device=base.device)
    for step in tqdm(range(k), desc="greedy", disable=not progress):
        torch.add(base, accumulator, out=score)
        score.masked_fill_(taken, float("inf"))
        best = torch.argmin(score)
        indices[step] = best
        scores[step] = score[best]
        taken[best] = True
        accumulator.addmv_(factors.left, factors.right[best])
    return Selection(indices, scores, "greedy", "F+I")


def topk_select(first_order: Tensor, k: int) -> Selection:
    """ "Additive IF": the ``k`` candidates with the largest ``a_c`` (lowest ``−a_c``), best first."""
    check_first_order(first_order)
    check_budget(k, len(first_order))
    values, indices = torch.topk(first_order, k)
    return Selection(indices, -values, "topk", "F")


def random_select(first_order: Tensor, k: int, seed: int = 0) -> Selection:
    """``k`` candidates uniformly without replacement; scores are ``−a_c`` of each pick."""
    check_first_order(first_order)
    check_budget(k, len(first_order))
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(first_order), generator=generator)[:k].to(first_order.device)
    return Selection(indices, -first_order[indices], "random", "F")


def marginal_scores(first_order: Tensor, factors: InteractionFactors, indices: Tensor) -> Tensor:
    """F+I marginal score of each pick of any ordered selection ``(k,)``, from scratch (``O(k²d)``)."""
    check_first_order(first_order, factors)
    gram = factors.left[indices] @ factors.right[indices].T  # δ_iᵀ H_f δ_j
    earlier = torch.tril(gram, diagonal=-1).sum(dim=1)
    return -first_order[indices].to(gram.dtype) + earlier + 0.5 * gram.diagonal()


def addition_objective(first_order: Tensor, factors: InteractionFactors, indices: Tensor) -> Tensor:
    """``Î_add(S) = −Σ_{c∈S} a_c + ½ Σ_{i,j∈S} δ_iᵀ H_f δ_j`` computed from scratch (a scalar)."""
    gram = factors.left[indices] @ factors.right[indices].T
    return -first_order[indices].sum().to(gram.dtype) + 0.5 * gram.sum()

"""Group estimators of the change in the target: pure tensor math, no models (docs/math.md §3).

Inputs are per-example shifts ``δ_i = (1/n) H⁻¹ g_i`` (rows of ``(n, p)``), the target gradient
``∇f`` ``(p,)`` and a ``TargetCurvature`` for ``H_f``. Settings: "removal" (``Δθ ≈ +δ_G``) and
"addition" (``Δθ ≈ −δ_G``); the interaction term has the same sign in both.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from groupinf.curvature_ops import TargetCurvature

Setting = Literal["removal", "addition"]
METHODS = ("F", "I", "F+I", "F+B", "F+I+B")


def check_setting(setting: str) -> None:
    if setting not in ("removal", "addition"):
        raise ValueError(f"setting must be 'removal' or 'addition', got {setting!r}")


def first_order(grad_f: Tensor, group_shifts: Tensor, setting: Setting = "removal") -> Tensor:
    """``F(G) = ±∇fᵀδ_G`` for group shifts ``(M, p)`` -> ``(M,)``; ``+`` for removal, ``−`` for addition."""
    check_setting(setting)
    value = group_shifts @ grad_f
    return value if setting == "removal" else -value


def interaction(group_shifts: Tensor, hf: TargetCurvature) -> Tensor:
    """``I(G) = ½ δ_Gᵀ H_f δ_G`` for group shifts ``(M, p)`` -> ``(M,)``."""
    return 0.5 * (group_shifts * hf.matmul(group_shifts)).sum(dim=1)


def pairwise_interactions(member_shifts: Tensor, hf: TargetCurvature) -> Tensor:
    """``J_ij = ½ δ_iᵀ H_f δ_j`` for the shifts ``(k, p)`` of one group's members -> ``(k, k)``.

    ``J.sum()`` equals ``interaction`` of the group; see ``split_pairwise`` for self/cross parts.
    """
    return 0.5 * hf.bilinear(member_shifts, member_shifts)


def split_pairwise(J: Tensor) -> tuple[Tensor, Tensor]:
    """``(self, cross)`` parts of ``I = Σ_ij J_ij``: ``self = Σ_i J_ii``, ``cross = Σ_{i<j} δ_iᵀH_fδ_j``."""
    self_part = J.diagonal().sum()
    return self_part, J.sum() - self_part


def basu_shift(group_shifts: Tensor, response: Tensor, group_sizes: Tensor, n: int) -> Tensor:
    """Basu et al. (2020) second-order parameter change for removing each group ``(M, p)``.

    ``Δθ_B = (1−2p)/(1−p)² δ_G + 1/(1−p)² · response`` with ``p = |G|/n`` and
    ``response = (1/n) H⁻¹ (Σ_{z∈G} H_z) δ_G`` ``(M, p)`` computed by the caller.
    """
    frac = (group_sizes.to(group_shifts.dtype) / n).unsqueeze(1)
    if (frac >= 1).any():
        raise ValueError("a group covers the whole training set; Basu's correction needs |G| < n")
    return (1 - 2 * frac) / (1 - frac) ** 2 * group_shifts + response / (1 - frac) ** 2


def combine(first: Tensor, inter: Tensor | None = None, basu_first: Tensor | None = None) -> dict[str, Tensor]:
    """The named estimators from their terms: F, I, F+I and, given ``∇fᵀΔθ_B``, F+B and F+I+B."""
    out = {"F": first}
    if inter is not None:
        out["I"] = inter
        out["F+I"] = first + inter
    if basu_first is not None:
        out["F+B"] = basu_first
        if inter is not None:
            out["F+I+B"] = basu_first + inter
    return out

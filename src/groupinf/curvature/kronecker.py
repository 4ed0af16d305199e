"""One Kronecker-factored curvature over a block layout: per block the eigenbases ``(Q_S, Q_A)`` and eigenvalues ``Λ``.

The layout (``curvature.layout``) lays matrices out one after another in the flat row vectors ``(d,)``. Per
block ``b`` of shape ``(out, in)`` the curvature is ``H_b = G_b + λI`` with
``G_b ≈ (Q_S ⊗ Q_A) diag(vec Λ) (Q_S ⊗ Q_A)ᵀ`` (row-major ``vec``), damped by ``ρ_b``:
``(H_b + ρ_b I)⁻¹ vec(V) = Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ + λ + ρ_b)] Q_Aᵀ``, block-diagonal across blocks. K-FAC's
``Λ = λ_S λ_Aᵀ`` comes from the eigendecompositions of the factors ``S`` ``(out, out)`` and ``A`` ``(in, in)``
(``kronecker_eigenbases``); EK-FAC refits it to per-example gradients ``G_i``,
``Λ = (1/N) Σ_i (Q_Sᵀ G_i Q_A)^{∘2}`` (``refit_eigenvalues``). The heuristic damping is
``ρ_b = 0.1 · mean(Λ + λ)``, the mean eigenvalue of ``H_b``. Blocks of one shape are rotated together, two
batched products per group; no ``d × d`` matrix is formed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from groupinf.curvature.base import Curvature, Damping, resolve_damping
from groupinf.curvature.layout import BlockGroup, BlockLayout

#: largest number of elements of per-example matrices held at once (solves, EK-FAC with tokens)
CHUNK_ELEMENTS = 1 << 22


def rotate(blocks: Tensor, q_s: Tensor, q_a: Tensor) -> Tensor:
    """``Q_Sᵀ M Q_A`` for every matrix ``M`` of ``blocks`` ``(k, L, out, in)``, ``q_s`` ``(L, out, out)``,
    ``q_a`` ``(L, in, in)``: two products batched over the ``L`` blocks, each a tall GEMM (for one block, products
    batched over ``k``, which spare einsum's permuted copies of large matrices)."""
    if blocks.shape[1] == 1:
        return (q_s[0].T @ blocks[:, 0] @ q_a[0]).unsqueeze(1)
    return torch.einsum("lpo,blpq->bloq", q_s, torch.einsum("blpi,liq->blpq", blocks, q_a))


def unrotate(blocks: Tensor, q_s: Tensor, q_a: Tensor) -> Tensor:
    """``Q_S R Q_Aᵀ`` for every matrix ``R`` of ``blocks``: the inverse of ``rotate`` for orthogonal bases."""
    if blocks.shape[1] == 1:
        return (q_s[0] @ blocks[:, 0] @ q_a[0].T).unsqueeze(1)
    return torch.einsum("lpo,bloi->blpi", q_s, torch.einsum("bloq,liq->bloi", blocks, q_a))


def _stacked_bases(group: BlockGroup, bases: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The group's ``Q_S`` ``(L, out, out)`` and ``Q_A`` ``(L, in, in)``, in float64."""
    q_s = torch.stack([bases[i][0] for i in group.members])
    q_a = torch.stack([bases[i][1] for i in group.members])
    return q_s.double(), q_a.double()


def symmetric_eigh(factor: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (clamped at 0: round-off) and eigenvectors of the symmetric part of ``factor``, in float64."""
    m = factor.double()
    values, vectors = torch.linalg.eigh(0.5 * (m + m.T))
    return values.clamp_min(0), vectors


def kronecker_eigenbases(factors: Iterable[tuple[Tensor, Tensor]]) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
    """Per block, from its K-FAC factors ``(S, A)``: the eigenbases ``(Q_S, Q_A)`` and the eigenvalues ``λ_S λ_Aᵀ``."""
    bases, values = [], []
    for s, a in factors:
        lam_s, q_s = symmetric_eigh(s)
        lam_a, q_a = symmetric_eigh(a)
        bases.append((q_s, q_a))
        values.append(torch.outer(lam_s, lam_a))
    return bases, values


def refit_eigenvalues(
    layout: BlockLayout, bases: Sequence[tuple[Tensor, Tensor]], batches: Iterable[Tensor]
) -> list[Tensor]:
    """EK-FAC ``Λ = (1/N) Σ_i (Q_Sᵀ G_i Q_A)^{∘2}`` ``(out, in)`` per block, from the per-example gradients in row
    batches ``(rows, d)`` in ``layout`` (``N`` rows in all); float64, on the rows' device, returned on the CPU."""
    groups = layout.groups
    stacked: list[tuple[Tensor, Tensor]] = []
    totals: list[Tensor] = []
    count = 0
    for batch in batches:
        rows = batch.double()
        if not totals:  # the first batch: on its device
            stacked = [(s.to(rows.device), a.to(rows.device)) for s, a in (_stacked_bases(g, bases) for g in groups)]
            totals = [torch.zeros(len(g.members), *g.shape, dtype=torch.float64, device=rows.device) for g in groups]
        for group, (q_s, q_a), total in zip(groups, stacked, totals, strict=True):
            total += rotate(group.matrices(rows), q_s, q_a).square().sum(dim=0)
        count += len(rows)
    if count == 0:
        raise ValueError("no per-example gradients to refit the eigenvalues on")
    values: list[Tensor] = [torch.empty(0)] * len(layout.blocks)
    for group, total in zip(layout.groups, totals, strict=True):
        for position, index in enumerate(group.members):
            values[index] = total[position].cpu() / count
    return values


class KroneckerCurvature(Curvature):
    """Block-diagonal ``H + ρI`` over the blocks of ``layout``, each eigendecomposed as ``(Q_S, Q_A, Λ)``.

    ``bases`` holds ``(Q_S, Q_A)`` per block and ``eigenvalues`` its ``Λ`` ``(out, in)`` of ``G`` (without ``λ``
    and ``ρ``); ``l2`` is ``λ``. ``solve``/``matvec`` take row vectors ``(k, d)`` in ``layout`` and work in
    ``compute_dtype`` (float64 by default; float32 halves the time of large solves at ~1e-6 relative
    precision). ``layer_damping`` holds the damping ``ρ_b`` of each block; ``damping`` is the fixed ρ, or for
    the heuristic the size-weighted mean of ``layer_damping``, for reporting.
    """

    def __init__(
        self,
        layout: BlockLayout,
        bases: Sequence[tuple[Tensor, Tensor]],
        eigenvalues: Sequence[Tensor],
        l2: float,
        damping: Damping,
        compute_dtype: torch.dtype = torch.float64,
    ) -> None:
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        if not compute_dtype.is_floating_point:
            raise ValueError(f"compute_dtype must be a floating dtype, got {compute_dtype}")
        self.layout, self.l2, self.compute_dtype = layout, float(l2), compute_dtype
        self.bases = [(q_s.double(), q_a.double()) for q_s, q_a in bases]
        self.eigenvalues = [values.double() for values in eigenvalues]
        self.layer_damping: list[float] = []
        for block, values in zip(layout.blocks, self.eigenvalues, strict=True):
            if values.shape != block.shape:
                raise ValueError(
                    f"eigenvalues of layer '{block.name}' must be {block.shape}, got {tuple(values.shape)}"
                )
            rho = resolve_damping(damping, values.mean().item() + self.l2)
            shifted = values + self.l2 + rho
            largest = shifted.abs().max().item()
            if not shifted.min().item() > values.numel() * torch.finfo(torch.float64).eps * max(largest, 1e-300):
                raise ValueError(
                    f"the damped curvature of layer '{block.name}' is singular (smallest eigenvalue "
                    f"{shifted.min().item():.3g}, damping {rho:.3g}, l2 {self.l2:.3g}); pass a damping > 0 or "
                    "'heuristic'"
                )
            self.layer_damping.append(rho)
        sizes = [block.size for block in layout.blocks]
        self.damping = sum(r * s for r, s in zip(self.layer_damping, sizes, strict=True)) / sum(sizes)
        self._stacked = [
            (
                *_stacked_bases(group, self.bases),
                torch.stack([self.eigenvalues[i] + self.l2 + self.layer_damping[i] for i in group.members]),
            )
            for group in layout.groups
        ]

    def _apply(self, V: Tensor, power: int) -> Tensor:
        if V.ndim != 2 or V.shape[1] != self.layout.dim:
            raise ValueError(f"expected row vectors (k, {self.layout.dim}), got {tuple(V.shape)}")
        out = torch.empty(V.shape, dtype=V.dtype, device=V.device)
        # bound the temporaries: at most CHUNK_ELEMENTS entries of the largest group's matrices at once
        step = max(1, CHUNK_ELEMENTS // max(group.size for group in self.layout.groups))
        for start in range(0, len(V), step):
            out[start : start + step] = self._apply_rows(V[start : start + step], power)
        return out

    def _apply_rows(self, V: Tensor, power: int) -> Tensor:
        work = V.to(self.compute_dtype)
        out = torch.empty_like(work)
        for group, (q_s, q_a, shifted) in zip(self.layout.groups, self._stacked, strict=True):
            q_s, q_a = q_s.to(work.device, work.dtype), q_a.to(work.device, work.dtype)
            scaled = rotate(group.matrices(work), q_s, q_a) * (shifted**power).to(work.device, work.dtype)
            group.place(out, unrotate(scaled, q_s, q_a))
        return out.to(V.dtype)

    def solve(self, V: Tensor) -> Tensor:
        return self._apply(V, -1)

    def matvec(self, V: Tensor) -> Tensor:
        return self._apply(V, 1)

"""Training curvature in the projected space, fitted from a gradient store.

The projected Fisher is ``G = (1/N) Σ_i g̃_i g̃_iᵀ`` over the store's ``N`` examples, ``g̃_i`` the projected
per-example gradient for labels drawn from the model (true Fisher: an unbiased estimate of the
Gauss–Newton matrix, App. D.1) or for the data's labels (empirical Fisher). ``H = G + λI``, damped by ``ρ``.
The store is the candidate pool: the warmup set is a uniform random subset of it, so the pool's mean
Fisher estimates the warmup set's, from more examples.

- ``dense``: ``G`` as one ``d×d`` matrix, held by ``EigenCurvature`` (float64 eigendecomposition); the
  heuristic damping is ``0.1 ×`` the mean eigenvalue of ``G + λI``.
- ``kfac``: per projected layer, ``A = (1/M) Σ_{i,t} (P_i x)(P_i x)ᵀ`` over the ``M`` tokens and
  ``S = (1/N) Σ_{i,t} (P_o s̃)(P_o s̃)ᵀ`` (K-FAC-expand over tokens), ``G_ℓ ≈ A ⊗ S`` with eigenvalues
  ``λ_S λ_Aᵀ``.
- ``ekfac``: the K-FAC eigenbases ``Q_A``, ``Q_S`` with eigenvalues refitted to the stored projected
  gradients, ``Λ = (1/N) Σ_i (Q_Sᵀ G̃_i Q_A)^{∘2}``.

For ``kfac``/``ekfac``, ``(H_ℓ + ρ_ℓ I)⁻¹ vec(V) = Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ + λ + ρ_ℓ)] Q_Aᵀ`` per layer
(block-diagonal across layers) and the heuristic damping is ``ρ_ℓ = 0.1 · mean(Λ + λ)`` per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from groupinf.curvature import Curvature, Damping, EigenCurvature, check_damping, resolve_damping
from groupinf.llm.projection import LayerSpec
from groupinf.llm.store import GradientStore

#: the largest projected dimension for which the dense d×d Fisher is formed (float64: 2 GiB at 16384)
MAX_DENSE_DIM = 16384


def projected_fisher(store: GradientStore, device: str | torch.device = "cpu") -> Tensor:
    """``G = (1/N) Σ_i g̃_i g̃_iᵀ`` ``(d, d)`` in float64."""
    dim = store.spec.dim
    if dim > MAX_DENSE_DIM:
        raise ValueError(
            f"the projected dimension d = {dim} is too large for the dense Fisher (at most {MAX_DENSE_DIM}); "
            "use curvature 'ekfac' or 'kfac', or a smaller projection"
        )
    total = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for _, array in store.shards("fisher"):
        rows = array.to(device, torch.float64)
        total.addmm_(rows.T, rows)
    return total / store.spec.num_examples


@dataclass(frozen=True)
class LayerGroup:
    """The projected layers of one shape ``(r_out, r_in)``, handled together: their indices in the layer
    list and the positions of their entries in the flat vector ``(L·r_out·r_in,)``, layer after layer."""

    members: list[int]
    columns: Tensor
    shape: tuple[int, int]

    def blocks(self, rows: Tensor) -> Tensor:
        """``(k, L, r_out, r_in)``: each member's matrix in each row vector of ``rows`` ``(k, d)``."""
        return rows[:, self.columns.to(rows.device)].reshape(len(rows), len(self.members), *self.shape)


def layer_groups(layers: Sequence[LayerSpec]) -> list[LayerGroup]:
    """Layers grouped by projected shape, so that each group's rotations are two batched products."""
    offsets = torch.tensor([0] + [layer.size for layer in layers]).cumsum(0).tolist()
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, layer in enumerate(layers):
        by_shape.setdefault((layer.r_out, layer.r_in), []).append(index)
    return [
        LayerGroup(members, torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in members]), shape)
        for shape, members in by_shape.items()
    ]


def rotate(blocks: Tensor, q_s: Tensor, q_a: Tensor) -> Tensor:
    """``Q_Sᵀ M Q_A`` for every matrix ``M`` of ``blocks`` ``(k, L, r_out, r_in)``, ``q_s`` ``(L, r_out, r_out)``,
    ``q_a`` ``(L, r_in, r_in)`` (two products batched over the ``L`` layers, each a tall GEMM)."""
    return torch.einsum("lpo,blpq->bloq", q_s, torch.einsum("blpi,liq->blpq", blocks, q_a))


def unrotate(blocks: Tensor, q_s: Tensor, q_a: Tensor) -> Tensor:
    """``Q_S R Q_Aᵀ`` for every matrix ``R`` of ``blocks``: the inverse of ``rotate`` for orthogonal bases."""
    return torch.einsum("lpo,bloi->blpi", q_s, torch.einsum("bloq,liq->bloi", blocks, q_a))


class KroneckerCurvature(Curvature):
    """Block-diagonal ``H + ρI`` over projected layers, each block eigendecomposed as ``(Q_S, Q_A, Λ)``.

    ``solve``/``matvec`` take row vectors ``(k, d)`` in the store's layout (layer after layer, each
    ``(r_out, r_in)`` row-major) and work in float64. ``damping`` is the fixed ρ, or for the heuristic the
    size-weighted mean of the per-layer values (``layer_damping``).
    """

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        bases: Sequence[tuple[Tensor, Tensor]],
        eigenvalues: Sequence[Tensor],
        l2: float,
        damping: Damping,
    ) -> None:
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.layers, self.l2 = list(layers), float(l2)
        self.bases = [(q_s.double(), q_a.double()) for q_s, q_a in bases]
        self.eigenvalues = [values.double() for values in eigenvalues]
        self.layer_damping: list[float] = []
        for layer, values in zip(self.layers, self.eigenvalues, strict=True):
            if values.shape != (layer.r_out, layer.r_in):
                raise ValueError(f"eigenvalues of {layer.name} must be {(layer.r_out, layer.r_in)}, got {values.shape}")
            rho = resolve_damping(damping, values.mean().item() + self.l2)
            shifted = values + self.l2 + rho
            if not shifted.min().item() > values.numel() * torch.finfo(torch.float64).eps * shifted.abs().max().item():
                raise ValueError(
                    f"the damped curvature of layer {layer.name} is singular (smallest eigenvalue "
                    f"{shifted.min().item():.3g}, damping {rho:.3g}); pass a damping > 0 or 'heuristic'"
                )
            self.layer_damping.append(rho)
        sizes = [layer.size for layer in self.layers]
        self.damping = sum(r * s for r, s in zip(self.layer_damping, sizes, strict=True)) / sum(sizes)
        self.groups = layer_groups(self.layers)
        self._stacked = [
            (
                torch.stack([self.bases[i][0] for i in group.members]),
                torch.stack([self.bases[i][1] for i in group.members]),
                torch.stack([self.eigenvalues[i] + self.l2 + self.layer_damping[i] for i in group.members]),
            )
            for group in self.groups
        ]

    def _apply(self, V: Tensor, power: int) -> Tensor:
        dim = sum(layer.size for layer in self.layers)
        if V.ndim != 2 or V.shape[1] != dim:
            raise ValueError(f"expected row vectors (k, {dim}), got {tuple(V.shape)}")
        work = V.double()
        out = torch.empty_like(work)
        for group, (q_s, q_a, shifted) in zip(self.groups, self._stacked, strict=True):
            q_s, q_a, shifted = q_s.to(work.device), q_a.to(work.device), shifted.to(work.device)
            scaled = rotate(group.blocks(work), q_s, q_a) * shifted**power
            out[:, group.columns.to(work.device)] = unrotate(scaled, q_s, q_a).flatten(1)
        return out.to(V.dtype)

    def solve(self, V: Tensor) -> Tensor:
        return self._apply(V, -1)

    def matvec(self, V: Tensor) -> Tensor:
        return self._apply(V, 1)


def kronecker_bases(store: GradientStore) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
    """Per layer the eigenbases ``(Q_S, Q_A)`` of the K-FAC factors and the K-FAC eigenvalues ``λ_S λ_Aᵀ``."""
    moments = store.moments()
    tokens, examples = moments["tokens"].item(), moments["examples"].item()
    bases, values = [], []
    for layer in store.spec.layers:
        a = moments[f"in:{layer.name}"] / tokens
        s = moments[f"out:{layer.name}"] / examples
        lam_a, q_a = torch.linalg.eigh(0.5 * (a + a.T))
        lam_s, q_s = torch.linalg.eigh(0.5 * (s + s.T))
        bases.append((q_s, q_a))
        values.append(torch.outer(lam_s.clamp_min(0), lam_a.clamp_min(0)))
    return bases, values


def corrected_eigenvalues(
    store: GradientStore, bases: Sequence[tuple[Tensor, Tensor]], device: str | torch.device = "cpu"
) -> list[Tensor]:
    """EK-FAC ``Λ = (1/N) Σ_i (Q_Sᵀ G̃_i Q_A)^{∘2}`` per layer, from the stored (Fisher) gradients."""
    groups = layer_groups(store.spec.layers)
    stacked = [
        (
            torch.stack([bases[i][0] for i in group.members]).to(device, torch.float64),
            torch.stack([bases[i][1] for i in group.members]).to(device, torch.float64),
        )
        for group in groups
    ]
    totals = [torch.zeros(len(group.members), *group.shape, dtype=torch.float64, device=device) for group in groups]
    for _, array in store.shards("fisher"):
        rows = array.to(device, torch.float64)
        for group, (q_s, q_a), total in zip(groups, stacked, totals, strict=True):
            total += rotate(group.blocks(rows), q_s, q_a).square().sum(dim=0)
    values: list[Tensor] = [torch.empty(0)] * len(store.spec.layers)
    for group, total in zip(groups, totals, strict=True):
        for position, index in enumerate(group.members):
            values[index] = total[position].cpu() / store.spec.num_examples
    return values


def fit_curvature(
    store: GradientStore, kind: str, damping: Damping, l2: float = 0.0, device: str | torch.device = "cpu"
) -> Curvature:
    """The damped projected curvature of ``kind`` (dense | kfac | ekfac) from the pool store."""
    check_damping(damping)
    if kind == "dense":
        fisher = projected_fisher(store, device)
        return EigenCurvature(fisher + l2 * torch.eye(len(fisher), dtype=fisher.dtype, device=fisher.device), damping)
    if kind not in ("kfac", "ekfac"):
        raise ValueError(f"curvature must be dense, kfac or ekfac, got {kind!r}")
    bases, values = kronecker_bases(store)
    if kind == "ekfac":
        values = corrected_eigenvalues(store, bases, device)
    return KroneckerCurvature(store.spec.layers, bases, values, l2, damping)

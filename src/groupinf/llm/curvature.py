"""Training curvature in the projected space: a gradient store as the source of the core's ``fit_curvature``.

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

``kfac`` and ``ekfac`` are the core's ``KroneckerCurvature`` over the store's layout (``projected_layout``:
layer after layer, each ``(r_out, r_in)`` row-major), block-diagonal across layers, with the heuristic
damping ``ρ_ℓ = 0.1 · mean(Λ + λ)`` per layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from groupinf.curvature import Block, BlockLayout
from groupinf.llm.projection import LayerSpec
from groupinf.llm.store import GradientStore


def projected_layout(layers: Sequence[LayerSpec]) -> BlockLayout:
    """The projected layers as blocks ``(r_out, r_in)`` of the store's rows, in order."""
    return BlockLayout(tuple(Block(layer.name, (layer.r_out, layer.r_in)) for layer in layers))


class StoredGradients:
    """A ``GradientStore`` as a ``groupinf.curvature.GradientSource``: its Fisher gradients (float64, on
    ``device``) and the K-FAC factors of its moment sums."""

    def __init__(self, store: GradientStore, device: str | torch.device = "cpu") -> None:
        self.store, self.device = store, device
        self.layout = projected_layout(store.spec.layers)

    def kronecker_factors(self) -> list[tuple[Tensor, Tensor]]:
        """Per layer ``(S, A)``: ``S`` summed over tokens and averaged over examples, ``A`` averaged over tokens."""
        moments = self.store.moments()
        tokens, examples = moments["tokens"].item(), moments["examples"].item()
        return [
            (moments[f"out:{layer.name}"] / examples, moments[f"in:{layer.name}"] / tokens)
            for layer in self.store.spec.layers
        ]

    def row_batches(self) -> Iterator[Tensor]:
        """The store's Fisher gradients, shard by shard ``(rows, d)``."""
        for _, array in self.store.shards("fisher"):
            yield array.to(self.device, torch.float64)

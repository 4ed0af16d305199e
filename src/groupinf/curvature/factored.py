"""Products of per-example gradients with many vectors, without forming the per-example gradients.

For a covered layer (``curvature.hooks``) the per-example gradient is ``∇W_i = Σ_t s_{i,t} ā_{i,t}ᵀ``, so for
any layer-shaped matrix ``M`` ``(d_out, columns)``: ``⟨M, ∇W_i⟩ = Σ_t s_{i,t}ᵀ M ā_{i,t}``. With one token per
example this is ``((Ā Mᵀ) ∘ S).sum(-1)`` over a batch — ``k·d_out·columns·B`` multiply-adds and no
``B × p`` gradient matrix. Sequence, Conv2d and shared layers form ``∇W_i`` for chunks of examples.
Influence scores ``q_jᵀ (H + ρI)⁻¹ g_i`` with a Kronecker-factored curvature: ``influence_scores``, which
works in the curvature's eigenbasis (the same numbers as ``gradient_products(…, curvature.solve(Q))``, less work).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property

import torch
from torch import Tensor

from groupinf.curvature.hooks import KroneckerLayer, LayerBatch, find_layers, parameter_layout
from groupinf.curvature.kfac import Batch, captured_batches
from groupinf.curvature.kronecker import CHUNK_ELEMENTS, KroneckerCurvature
from groupinf.matmul import FixedMatrix
from groupinf.task import Task

#: queries whose ``(d_out, columns)`` matrices one product of ``_accumulate_products`` handles at once (the
#: product ``(B, chunk·d_out)`` then stays in cache for the weighting by ``s``)
QUERY_CHUNK = 16


class _LayerRows:
    """``k`` layer-shaped matrices ``mats`` ``(k, d_out, columns)`` to contract with many batches' gradients; for
    one-token layers as ``FixedMatrix`` chunks of ``QUERY_CHUNK`` matrices ``(chunk·d_out, columns)``, made once."""

    def __init__(self, mats: Tensor) -> None:
        self.mats = mats

    @cached_property
    def chunks(self) -> list[FixedMatrix]:
        k, _, columns = self.mats.shape
        return [FixedMatrix(self.mats[i : i + QUERY_CHUNK].reshape(-1, columns)) for i in range(0, k, QUERY_CHUNK)]


def _accumulate_products(out: Tensor, rows: _LayerRows, seen: LayerBatch, layer: KroneckerLayer) -> None:
    """``out[j, b] += ⟨mats_j, ∇W_b⟩`` for ``rows.mats`` ``(k, d_out, columns)`` and the examples of ``seen``
    (``∇W_b = Σ_t s_{b,t} a_{b,t}ᵀ``; ``out`` ``(k, B)``), in ``out``'s dtype, never forming ``∇W_b`` for one-token
    layers."""
    a, s = seen.a.to(out.dtype), seen.s[0].to(out.dtype)
    k, size = out.shape
    if a.shape[1] == 1:
        a, s = a[:, 0], s[:, :1]  # (B, columns), (B, 1, d_out)
        start = 0
        for chunk in rows.chunks:
            projected = chunk(a)  # (B, chunk·d_out)
            count = projected.shape[1] // layer.out_features
            out[start : start + count] += projected.view(size, count, -1).mul_(s).sum(-1).T
            start += count
        return
    flat = rows.mats.reshape(k, -1)
    chunk = max(1, CHUNK_ELEMENTS // layer.numel)
    for start in range(0, size, chunk):
        grads = s[start : start + chunk].transpose(1, 2) @ a[start : start + chunk]  # (b, d_out, columns)
        out[:, start : start + chunk] += flat @ grads.reshape(len(grads), -1).T


def gradient_products(
    task: Task,
    theta: Tensor,
    data: Iterable[Batch],
    M: Tensor,
    *,
    modules: Sequence[str] | None = None,
    progress: bool = False,
) -> Tensor:
    """``M g_iᵀ`` for rows ``M`` ``(k, p)`` (ParamSpace layout) and every example of ``data``: ``(k, N)``.

    ``g_i = ∇l_i(θ)`` is the gradient of the unscaled loss of example ``i`` with its real label; the model's
    attributed parameters must be exactly the covered layers' (as for K-FAC). Computed in ``M``'s dtype.
    """
    layers = find_layers(task.model, task.space, modules)
    if M.ndim != 2 or M.shape[1] != task.space.numel:
        raise ValueError(f"expected row vectors (k, {task.space.numel}), got {tuple(M.shape)}")
    k = len(M)
    split = parameter_layout(layers, task.space).split(M)
    mats = {layer.name: _LayerRows(part) for layer, part in zip(layers, split, strict=True)}
    generator = torch.Generator(device=theta.device)
    columns = []
    for size, captured, _ in captured_batches(
        task, theta, data, layers, "empirical", 1, generator, "gradient products", progress
    ):
        out = torch.zeros(k, size, dtype=M.dtype, device=M.device)
        for layer in layers:
            _accumulate_products(out, mats[layer.name], captured[layer.name], layer)
        columns.append(out)
    if not columns:
        raise ValueError("data yielded no examples")
    return torch.cat(columns, dim=1)


def hooked_gradients(
    task: Task,
    theta: Tensor,
    data: Iterable[Batch],
    *,
    modules: Sequence[str] | None = None,
    progress: bool = False,
) -> Tensor:
    """Per-example gradients ``g_i`` ``(N, p)`` (ParamSpace layout) assembled from the captured ``a`` and ``s``.

    The same numbers as ``gradients.per_example_gradients`` for models made of covered layers, with one
    batched forward/backward pass per batch and ``∇W_i = Σ_t s_{i,t} ā_{i,t}ᵀ`` instead of ``vmap``: less
    time and memory for MLPs and CNNs. Real labels (``g_i = ∇l_i``); in ``theta``'s dtype.
    """
    layers = find_layers(task.model, task.space, modules)
    layout = parameter_layout(layers, task.space)
    generator = torch.Generator(device=theta.device)
    rows = []
    batches = captured_batches(task, theta, data, layers, "empirical", 1, generator, "gradients", progress)
    for _, captured, _ in batches:
        seen = [captured[layer.name] for layer in layers]
        rows.append(layout.join([batch.s[0].transpose(1, 2) @ batch.a for batch in seen]))  # ∇W_i per layer
    if not rows:
        raise ValueError("data yielded no examples")
    return torch.cat(rows)


def influence_scores(
    task: Task,
    theta: Tensor,
    queries: Iterable[Batch],
    data: Iterable[Batch],
    curvature: KroneckerCurvature,
    *,
    progress: bool = False,
) -> Tensor:
    """``q_jᵀ (H + ρI)⁻¹ g_i`` ``(k, N)`` for every example ``j`` of ``queries`` and ``i`` of ``data`` (unscaled
    losses, real labels), with a fitted Kronecker-factored ``curvature`` of the same task.

    Per layer, in the eigenbasis: ``⟨Q_S R_j Q_Aᵀ, ∇W_i⟩ = ⟨R_j, Q_Sᵀ ∇W_i Q_A⟩`` with
    ``R_j = (Q_Sᵀ ∇W_j Q_A) ⊘ (Λ + λ + ρ_ℓ)``. The queries' gradients are rotated from their captured factors
    (``Q_Sᵀ ∇W_j Q_A = Σ_t (Q_Sᵀ s_{j,t})(Q_Aᵀ a_{j,t})ᵀ``) and divided once; each training batch's captured
    ``a``, ``s`` are rotated (``a Q_A``, ``s Q_S``: ``d_out² + columns²`` per token) and contracted with the
    ``R_j`` as in ``gradient_products``. The same numbers as ``gradient_products(…, curvature.solve(Q))`` with
    ``Q`` the queries' gradients, without forming ``Q``, rotating it, or rotating the ``k`` solutions back
    (``k·d_out·columns·(d_out + columns)`` multiply-adds). Computed in ``curvature.compute_dtype``.
    """
    dtype = curvature.compute_dtype
    layers = find_layers(task.model, task.space, [block.name for block in curvature.layout.blocks])
    if parameter_layout(layers, task.space) != curvature.layout:
        raise ValueError("the curvature was fitted on other layers than the task's")
    bases = [(q_a.to(theta.device, dtype), q_s.to(theta.device, dtype)) for q_s, q_a in curvature.bases]
    generator = torch.Generator(device=theta.device)

    def rotated(captured: dict[str, LayerBatch]) -> dict[str, LayerBatch]:
        return {
            layer.name: LayerBatch(captured[layer.name].a.to(dtype) @ q_a, [captured[layer.name].s[0].to(dtype) @ q_s])
            for layer, (q_a, q_s) in zip(layers, bases, strict=True)
        }

    parts: dict[str, list[Tensor]] = {layer.name: [] for layer in layers}
    query_batches = captured_batches(task, theta, queries, layers, "empirical", 1, generator, "queries", progress)
    for _, captured, _ in query_batches:
        for name, seen in rotated(captured).items():
            parts[name].append(seen.s[0].transpose(1, 2) @ seen.a)  # (B, d_out, columns): Q_Sᵀ ∇W_j Q_A
    if not parts[layers[0].name]:
        raise ValueError("queries yielded no examples")
    solved = {
        layer.name: _LayerRows(torch.cat(parts[layer.name]) / (values.to(theta.device) + curvature.l2 + rho).to(dtype))
        for layer, values, rho in zip(layers, curvature.eigenvalues, curvature.layer_damping, strict=True)
    }
    k = len(solved[layers[0].name].mats)
    columns = []
    for size, captured, _ in captured_batches(task, theta, data, layers, "empirical", 1, generator, "scores", progress):
        out = torch.zeros(k, size, dtype=dtype, device=theta.device)
        for layer, seen in zip(layers, rotated(captured).values(), strict=True):
            _accumulate_products(out, solved[layer.name], seen, layer)
        columns.append(out)
    if not columns:
        raise ValueError("data yielded no examples")
    return torch.cat(columns, dim=1)

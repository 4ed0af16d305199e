"""Products of per-example gradients with many vectors, without forming the per-example gradients.

For a covered layer (``curvature.hooks``) the per-example gradient is ``∇W_i = Σ_t s_{i,t} ā_{i,t}ᵀ``, so for
any layer-shaped matrix ``M`` ``(d_out, columns)``: ``⟨M, ∇W_i⟩ = Σ_t s_{i,t}ᵀ M ā_{i,t}``. With one token per
example this is ``((Ā Mᵀ) ∘ S).sum(-1)`` over a batch — ``k·d_out·columns·B`` multiply-adds and no
``B × p`` gradient matrix. Sequence, Conv2d and shared layers form ``∇W_i`` for chunks of examples.
Typical use: influence scores ``q_jᵀ (H + ρI)⁻¹ g_i`` = ``gradient_products(…, curvature.solve(Q))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from groupinf.curvature.hooks import find_layers
from groupinf.curvature.kfac import CHUNK_ELEMENTS, Batch, captured_batches
from groupinf.task import Task


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
    slices = task.space.slices()
    k = len(M)
    mats = {}
    for layer in layers:
        w = M[:, slices[layer.weight]].reshape(k, layer.out_features, layer.in_features)
        if layer.bias is not None:
            w = torch.cat([w, M[:, slices[layer.bias]].unsqueeze(-1)], dim=-1)
        mats[layer.name] = w  # (k, d_out, columns)
    generator = torch.Generator(device=theta.device)
    columns = []
    for size, captured, _ in captured_batches(
        task, theta, data, layers, "empirical", 1, generator, "gradient products", progress
    ):
        out = torch.zeros(k, size, dtype=M.dtype, device=M.device)
        for layer in layers:
            seen = captured[layer.name]
            a, s, w = seen.a.to(M.dtype), seen.s[0].to(M.dtype), mats[layer.name]
            if a.shape[1] == 1:
                projected = torch.einsum("joc,bc->jbo", w, a[:, 0])  # (k, B, d_out)
                out += (projected * s[:, 0]).sum(-1)
            else:
                flat = w.reshape(k, -1)
                chunk = max(1, CHUNK_ELEMENTS // layer.numel)
                for start in range(0, size, chunk):
                    grads = s[start : start + chunk].transpose(1, 2) @ a[start : start + chunk]  # (b, d_out, columns)
                    out[:, start : start + chunk] += flat @ grads.reshape(len(grads), -1).T
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
    slices = task.space.slices()
    generator = torch.Generator(device=theta.device)
    rows = []
    batches = captured_batches(task, theta, data, layers, "empirical", 1, generator, "gradients", progress)
    for size, captured, _ in batches:
        out = torch.empty(size, task.space.numel, dtype=theta.dtype, device=theta.device)
        for layer in layers:
            seen = captured[layer.name]
            grads = seen.s[0].transpose(1, 2) @ seen.a  # (B, d_out, columns)
            out[:, slices[layer.weight]] = grads[..., : layer.in_features].reshape(size, -1)
            if layer.bias is not None:
                out[:, slices[layer.bias]] = grads[..., -1]
        rows.append(out)
    if not rows:
        raise ValueError("data yielded no examples")
    return torch.cat(rows)

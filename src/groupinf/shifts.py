"""Per-example parameter shifts ``δ_i = (1/n) (H + ρI)⁻¹ g_i`` (docs/math.md §2), in memory or streamed to disk.

``compute_shifts`` solves a batch of gradients in memory. ``stream_shifts`` is for models whose ``N × p``
shifts do not fit in memory: the examples are processed shard by shard (``shard_size`` rows; gradients in
batches of ``batch_size``) and each shard is written to a memory-mapped ``.npy`` (``store.ArrayStore``). An
interrupted run resumes where it stopped and produces the same file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from groupinf.checks import check_count
from groupinf.curvature import Curvature
from groupinf.digests import content_digest
from groupinf.gradients import per_example_gradients
from groupinf.store import load_store, open_store
from groupinf.task import Task, check_lengths


def compute_shifts(curvature: Curvature, gradients: Tensor, n: int) -> Tensor:
    """``δ_i = (1/n) (H + ρI)⁻¹ g_i`` for gradients ``(N, p)`` -> ``(N, p)``."""
    check_count(n, "n (the training-set size)")
    if not torch.isfinite(gradients).all():
        raise ValueError("gradients contain NaN or inf; check the model and the data")
    return curvature.solve(gradients) / n


def stream_shifts(
    task: Task,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    curvature: Curvature,
    n: int,
    path: str | Path,
    *,
    dtype: str = "float32",
    shard_size: int = 1024,
    batch_size: int = 256,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    on_shard: Callable[[int], None] | None = None,
) -> np.memmap:
    """Write ``δ_i`` for every example to ``path`` (``.npy``) and return the complete array ``(N, p)``.

    ``n`` is the training-set size of ``R``; ``dtype`` the stored precision ("float32" or "float16": shifts
    are ``O(1/n)`` and float16 keeps about 3 significant digits, flushing magnitudes below ~6e-8 to 0).
    The store's metadata records θ's and the data's fingerprints, ``n``, the curvature's class and damping
    and ``meta``; a rerun with the same settings skips the finished shards, with different settings it
    raises unless ``overwrite``. ``on_shard(k)`` is called after shard ``k`` is safely on disk.
    """
    check_count(n, "n (the training-set size)")
    check_lengths(inputs, targets)
    header = {
        "kind": "shifts",
        "n": int(n),
        "params": list(task.space.names),
        "curvature": type(curvature).__name__,
        "damping": float(curvature.damping),
        "theta": content_digest(theta),
        "data": content_digest(inputs, targets),
        **(meta or {}),
    }
    store = open_store(path, (len(inputs), task.space.numel), dtype, shard_size, header, overwrite=overwrite)
    for shard in tqdm(store.pending(), desc="shifts", disable=not progress):
        rows = store.rows(shard)
        grads = per_example_gradients(task, theta, inputs[rows], targets[rows], batch_size)
        shifts = compute_shifts(curvature, grads, n)
        store.write(shard, shifts.detach().cpu().to(torch.float64).numpy())
        if on_shard is not None:
            on_shard(shard)
    return store.finish()


def load_shifts(path: str | Path) -> tuple[np.memmap, dict[str, Any]]:
    """The stored shifts ``(N, p)`` (read-only memory map) and their metadata."""
    array, meta = load_store(path)
    if meta.get("kind") != "shifts":
        raise ValueError(f"{path} does not hold shifts (kind {meta.get('kind')!r})")
    return array, meta

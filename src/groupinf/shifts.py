"""Per-example parameter shifts ``δ_i = (1/n) (H + ρI)⁻¹ g_i`` (docs/math.md §2), in memory or streamed to disk.

``compute_shifts`` solves a batch of gradients in memory. ``stream_shifts`` is for models whose ``N × p``
shifts do not fit in memory: the examples are processed shard by shard (``shard_size`` rows; gradients in
batches of ``batch_size``) into a store directory of kind ``shifts`` with one array ``shifts``
(``groupinf.store``). An interrupted run resumes at the shards it had not finished and produces the same
files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from groupinf.checks import check_count
from groupinf.curvature import Curvature
from groupinf.digests import content_digest
from groupinf.files import exclusive
from groupinf.gradients import per_example_gradients
from groupinf.store import Advice, ShardedStore, StoreLayout
from groupinf.task import Task, check_lengths

ADVICE = Advice(
    make="stream_shifts writes one",
    rerun="call stream_shifts again with the same arguments",
    relocate="pass overwrite=True or use another path",
)


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
) -> ShardedStore:
    """Write ``δ_i`` for every example to the store directory ``path`` and return the complete store: its
    array ``shifts`` is ``(N, p)`` (``store.read("shifts")``, or a shard at a time with ``store.shards``).

    ``n`` is the training-set size of ``R``; ``dtype`` the stored precision ("float32", "float16", "bfloat16"
    or "float64": shifts are ``O(1/n)`` and float16 keeps about 3 significant digits, flushing magnitudes
    below ~6e-8 to 0). The store's ``meta`` records θ's and the data's fingerprints, ``n``, the curvature's
    class and damping and ``meta``; a rerun with the same settings skips the finished shards, with different
    settings it raises unless ``overwrite``. ``on_shard(k)`` is called after shard ``k`` is safely on disk.
    The process holds a lock on ``path`` while it computes.
    """
    check_count(n, "n (the training-set size)")
    check_lengths(inputs, targets)
    header = {
        "n": int(n),
        "params": list(task.space.names),
        "curvature": type(curvature).__name__,
        "damping": float(curvature.damping),
        "theta": content_digest(theta),
        "data": content_digest(inputs, targets),
        **(meta or {}),
    }
    layout = StoreLayout("shifts", len(inputs), shard_size, dtype, {"shifts": task.space.numel}, meta=header)
    store = ShardedStore.prepare(path, layout, ADVICE, overwrite)
    with exclusive(path, "writing shifts (stream_shifts)"):
        store.discard_partial_files()
        for shard in tqdm(store.missing_shards(), desc="shifts", disable=not progress):
            start, stop = layout.rows(shard)
            grads = per_example_gradients(task, theta, inputs[start:stop], targets[start:stop], batch_size)
            store.write_shard(shard, {"shifts": compute_shifts(curvature, grads, n)})
            if on_shard is not None:
                on_shard(shard)
    return store


def load_shifts(path: str | Path) -> ShardedStore:
    """The complete store of shifts at ``path``: array ``shifts`` ``(N, p)``, their metadata in
    ``store.layout.meta``."""
    return ShardedStore.open(path, "shifts", ADVICE)

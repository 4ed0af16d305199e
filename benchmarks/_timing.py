"""Timing helpers shared by the benchmarks: on a shared machine, paths are timed in turn and the best run of each
is kept, so that a burst of load from other processes hits every path alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def interleaved(repeats: int, works: dict[str, Callable[[], Any]]) -> dict[str, tuple[float, Any]]:
    """The best time (seconds) and the result of each work, running them in turn ``repeats`` times."""
    best: dict[str, tuple[float, Any]] = {}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            result = work()
            seconds = time.perf_counter() - start
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, result)
    return best


def best_of(repeats: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """The best time and the result of ``repeats`` runs of ``work``."""
    return interleaved(repeats, {"work": work})["work"]

"""Resumable, optionally parallel execution of many independent jobs (retrainings).

Each finished job's JSON result is written to ``cache_dir/<key>.json`` (write, then rename) as soon
as it finishes, so an interrupted run loses at most the jobs in flight and a rerun skips the rest. Worker
processes ignore Ctrl-C: the main process handles it, and stops them at once.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from groupinf.files import atomic_write_json

JobFn = Callable[[Any, Any], Any]

_shared: Any = None


def _init_worker(shared: Any, threads: int) -> None:
    global _shared
    _shared = shared
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit)


def _exit(signum: int, frame: object) -> None:
    """Stop a worker the pool terminates by an exception, so that its clean-up runs (it releases the
    semaphores it made, e.g. for tqdm, which would otherwise be reported as leaked)."""
    sys.exit(0)


def _call(item: tuple[JobFn, str, Any]) -> tuple[str, Any]:
    fn, key, job = item
    return key, fn(_shared, job)


def run_jobs(
    fn: JobFn,
    jobs: Mapping[str, Any],
    cache_dir: Path,
    shared: Any = None,
    workers: int = 1,
    desc: str = "jobs",
) -> dict[str, Any]:
    """``{key: fn(shared, job)}`` for every job, reusing results cached in ``cache_dir``.

    ``fn`` must be a module-level function (it is pickled to worker processes); results must be
    JSON-serialisable. ``shared`` is sent once per worker, not once per job.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    pending = {}
    for key, job in jobs.items():
        path = cache_dir / f"{key}.json"
        if path.exists():
            results[key] = json.loads(path.read_text())["result"]
        else:
            pending[key] = job
    progress = tqdm(total=len(jobs), initial=len(results), desc=desc)

    def finish(key: str, result: Any) -> None:
        atomic_write_json(cache_dir / f"{key}.json", {"key": key, "result": result})
        results[key] = result
        progress.update()

    if workers == 1 or len(pending) <= 1:
        for key, job in pending.items():
            finish(key, fn(shared, job))
    else:
        threads = max(1, torch.get_num_threads() // workers)
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, _init_worker, (shared, threads)) as pool:  # leaving it terminates the workers
            for key, result in pool.imap_unordered(_call, [(fn, key, job) for key, job in pending.items()]):
                finish(key, result)
    progress.close()
    return {key: results[key] for key in jobs}

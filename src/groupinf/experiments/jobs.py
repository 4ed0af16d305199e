"""Resumable, optionally parallel execution of many independent jobs (retrainings).

Each finished job's JSON result is written to ``cache_dir/<key>.json`` (write, then rename) as soon
as it finishes, so an interrupted run loses at most the jobs in flight and a rerun skips the rest. Worker
processes ignore Ctrl-C: the main process handles it, and stops them at once (SIGTERM, default action).
When every job is done the workers are sent no signal: they are closed and joined.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm

from groupinf.files import atomic_write_json

JobFn = Callable[[Any, Any], Any]

_shared: Any = None


def _init_worker(shared: Any, threads: int) -> None:
    """Set up a worker: ``shared``, its torch threads, Ctrl-C ignored, and a thread lock for tqdm (tqdm's
    default lock is a multiprocessing semaphore, which a terminated worker could not release: the resource
    tracker would report it as leaked). SIGTERM keeps its default action: a Python handler would run only in
    the main thread, which may wait in a lock the pool never releases while another thread got the signal."""
    global _shared
    _shared = shared
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    std_tqdm.set_lock(threading.RLock())  # the base class: every tqdm class of the worker shares it


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
        with context.Pool(workers, _init_worker, (shared, threads)) as pool:  # leaving it early terminates them
            for key, result in pool.imap_unordered(_call, [(fn, key, job) for key, job in pending.items()]):
                finish(key, result)
            pool.close()  # every job is done: the workers exit on the pool's sentinel, without a signal
            pool.join()
    progress.close()
    return {key: results[key] for key in jobs}

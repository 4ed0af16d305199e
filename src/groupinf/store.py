"""On-disk arrays written shard by shard: resumable, and never visible half-written.

A store for ``path`` (``…/name.npy``) is three files:

- ``name.npy.partial``: the array being filled, a numpy ``.npy`` opened with ``open_memmap``;
- ``name.json``: metadata (format, shape, dtype, rows per shard, the caller's ``meta``) and the list of
  finished shards, rewritten atomically after each shard;
- ``name.npy``: the complete array, which appears (by rename of the partial file) only once every shard is
  written; the metadata is then marked ``complete``.

Shard ``k`` holds rows ``[k·shard_rows, (k+1)·shard_rows)``. A shard is recorded as finished only after its
rows were flushed to disk, so a run interrupted at any point resumes by recomputing exactly the shards that
were not recorded; with a deterministic producer the final file is identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from groupinf.files import atomic_write_json

FORMAT = "groupinf-array-store/1"
DTYPES = ("float16", "float32", "float64")


def _paths(path: Path) -> tuple[Path, Path, Path]:
    return path, path.with_suffix(".json"), path.with_name(path.name + ".partial")


def _roundtrip(obj: Any) -> Any:
    """``obj`` as it will read back from JSON (tuples become lists, …); raises for non-JSON values."""
    return json.loads(json.dumps(obj))


class ArrayStore:
    """A ``(rows, cols)`` array filled shard by shard (see the module docstring). Use ``open_store``."""

    def __init__(self, path: Path, header: dict[str, Any], done: set[int], complete: bool) -> None:
        self.path, self.header, self.done, self.complete = path, header, done, complete
        self.final, self.info, self.partial = _paths(path)
        self._array: np.memmap | None = None

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.header["shape"]
        return rows, cols

    @property
    def shard_rows(self) -> int:
        return int(self.header["shard_rows"])

    @property
    def num_shards(self) -> int:
        return -(-self.shape[0] // self.shard_rows)

    def rows(self, shard: int) -> slice:
        """The rows of shard ``shard``."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range [0, {self.num_shards})")
        return slice(shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.shape[0]))

    def pending(self) -> list[int]:
        """Shards not yet written, in order."""
        return [k for k in range(self.num_shards) if k not in self.done]

    def _open(self) -> np.memmap:
        if self._array is None:
            if self.partial.exists():
                self._array = open_memmap(self.partial, mode="r+")
                if self._array.shape != self.shape or self._array.dtype != np.dtype(self.header["dtype"]):
                    raise ValueError(f"{self.partial} does not match its metadata {self.info}; delete both")
            else:
                self._array = open_memmap(self.partial, mode="w+", dtype=self.header["dtype"], shape=self.shape)
        return self._array

    def _write_info(self) -> None:
        atomic_write_json(self.info, {**self.header, "done": sorted(self.done), "complete": self.complete})

    def write(self, shard: int, values: np.ndarray) -> None:
        """Store the rows of ``shard`` (``(len(rows), cols)``, cast to the store's dtype) and record it as done."""
        if self.complete:
            raise ValueError(f"{self.final} is complete; open it with overwrite=True to rewrite it")
        rows = self.rows(shard)
        expected = (rows.stop - rows.start, self.shape[1])
        if values.shape != expected:
            raise ValueError(f"shard {shard} must have shape {expected}, got {values.shape}")
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, with advice
            cast = np.asarray(values).astype(self.header["dtype"])
        if not np.isfinite(cast).all():
            raise ValueError(
                f"shard {shard} has NaN or inf values after conversion to {self.header['dtype']} (overflow?); "
                "use a wider dtype"
            )
        array = self._open()
        array[rows] = cast
        array.flush()
        self.done.add(shard)
        self._write_info()

    def finish(self) -> np.memmap:
        """Rename the filled array to its final name, mark the store complete, return it read-only."""
        if not self.complete:
            if self.pending():
                raise ValueError(f"cannot finish {self.final}: shards {self.pending()} are not written")
            array = self._open()
            array.flush()
            del array
            self._array = None
            os.replace(self.partial, self.final)
            self.complete = True
            self._write_info()
        return np.load(self.final, mmap_mode="r")


def _remove(path: Path) -> None:
    for p in _paths(path):
        p.unlink(missing_ok=True)


def open_store(
    path: str | Path,
    shape: tuple[int, int],
    dtype: str,
    shard_rows: int,
    meta: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> ArrayStore:
    """Create the store at ``path`` (a ``.npy`` name), or resume it when its metadata matches.

    ``meta`` (JSON values) identifies what the array holds; a store made with a different shape, dtype,
    ``shard_rows`` or ``meta`` raises ``ValueError`` unless ``overwrite`` is true (then it is deleted).
    """
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"the store path must end in .npy, got {path}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    rows, cols = shape
    header = _roundtrip(
        {"format": FORMAT, "shape": [int(rows), int(cols)], "dtype": dtype, "shard_rows": int(shard_rows),
         "meta": meta or {}}
    )  # fmt: skip
    final, info, partial = _paths(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _remove(path)
    if info.exists():
        saved = json.loads(info.read_text())
        old = {k: saved.get(k) for k in header}
        if old != header:
            diff = {k: (old[k], header[k]) for k in header if old[k] != header[k]}
            raise ValueError(
                f"the store {path} was made with other settings (saved, requested): {diff}; "
                "pass overwrite=True or use another path"
            )
        done = {int(k) for k in saved.get("done", [])}
        store = ArrayStore(path, header, done, bool(saved.get("complete")))
        if store.complete and final.exists():
            return store
        if not partial.exists() and final.exists() and not store.pending():
            # interrupted between the rename and the metadata update
            store.complete = True
            store._write_info()
            return store
        if not partial.exists():
            store.done = set()  # the data are gone: start over
        store.complete = False
        store._write_info()
        return store
    final.unlink(missing_ok=True)
    partial.unlink(missing_ok=True)
    store = ArrayStore(path, header, set(), False)
    store._write_info()
    return store


def load_store(path: str | Path) -> tuple[np.memmap, dict[str, Any]]:
    """A complete store's array (read-only memory map) and its ``meta``."""
    final, info, _ = _paths(Path(path))
    if not info.exists() or not final.exists():
        raise FileNotFoundError(f"no complete store at {path}")
    saved = json.loads(info.read_text())
    if saved.get("format") != FORMAT or not saved.get("complete"):
        raise ValueError(f"{path} is not a complete {FORMAT} store")
    return np.load(final, mmap_mode="r"), saved["meta"]

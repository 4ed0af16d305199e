"""A store of row arrays on disk, in fixed-size shards: resumable, rank-safe and checksummed.

Layout of a store directory::

    store.json                 the layout (``StoreLayout``): kind, rows, rows per shard, dtype, the arrays
                               and their columns, the shards' extra files, the caller's ``meta``; written
                               once, compared on every resume
    shards/00000.<array>.bin   each named array of the shard, ``(rows, columns)`` raw C-order values in the
                               store dtype (bfloat16 as its 16-bit words)
    shards/00000.<extra>       the shard's extra files, as the caller gave their bytes
    shards/00000.json          start and stop row, the caller's ``info``, the size and SHA-256 of each file
                               above; written last: the shard is done

Shard ``k`` holds rows ``[k·shard_rows, (k+1)·shard_rows)``. Every file is written to a temporary name beside
it and renamed (``groupinf.files``), and no file is shared between shards, so processes writing disjoint
shards of one directory need no coordination and write the store a single process writes. A shard is done
when its ``.json`` exists and its files have the sizes it records: an interrupted writer leaves temporary
files and files without a ``.json``, and a rerun recomputes exactly the shards that are not done. Each file
is checked against its recorded SHA-256 the first time a store object reads it, so a file changed or damaged
since it was written is reported, never used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from groupinf.digests import file_digest
from groupinf.files import atomic_write_bytes, atomic_write_json

FORMAT = "groupinf-store/1"
#: the formats of earlier versions' stores, refused with the advice to recompute them
OLD_FORMATS = ("groupinf-array-store/1", "groupinf-llm-gradients/1")
#: the storage dtypes, as torch holds them and as numpy memory-maps them (bfloat16 as raw 16-bit words)
TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
NUMPY_DTYPES = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32, "float64": np.float64}


@dataclass(frozen=True)
class Advice:
    """What a store's error messages tell the user to do, each a phrase that ends a message."""

    make: str = "write the store first"
    rerun: str = "run what wrote the store again with the same settings"
    relocate: str = "use another path"
    wider: str = "use a wider dtype"


#: the advice of a store whose writer gives none of its own
GENERIC = Advice()


@dataclass(frozen=True)
class StoreLayout:
    """What a store holds: ``num_rows`` rows in shards of ``shard_rows``, each shard one ``(rows, columns)``
    array in ``dtype`` per entry of ``arrays`` (name -> columns) and the files ``extras``; ``kind`` names the
    content (checked on opening) and ``meta`` (JSON values) what it was computed from."""

    kind: str
    num_rows: int
    shard_rows: int
    dtype: str
    arrays: dict[str, int]
    extras: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_rows < 0:
            raise ValueError(f"num_rows must be >= 0, got {self.num_rows}")
        if self.shard_rows < 1:
            raise ValueError(f"the shard size must be >= 1, got {self.shard_rows}")
        if self.dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype must be one of {tuple(TORCH_DTYPES)}, got {self.dtype!r}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_rows)

    def rows(self, shard: int) -> tuple[int, int]:
        """``(start, stop)`` rows of ``shard``."""
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} out of range [0, {self.num_shards})")
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.num_rows)

    def to_json(self) -> dict[str, Any]:
        """``store.json``'s content (as it reads back: tuples become lists); raises for non-JSON ``meta``."""
        return json.loads(json.dumps({"format": FORMAT, **asdict(self), "num_shards": self.num_shards}))

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> StoreLayout:
        values = {f.name: document[f.name] for f in fields(cls)}
        return cls(**{**values, "extras": tuple(values["extras"])})


def _differences(saved: Any, wanted: Any, name: str = "") -> list[str]:
    """The keys (dotted into nested objects) whose values differ between two JSON values."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        keys = sorted(saved.keys() | wanted.keys())
        return [d for k in keys for d in _differences(saved.get(k), wanted.get(k), f"{name}.{k}" if name else k)]
    return [] if saved == wanted else [name]


def _saved_layout(path: Path, advice: Advice) -> dict[str, Any] | None:
    """The content of the ``store.json`` of the store at ``path``, None when there is none; a ValueError for
    a store of an earlier version (also the single ``.npy`` with its ``.json`` beside it), of another format,
    or a file where the store's directory belongs."""
    meta, beside = path / "store.json", path.with_suffix(".json")
    saved = json.loads(meta.read_text()) if meta.is_file() else None
    if path.suffix == ".npy" and beside.is_file():
        old = json.loads(beside.read_text()).get("format")
        if old in OLD_FORMATS:
            raise ValueError(
                f"{path} is a store of an earlier version of groupinf ({old}), which this version does not read; "
                f"delete its files ({path.name}, {beside.name}, {path.name}.partial) and {advice.rerun} to recompute it"
            )
    if saved is not None and saved.get("format") in OLD_FORMATS:
        raise ValueError(
            f"{path} is a store of an earlier version of groupinf ({saved['format']}), which this version does not "
            f"read; delete it and {advice.rerun} to recompute it"
        )
    if saved is not None and saved.get("format") != FORMAT:
        raise ValueError(f"{meta} is not a groupinf store (format {saved.get('format')!r})")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a store directory; {advice.relocate}")
    return saved


class ShardedStore:
    """A store directory with its layout (see the module docstring). ``prepare`` creates or resumes one,
    ``open`` reads one; ``advice`` phrases their error messages."""

    def __init__(self, path: str | Path, layout: StoreLayout, advice: Advice = GENERIC) -> None:
        self.path = Path(path)
        self.layout = layout
        self.advice = advice
        self._verified: set[Path] = set()

    @classmethod
    def prepare(
        cls, path: str | Path, layout: StoreLayout, advice: Advice = GENERIC, overwrite: bool = False
    ) -> ShardedStore:
        """Create the store at ``path``, or check that the one there was started with ``layout`` (a ValueError
        naming the keys that differ); with ``overwrite``, a store there is deleted first."""
        path = Path(path)
        wanted = layout.to_json()
        saved = _saved_layout(path, advice)
        if saved is not None and overwrite:
            for file in (*(path / "shards").glob("*"), path / "store.json"):
                file.unlink()
            saved = None
        if saved is None:
            atomic_write_json(path / "store.json", wanted)
        elif differ := _differences(saved, wanted):
            raise ValueError(
                f"the store at {path} was started with other settings ({', '.join(differ)} differ); "
                f"rerun with the same settings to resume it, or {advice.relocate}"
            )
        return cls(path, layout, advice)

    @classmethod
    def open(cls, path: str | Path, kind: str, advice: Advice = GENERIC, complete: bool = True) -> ShardedStore:
        """The store of ``kind`` at ``path``; with ``complete``, a ValueError when shards are missing."""
        path = Path(path)
        saved = _saved_layout(path, advice)
        if saved is None:
            raise FileNotFoundError(f"no store at {path}; {advice.make}")
        if saved["kind"] != kind:
            raise ValueError(f"the store at {path} holds {saved['kind']}, not {kind}; {advice.make}")
        store = cls(path, StoreLayout.from_json(saved), advice)
        missing = store.missing_shards()
        if complete and missing:
            raise ValueError(
                f"the store at {path} is incomplete ({len(missing)} of {store.layout.num_shards} shards missing); "
                f"{advice.rerun} to finish it"
            )
        return store

    def _file(self, shard: int, suffix: str) -> Path:
        return self.path / "shards" / f"{shard:05d}.{suffix}"

    @property
    def files(self) -> tuple[str, ...]:
        """The suffixes of a shard's files besides its ``.json``."""
        return (*(f"{name}.bin" for name in self.layout.arrays), *self.layout.extras)

    def is_done(self, shard: int) -> bool:
        """Whether ``shard``'s ``.json`` exists and its files have the sizes it records."""
        record = self._file(shard, "json")
        if not record.is_file():
            return False
        sizes = json.loads(record.read_text())["bytes"]
        files = {suffix: self._file(shard, suffix) for suffix in self.files}
        return sizes.keys() == files.keys() and all(
            f.is_file() and f.stat().st_size == sizes[s] for s, f in files.items()
        )

    def missing_shards(self) -> list[int]:
        """The shards not done, in order."""
        return [shard for shard in range(self.layout.num_shards) if not self.is_done(shard)]

    def discard_partial_files(self) -> None:
        """Remove the temporary files a killed writer left behind (only while no process writes the store)."""
        for tmp in (*self.path.glob(".*.tmp"), *(self.path / "shards").glob(".*.tmp")):
            tmp.unlink(missing_ok=True)

    def _encode(self, shard: int, name: str, values: Tensor | np.ndarray) -> bytes:
        """``values`` in the store dtype as raw bytes; a ValueError when they are not finite there. Rounded
        once, by numpy (torch rounds float64 to float16 through float32), except to bfloat16, which numpy
        lacks."""
        dtype = self.layout.dtype
        source = torch.as_tensor(values).detach().cpu()
        if dtype == "bfloat16" or source.dtype == torch.bfloat16:
            stored = source.to(TORCH_DTYPES[dtype]).contiguous()
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # reported below, with advice
                stored = torch.from_numpy(np.ascontiguousarray(source.numpy().astype(NUMPY_DTYPES[dtype])))
        if not torch.isfinite(stored).all():
            raise ValueError(
                f"shard {shard}'s {name} are not finite in {dtype} (NaN or inf; largest |value| "
                f"{source.abs().max().item():.3g}, overflow?); {self.advice.wider}"
            )
        return stored.view(torch.uint8).numpy().tobytes()

    def write_shard(
        self,
        shard: int,
        arrays: dict[str, Tensor | np.ndarray],
        extras: dict[str, bytes] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Write ``shard``: ``arrays`` (each ``(rows, columns)``, cast to the store dtype), the bytes of its
        ``extras`` files and ``info`` (JSON values, kept in its ``.json``); the ``.json`` last."""
        start, stop = self.layout.rows(shard)
        extras = extras or {}
        if arrays.keys() != self.layout.arrays.keys() or extras.keys() != set(self.layout.extras):
            wanted = (*self.layout.arrays, *self.layout.extras)
            raise ValueError(f"shard arrays must be {wanted}, got {(*arrays, *extras)}")
        contents = {}
        for name, values in arrays.items():
            shape = (stop - start, self.layout.arrays[name])
            if tuple(values.shape) != shape:
                raise ValueError(f"shard {shard}'s {name} must have shape {shape}, got {tuple(values.shape)}")
            contents[f"{name}.bin"] = self._encode(shard, name, values)
        contents.update(extras)
        for suffix, data in contents.items():
            atomic_write_bytes(self._file(shard, suffix), data)
        sizes = {suffix: len(data) for suffix, data in contents.items()}
        digests = {suffix: hashlib.sha256(data).hexdigest() for suffix, data in contents.items()}
        record = {"shard": shard, "start": start, "stop": stop, **(info or {}), "bytes": sizes, "sha256": digests}
        atomic_write_json(self._file(shard, "json"), record)

    def shard_info(self, shard: int) -> dict[str, Any]:
        """The ``.json`` of ``shard``: rows, the writer's ``info``, sizes and SHA-256 of its files."""
        return json.loads(self._file(shard, "json").read_text())

    def verified_file(self, shard: int, suffix: str) -> Path:
        """Shard ``shard``'s file ``suffix``, checked (once per store object) against its recorded SHA-256."""
        path = self._file(shard, suffix)
        if path not in self._verified:
            if file_digest(path) != self.shard_info(shard)["sha256"][suffix]:
                raise ValueError(
                    f"{path} does not match the checksum recorded when it was written (changed or damaged since); "
                    f"delete {self._file(shard, 'json').name} beside it and {self.advice.rerun} to recompute the "
                    "shard"
                )
            self._verified.add(path)
        return path

    def _columns(self, name: str) -> int:
        if name not in self.layout.arrays:
            raise ValueError(f"the store at {self.path} has no array {name!r}; it has {tuple(self.layout.arrays)}")
        return self.layout.arrays[name]

    def shard_array(self, shard: int, name: str) -> Tensor:
        """Shard ``shard``'s ``(rows, columns)`` array ``name`` in the store dtype, memory-mapped copy-on-write."""
        start, stop = self.layout.rows(shard)
        mapped = np.memmap(
            self.verified_file(shard, f"{name}.bin"),
            dtype=NUMPY_DTYPES[self.layout.dtype],
            mode="c",
            shape=(stop - start, self._columns(name)),
        )
        return torch.from_numpy(mapped).view(TORCH_DTYPES[self.layout.dtype])

    def shards(self, name: str) -> Iterator[tuple[int, Tensor]]:
        """``(start row, array)`` of array ``name`` for every shard in order."""
        for shard in range(self.layout.num_shards):
            yield self.layout.rows(shard)[0], self.shard_array(shard, name)

    def read(self, name: str) -> Tensor:
        """The whole ``(num_rows, columns)`` array ``name`` in memory, in the store dtype."""
        empty = torch.empty(0, self._columns(name), dtype=TORCH_DTYPES[self.layout.dtype])  # when there are no rows
        return torch.cat([empty, *(array for _, array in self.shards(name))])

"""An on-disk store of projected per-example gradients: fixed-size shards, memory-mapped, resumable.

Layout of a store directory::

    store.json                       what was extracted and how (written once, checked on every resume)
    shards/00000.gradients.bin       (rows, d) raw array in the store dtype: projected ∇l_i, data labels
    shards/00000.fisher.bin          (rows, d) the same for labels drawn from the model (true Fisher only)
    shards/00000.moments.safetensors per layer Σ_t (P_i x)(P_i x)ᵀ and Σ_t (P_o s)(P_o s)ᵀ (float64), tokens
    shards/00000.json                rows, example ids, token counts, the sizes and SHA-256 of the other
                                     three files; written last: the shard is done

Shard ``j`` holds examples ``[j·shard_size, (j+1)·shard_size)`` of the data file, in file order, whichever
process computed it, so stores made with any number of processes are identical. Every file is written to a
temporary name and renamed; a shard counts as done when its ``.json`` exists and its arrays have the sizes
it records, so an interrupted extraction resumes at the first unfinished shard. Reading a shard's file
checks it against its recorded SHA-256, so a file changed or damaged since it was written is reported, not
used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from groupinf.digests import file_digest
from groupinf.files import atomic_path, atomic_write_bytes, atomic_write_json
from groupinf.llm.projection import LayerSpec

FORMAT = "groupinf-llm-gradients/1"
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: how each storage dtype is memory-mapped with numpy (bfloat16 as raw 16-bit words, viewed by torch)
NUMPY_DTYPES = {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}
KINDS = ("gradients", "fisher")


@dataclass(frozen=True)
class StoreSpec:
    """Everything that determines a store's content (compared field by field on resume)."""

    num_examples: int
    shard_size: int
    dtype: str
    fisher: str
    layers: tuple[LayerSpec, ...]
    source: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise ValueError("the data set is empty: nothing to extract")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype must be one of {tuple(TORCH_DTYPES)}, got {self.dtype!r}")
        if not self.layers:
            raise ValueError("a store needs at least one layer")

    @property
    def dim(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def num_shards(self) -> int:
        return -(-self.num_examples // self.shard_size)

    def rows(self, shard: int) -> tuple[int, int]:
        """``(start, stop)`` example indices of ``shard``."""
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} out of range [0, {self.num_shards})")
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_examples)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self), "dim": self.dim, "num_shards": self.num_shards}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> StoreSpec:
        layers = tuple(LayerSpec(**layer) for layer in document["layers"])
        names = ("num_examples", "shard_size", "dtype", "fisher", "source", "settings")
        return cls(layers=layers, **{k: document[k] for k in names})


class GradientStore:
    """A store directory with its spec; see the module docstring."""

    def __init__(self, path: str | Path, spec: StoreSpec) -> None:
        self.path = Path(path)
        self.spec = spec
        self._verified: set[Path] = set()

    @classmethod
    def prepare(cls, path: str | Path, spec: StoreSpec) -> GradientStore:
        """Create the store, or check that the one at ``path`` was started with the same spec."""
        path = Path(path)
        meta = path / "store.json"
        if meta.is_file():
            found = json.loads(meta.read_text())
            wanted = json.loads(json.dumps(spec.to_json()))
            differ = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            if differ:
                raise ValueError(
                    f"the store at {path} was started with other settings ({', '.join(differ)} differ); "
                    "rerun with the same settings to resume it, or pass another --out"
                )
        else:
            atomic_write_json(meta, spec.to_json())
        return cls(path, spec)

    @classmethod
    def open(cls, path: str | Path, complete: bool = True) -> GradientStore:
        """An existing store; with ``complete``, raises ValueError when shards are missing."""
        path = Path(path)
        meta = path / "store.json"
        if not meta.is_file():
            raise FileNotFoundError(f"no gradient store at {path}; create one with `groupinf llm extract --out {path}`")
        document = json.loads(meta.read_text())
        if document.get("format") != FORMAT:
            raise ValueError(f"{meta} is not a groupinf gradient store (format {document.get('format')!r})")
        store = cls(path, StoreSpec.from_json(document))
        missing = store.missing_shards()
        if complete and missing:
            raise ValueError(
                f"the store at {path} is incomplete ({len(missing)} of {store.spec.num_shards} shards missing); "
                "rerun the same `groupinf llm extract` command to finish it"
            )
        return store

    def discard_partial_files(self) -> None:
        """Remove temporary files a killed writer left behind (call while no process is writing: ``extract``
        holds a lock on the store directory)."""
        for path in (self.path / "shards").glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _file(self, shard: int, suffix: str) -> Path:
        return self.path / "shards" / f"{shard:05d}.{suffix}"

    def _kinds(self) -> tuple[str, ...]:
        return KINDS if self.spec.fisher == "true" else KINDS[:1]

    def is_done(self, shard: int) -> bool:
        info_path = self._file(shard, "json")
        if not info_path.is_file():
            return False
        if not self._file(shard, "moments.safetensors").is_file():
            return False
        info = json.loads(info_path.read_text())
        if "sha256" not in info:  # written before shards carried checksums: recomputed
            return False
        for kind, size in info["bytes"].items():
            array = self._file(shard, f"{kind}.bin")
            if not array.is_file() or array.stat().st_size != size:
                return False
        return True

    def _verified_file(self, shard: int, suffix: str) -> Path:
        """Shard ``shard``'s file ``suffix``, checked (once per store object) against its recorded SHA-256."""
        path = self._file(shard, suffix)
        if path not in self._verified:
            if file_digest(path) != self.shard_info(shard)["sha256"][suffix]:
                raise ValueError(
                    f"{path} does not match the checksum recorded when it was written (changed or damaged since); "
                    f"delete {self._file(shard, 'json').name} beside it and rerun the same `groupinf llm extract` "
                    "command to recompute the shard"
                )
            self._verified.add(path)
        return path

    def missing_shards(self) -> list[int]:
        return [shard for shard in range(self.spec.num_shards) if not self.is_done(shard)]

    def write_shard(
        self,
        shard: int,
        arrays: dict[str, Tensor],
        moments: dict[str, Tensor],
        info: dict[str, Any],
    ) -> None:
        """Write shard ``shard``: ``arrays`` (``gradients`` and, for the true Fisher, ``fisher``, each
        ``(rows, d)``), ``moments`` (float64 tensors) and ``info`` (ids, token counts); the ``.json`` last."""
        start, stop = self.spec.rows(shard)
        if set(arrays) != set(self._kinds()):
            raise ValueError(f"shard arrays must be {self._kinds()}, got {sorted(arrays)}")
        dtype = TORCH_DTYPES[self.spec.dtype]
        sizes, digests = {}, {}
        for kind, values in arrays.items():
            if values.shape != (stop - start, self.spec.dim):
                wanted = (stop - start, self.spec.dim)
                raise ValueError(f"shard {shard} {kind} must be {wanted}, got {tuple(values.shape)}")
            stored = values.detach().to("cpu", dtype).contiguous()
            if not torch.isfinite(stored).all():
                largest = values.abs().max().item()
                raise ValueError(
                    f"projected gradients of shard {shard} are not finite in {self.spec.dtype} (largest |value| "
                    f"{largest:.3g}); use --dtype bfloat16 or float32"
                )
            data = stored.view(torch.uint8).numpy().tobytes()
            atomic_write_bytes(self._file(shard, f"{kind}.bin"), data)
            sizes[kind], digests[f"{kind}.bin"] = len(data), hashlib.sha256(data).hexdigest()
        with atomic_path(self._file(shard, "moments.safetensors")) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in moments.items()}, str(tmp))
            digests["moments.safetensors"] = file_digest(tmp)
        info = {"shard": shard, "start": start, "stop": stop, **info, "bytes": sizes, "sha256": digests}
        atomic_write_json(self._file(shard, "json"), info)

    def shard_info(self, shard: int) -> dict[str, Any]:
        return json.loads(self._file(shard, "json").read_text())

    def shard_array(self, shard: int, kind: str = "gradients") -> Tensor:
        """Shard ``shard``'s ``(rows, d)`` array, memory-mapped (copy-on-write), in the store dtype.

        ``kind`` "fisher" gives the arrays the curvature is fitted on: the drawn-label gradients for the true
        Fisher, the data-label gradients for the empirical one.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        kind = kind if kind in self._kinds() else "gradients"
        start, stop = self.spec.rows(shard)
        mapped = np.memmap(
            self._verified_file(shard, f"{kind}.bin"),
            dtype=NUMPY_DTYPES[self.spec.dtype],
            mode="c",
            shape=(stop - start, self.spec.dim),
        )
        return torch.from_numpy(mapped).view(TORCH_DTYPES[self.spec.dtype])

    def shards(self, kind: str = "gradients") -> Iterator[tuple[int, Tensor]]:
        """``(start row, array)`` for every shard in order."""
        for shard in range(self.spec.num_shards):
            yield self.spec.rows(shard)[0], self.shard_array(shard, kind)

    def read(self, kind: str = "gradients") -> Tensor:
        """The whole ``(N, d)`` array in memory (for small stores such as target sets)."""
        return torch.cat([array for _, array in self.shards(kind)])

    def moments(self) -> dict[str, Tensor]:
        """The per-layer moment sums and token counts, summed over shards (float64)."""
        total: dict[str, Tensor] = {}
        for shard in range(self.spec.num_shards):
            for key, value in load_file(str(self._verified_file(shard, "moments.safetensors"))).items():
                total[key] = total[key] + value if key in total else value
        return total

    def ids(self) -> list[Any]:
        """The example ids (the data's ``id`` field, else the row index), in row order."""
        return [i for shard in range(self.spec.num_shards) for i in self.shard_info(shard)["ids"]]

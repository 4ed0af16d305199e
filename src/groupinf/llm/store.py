"""Projected per-example gradients on disk: a ``groupinf.store`` directory of kind ``llm-gradients``.

Each shard holds the arrays ``gradients`` (projected ∇l_i with the data's labels) and, for the true Fisher,
``fisher`` (the same with labels drawn from the model), each ``(rows, d)`` in the store dtype, and the extra
file ``moments.safetensors``: per layer Σ_t (P_i x)(P_i x)ᵀ (``in:<layer>``) and Σ_t (P_o s)(P_o s)ᵀ
(``out:<layer>``), and the shard's ``tokens`` and ``examples`` (float64). A shard's ``.json`` adds its
example ids and token counts; the store's ``meta`` holds the Fisher kind, the LoGra layer specs, the source
(model, adapter, data, with digests) and the extraction settings.

Shard ``j`` holds examples ``[j·shard_size, (j+1)·shard_size)`` of the data file, in file order, whichever
process computed it, so stores made with any number of processes are identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save
from torch import Tensor

from groupinf.llm.projection import LayerSpec
from groupinf.store import Advice, ShardedStore, StoreLayout

KIND = "llm-gradients"
KINDS = ("gradients", "fisher")
MOMENTS = "moments.safetensors"
ADVICE = Advice(
    make="create one with `groupinf llm extract --out DIR`",
    rerun="rerun the same `groupinf llm extract` command",
    relocate="pass another --out",
    wider="use --dtype bfloat16 or float32",
)


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
        if not self.layers:
            raise ValueError("a store needs at least one layer")

    @property
    def dim(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The arrays of each shard: ``fisher`` only for the true Fisher."""
        return KINDS if self.fisher == "true" else KINDS[:1]

    @cached_property
    def layout(self) -> StoreLayout:
        """The core store's layout: ``meta`` holds the Fisher kind, the layers, the source and the settings
        (built once: ``rows`` and ``num_shards`` read it per shard)."""
        layers = [asdict(layer) for layer in self.layers]
        meta = {"fisher": self.fisher, "layers": layers, "source": self.source, "settings": self.settings}
        arrays = dict.fromkeys(self.kinds, self.dim)
        return StoreLayout(KIND, self.num_examples, self.shard_size, self.dtype, arrays, (MOMENTS,), meta)

    @classmethod
    def from_layout(cls, layout: StoreLayout) -> StoreSpec:
        meta = layout.meta
        layers = tuple(LayerSpec(**layer) for layer in meta["layers"])
        return cls(
            layout.num_rows, layout.shard_rows, layout.dtype, meta["fisher"], layers, meta["source"], meta["settings"]
        )

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards

    def rows(self, shard: int) -> tuple[int, int]:
        """``(start, stop)`` example indices of ``shard``."""
        return self.layout.rows(shard)


class GradientStore:
    """A store directory with its spec; see the module docstring."""

    def __init__(self, path: str | Path, spec: StoreSpec) -> None:
        self.spec = spec
        self.store = ShardedStore(path, spec.layout, ADVICE)

    @property
    def path(self) -> Path:
        return self.store.path

    @classmethod
    def prepare(cls, path: str | Path, spec: StoreSpec) -> GradientStore:
        """Create the store, or check that the one at ``path`` was started with the same spec."""
        ShardedStore.prepare(path, spec.layout, ADVICE)
        return cls(path, spec)

    @classmethod
    def open(cls, path: str | Path, complete: bool = True) -> GradientStore:
        """An existing store; with ``complete``, raises ValueError when shards are missing."""
        return cls(path, StoreSpec.from_layout(ShardedStore.open(path, KIND, ADVICE, complete).layout))

    def discard_partial_files(self) -> None:
        """Remove temporary files a killed writer left behind (call while no process is writing: ``extract``
        holds a lock on the store directory)."""
        self.store.discard_partial_files()

    def missing_shards(self) -> list[int]:
        return self.store.missing_shards()

    def write_shard(
        self,
        shard: int,
        arrays: dict[str, Tensor],
        moments: dict[str, Tensor],
        info: dict[str, Any],
    ) -> None:
        """Write shard ``shard``: ``arrays`` (``gradients`` and, for the true Fisher, ``fisher``, each
        ``(rows, d)``), ``moments`` (float64 tensors) and ``info`` (ids, token counts); the ``.json`` last."""
        data = save({key: value.detach().cpu().contiguous() for key, value in moments.items()})
        self.store.write_shard(shard, arrays, {MOMENTS: data}, info)

    def shard_info(self, shard: int) -> dict[str, Any]:
        return self.store.shard_info(shard)

    def _array(self, kind: str) -> str:
        """The array holding ``kind``: the Fisher's arrays are the data-label gradients for the empirical one."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return kind if kind in self.spec.kinds else "gradients"

    def shard_array(self, shard: int, kind: str = "gradients") -> Tensor:
        """Shard ``shard``'s ``(rows, d)`` array, memory-mapped (copy-on-write), in the store dtype.

        ``kind`` "fisher" gives the arrays the curvature is fitted on: the drawn-label gradients for the true
        Fisher, the data-label gradients for the empirical one.
        """
        return self.store.shard_array(shard, self._array(kind))

    def shards(self, kind: str = "gradients") -> Iterator[tuple[int, Tensor]]:
        """``(start row, array)`` for every shard in order."""
        return self.store.shards(self._array(kind))

    def read(self, kind: str = "gradients") -> Tensor:
        """The whole ``(N, d)`` array in memory (for small stores such as target sets)."""
        return self.store.read(self._array(kind))

    def moments(self) -> dict[str, Tensor]:
        """The per-layer moment sums and token counts, summed over shards (float64)."""
        total: dict[str, Tensor] = {}
        for shard in range(self.spec.num_shards):
            for key, value in load_file(str(self.store.verified_file(shard, MOMENTS))).items():
                total[key] = total[key] + value if key in total else value
        return total

    def ids(self) -> list[Any]:
        """The example ids (the data's ``id`` field, else the row index), in row order."""
        return [i for shard in range(self.spec.num_shards) for i in self.shard_info(shard)["ids"]]

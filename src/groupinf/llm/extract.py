"""Extraction: projected per-example gradients of a data file into a store, over one or many processes.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the processes join a process group (gloo on CPU, NCCL on GPU),
rank 0 creates or checks the store, every rank lists the unfinished shards and takes every
``world_size``-th of them. A shard's content depends only on its rows, never on the rank, so the store is
the one a single process would write. Within a shard, examples are batched in order of length (less
padding; at most ``batch_size`` examples and ``batch_tokens`` padded tokens per pass) and written back in
file order.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from groupinf.digests import file_digest
from groupinf.files import exclusive
from groupinf.llm.config import ExtractConfig, as_dict
from groupinf.llm.data import Encoded, collate, encode, load_records, naming_lines, pad_id
from groupinf.llm.models import (
    check_adapter,
    check_model,
    linear_layers,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_precision,
)
from groupinf.llm.projection import Projector
from groupinf.llm.store import GradientStore, StoreSpec


@dataclass
class Workers:
    """This process's place among the extraction processes (one process without ``torchrun``)."""

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def from_env(cls, device: str | None = None) -> Workers:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        chosen = resolve_device(device)
        if chosen.type == "cuda" and chosen.index is None:
            chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(chosen)
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        return cls(rank, world_size, chosen)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def describe_source(model: str, data: Path, adapter: str | Path | None) -> dict[str, Any]:
    """What the gradients are of: model, adapter (with a digest of its weights), data (with its digest),
    and ``train_size``, the number of examples ``θ*`` was trained on, from the warmup record beside the
    adapter when there is one."""
    source: dict[str, Any] = {"model": model, "data": Path(data).name, "data_sha256": file_digest(Path(data))}
    if adapter is not None:
        adapter = Path(adapter)
        weights = sorted(adapter.glob("adapter_model.*"))
        source["adapter"] = str(adapter)
        source["adapter_sha256"] = file_digest(weights[0]) if weights else None
        record = adapter.parent / "warmup.json"
        if record.is_file():
            source["train_size"] = json.loads(record.read_text())["train_size"]
    return source


@dataclass(frozen=True)
class Extraction:
    """The store, and the shards this process computed (its rank among ``world_size`` processes)."""

    store: GradientStore
    computed: list[int]
    rank: int
    world_size: int


def extract(
    model: str,
    data: str | Path,
    out: str | Path,
    config: ExtractConfig,
    adapter: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> Extraction:
    """Fill the store at ``out`` with the projected gradients of every example of ``data``.

    Finished shards are kept; an interrupted run resumes where it stopped. The first process holds a lock on
    ``out`` throughout, so a second extraction into the same directory stops at once instead of racing it.
    """
    check_model(model)
    if adapter is not None:
        check_adapter(adapter)
    workers = Workers.from_env(device)
    try:
        with ExitStack() as held:
            if workers.rank == 0:
                held.enter_context(exclusive(out, "extracting gradients (`groupinf llm extract`)"))
            return _extract(workers, model, Path(data), out, config, adapter, progress)
    finally:
        workers.close()


def _extract(
    workers: Workers,
    model: str,
    data: Path,
    out: str | Path,
    config: ExtractConfig,
    adapter: str | Path | None,
    progress: bool,
) -> Extraction:
    """The work of ``extract`` in one of its processes."""
    records = load_records(data)
    dtype = resolve_precision(config.precision, workers.device)
    network = load_model(model, dtype, workers.device, adapter)
    tokenizer = load_tokenizer(model)
    layers = linear_layers(network, config.layers)
    projector = Projector(network, layers, config.projection, config.r_out, config.r_in, config.seed, workers.device)
    spec = StoreSpec(
        num_examples=len(records),
        shard_size=config.shard_size,
        dtype=config.dtype,
        fisher=config.fisher,
        layers=tuple(projector.specs),
        source=describe_source(model, data, adapter),
        settings=as_dict(config),
    )
    if workers.rank == 0:
        GradientStore.prepare(out, spec).discard_partial_files()
    workers.barrier()
    store = GradientStore.prepare(out, spec)
    mine = store.missing_shards()[workers.rank :: workers.world_size]
    workers.barrier()
    padding = pad_id(tokenizer)
    for shard in tqdm(mine, desc=f"extract (rank {workers.rank})", disable=not progress or workers.rank != 0):
        start, stop = spec.rows(shard)
        rows = records.select(range(start, stop))
        with naming_lines(data):
            examples = encode(rows, tokenizer, config.template, config.max_length, range(start, stop))
        ids = rows["id"] if "id" in rows.column_names else [None] * len(examples)
        arrays, moments = compute_shard(projector, examples, start, config, padding, workers.device)
        info = {
            "ids": [start + i if v is None else v for i, v in enumerate(ids)],
            "tokens": [len(e.input_ids) for e in examples],
            "response_tokens": [e.num_response_tokens for e in examples],
        }
        store.write_shard(shard, arrays, moments, info)
    workers.barrier()
    return Extraction(store, mine, workers.rank, workers.world_size)


def length_batches(lengths: list[int], batch_size: int, batch_tokens: int | None = None) -> list[list[int]]:
    """Indices in order of length, cut into batches of at most ``batch_size`` examples and (when given) at
    most ``batch_tokens`` padded tokens (examples × the longest); an example longer than ``batch_tokens``
    gets a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        too_many = len(current) == batch_size
        too_long = batch_tokens is not None and (len(current) + 1) * lengths[index] > batch_tokens
        if current and (too_many or too_long):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def compute_shard(
    projector: Projector,
    examples: list[Encoded],
    start: int,
    config: ExtractConfig,
    padding: int,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The arrays (``gradients``, and ``fisher`` for the true Fisher) and moment sums of one shard."""
    rows, dim = len(examples), projector.dim
    arrays = {"gradients": torch.empty(rows, dim)}
    if config.fisher == "true":
        arrays["fisher"] = torch.empty(rows, dim)
    moments: dict[str, torch.Tensor] = {}
    for spec in projector.specs:
        moments[f"in:{spec.name}"] = torch.zeros(spec.r_in, spec.r_in, dtype=torch.float64, device=device)
        moments[f"out:{spec.name}"] = torch.zeros(spec.r_out, spec.r_out, dtype=torch.float64, device=device)
    tokens = 0
    lengths = [len(e.input_ids) for e in examples]
    for chosen in length_batches(lengths, config.batch_size, config.batch_tokens):
        batch = collate([examples[i] for i in chosen], padding, device)
        result = projector.compute(batch, config.fisher, [start + i for i in chosen])
        index = torch.tensor(chosen)
        arrays["gradients"][index] = result.gradients.float().cpu()
        if result.fisher is not None:
            arrays["fisher"][index] = result.fisher.float().cpu()
        for name, value in result.input_moments.items():
            moments[f"in:{name}"] += value
        for name, value in result.output_moments.items():
            moments[f"out:{name}"] += value
        tokens += result.tokens
    moments["tokens"] = torch.tensor(float(tokens), dtype=torch.float64)
    moments["examples"] = torch.tensor(float(rows), dtype=torch.float64)
    return arrays, moments

"""Shared pieces of the LLM tests: a tiny Llama and synthetic data built locally (nothing is downloaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import groupinf
from groupinf.llm.config import ExtractConfig
from groupinf.llm.projection import LayerSpec
from groupinf.llm.store import GradientStore, StoreSpec
from groupinf.llm.tiny import save_tiny_model, synthetic_records, write_jsonl

SRC = Path(groupinf.__file__).resolve().parents[1]

#: small extraction settings: float32 store (exact comparisons), several shards, several batches per shard
TINY_EXTRACT = ExtractConfig(r_in=2, r_out=3, batch_size=4, shard_size=8, dtype="float32", max_length=48)


@dataclass(frozen=True)
class World:
    root: Path
    model: Path
    pool: Path
    targets: dict[str, Path]


def make_world(root: Path, pool_size: int = 20, target_sizes: dict[str, int] | None = None) -> World:
    """A tiny Llama (with its tokenizer) saved under ``root/model``, a pool and target sets as JSONL."""
    records = synthetic_records(pool_size, seed=0)
    pool = write_jsonl(root / "pool.jsonl", records)
    targets = {
        name: write_jsonl(root / f"{name}.jsonl", synthetic_records(size, seed=10 + i))
        for i, (name, size) in enumerate((target_sizes or {"math": 5}).items())
    }
    model = save_tiny_model(root / "model", records)
    return World(root, model, pool, targets)


def subprocess_env(cache: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: this checkout's sources, offline, one thread, a private cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(cache), OMP_NUM_THREADS="1")
    return env


def run_module(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python args...`` in a subprocess; fails the test with its output when it exits non-zero."""
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def extract_args(world: World, data: Path, out: Path, config: ExtractConfig, adapter: Path | None = None) -> list[str]:
    """``llm extract`` arguments for ``config`` (every setting spelled out)."""
    args = ["llm", "extract", "--model", str(world.model), "--data", str(data), "--out", str(out)]
    if adapter is not None:
        args += ["--adapter", str(adapter)]
    for name, value in vars(config).items():
        if value is not None:
            args += ["--" + name.replace("_", "-"), ",".join(value) if isinstance(value, tuple) else str(value)]
    return args


def random_adapter(model: Path, out: Path, rank: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")):
    """A LoRA adapter with random (non-zero) A and B saved to ``out``, as if after some training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora).save_pretrained(out)
    return out


#: "a" and "c" share a shape (one group, non-adjacent columns), "b" is the other group
LAYERS = (
    LayerSpec("a", d_out=8, d_in=8, r_out=2, r_in=3),
    LayerSpec("b", d_out=8, d_in=8, r_out=3, r_in=2),
    LayerSpec("c", d_out=8, d_in=8, r_out=2, r_in=3),
)

SETTINGS = {"projection": "gaussian", "seed": 0}


def synthetic_store(path, rows: int, seed: int, fisher: str = "true", source=None) -> GradientStore:
    """A store of random projected gradients and moment sums (no model), float32, shards of 16."""
    gen = torch.Generator().manual_seed(seed)
    spec = StoreSpec(rows, 16, "float32", fisher, LAYERS, source or {"model": "m"}, SETTINGS)
    store = GradientStore.prepare(path, spec)
    for shard in range(spec.num_shards):
        start, stop = spec.rows(shard)
        kinds = ("gradients", "fisher") if fisher == "true" else ("gradients",)
        arrays = {kind: torch.randn(stop - start, spec.dim, generator=gen) for kind in kinds}
        tokens = 5 * (stop - start)
        moments = {"tokens": torch.tensor(float(tokens), dtype=torch.float64)}
        moments["examples"] = torch.tensor(float(stop - start), dtype=torch.float64)
        for layer in LAYERS:
            x = torch.randn(tokens, layer.r_in, generator=gen, dtype=torch.float64)
            s = torch.randn(tokens, layer.r_out, generator=gen, dtype=torch.float64)
            moments[f"in:{layer.name}"], moments[f"out:{layer.name}"] = x.T @ x, s.T @ s
        store.write_shard(shard, arrays, moments, {"ids": [f"p{i}" for i in range(start, stop)]})
    return store

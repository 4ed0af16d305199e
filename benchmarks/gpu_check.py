"""The LLM pipeline on a GPU: warmup -> extract -> select, in bf16, on a random-initialised ~100M-parameter Llama.

    make gpu-check                           # = python -m benchmarks.gpu_check
    python -m benchmarks.gpu_check --tiny    # the same code path on the CPU with a tiny model (fp32), in seconds

Builds a Llama (``--hidden``, ``--layers``, ``--intermediate``; 113 M parameters by default) and a byte-level
tokenizer locally (nothing is downloaded), ``--pool`` synthetic instruction examples and a ``--target`` set,
then runs the pipeline's own functions: ``warmup`` (LoRA, one epoch on ``--fraction`` of the pool), ``extract``
of the pool and of the target (LoGra ``--r × --r`` per LoRA layer, true Fisher, bfloat16 store) and
``run_selection`` (EK-FAC, features, greedy/top-k/random) on the device. Prints one line per stage with its
throughput and writes ``--out`` (JSON). Without CUDA (and without ``--tiny``) it prints one line saying so and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def parameter_count(model: str) -> int:
    """Parameters of the saved model, counted on the meta device (nothing allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())


def run(args: argparse.Namespace, device: str, precision: str) -> dict[str, Any]:
    from groupinf.llm.config import ExtractConfig, SelectConfig, WarmupConfig
    from groupinf.llm.extract import extract
    from groupinf.llm.select import run_selection
    from groupinf.llm.tiny import save_tiny_model, synthetic_records, write_jsonl
    from groupinf.llm.warmup import warmup, warmup_indices

    dtype = "bfloat16" if precision == "bf16" else "float32"
    report: dict[str, Any] = {
        "device": device,
        "precision": precision,
        "settings": {**vars(args), "out": str(args.out)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records = synthetic_records(args.pool + args.target, seed=0)
        pool, target = (
            write_jsonl(root / "pool.jsonl", records[: args.pool]),
            write_jsonl(root / "target.jsonl", records[args.pool :]),
        )
        sizes = {
            "hidden_size": args.hidden,
            "num_layers": args.layers,
            "num_heads": args.hidden // 64,
            "num_kv_heads": args.hidden // 64,
            "intermediate_size": args.intermediate,
        }
        model = str(save_tiny_model(root / "model", records, **sizes))
        report["parameters"] = parameter_count(model)
        common = {"max_length": args.max_length, "template": "tulu", "precision": precision}
        warm = WarmupConfig(
            fraction=args.fraction, lora_rank=16, lora_alpha=32, lora_dropout=0.0, learning_rate=1e-4,
            epochs=1, batch_size=args.batch_size, micro_batch_size=args.batch_size, **common,
        )  # fmt: skip
        config = ExtractConfig(r_in=args.r, r_out=args.r, batch_size=args.batch_size, dtype=dtype, **common)
        stages: dict[str, dict[str, float]] = {}

        def timed(name: str, examples: int, work) -> Any:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = work()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            stages[name] = {"s": seconds, "examples": examples, "examples_per_s": examples / seconds}
            print(f"gpu-check: {name:14s} {seconds:8.2f} s  {examples / seconds:10.1f} examples/s", flush=True)
            return result

        print(f"gpu-check: Llama {report['parameters'] / 1e6:.1f} M parameters, {precision}, {device}", flush=True)
        trained = len(warmup_indices(args.pool, warm.fraction, warm.seed))
        record = timed("warmup", trained, lambda: warmup(model, pool, root / "warm", warm, device, progress=False))
        adapter = root / "warm" / "adapter"
        timed("extract pool", args.pool, lambda: extract(model, pool, root / "pool", config, adapter, device, False))
        timed("extract target", args.target, lambda: extract(model, target, root / "t", config, adapter, device, False))
        select = SelectConfig(curvature="ekfac", k=args.k)
        run = timed(
            "select",
            args.pool,
            lambda: run_selection(root / "pool", {"t": root / "t"}, root / "s", select, None, device),
        )
        report |= {"stages": stages, "select_seconds": run["seconds"], "warmup_train_size": record["train_size"]}
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(device)
        report["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU in fp32: the same code path")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--pool", type=int, default=4096)
    parser.add_argument("--target", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/gpu_check.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.hidden, args.layers, args.intermediate, args.pool, args.target, args.k = 64, 2, 128, 64, 8, 8
        args.fraction, args.batch_size, args.max_length, args.r = 0.5, 8, 64, 4
        report = run(args, "cpu", "fp32")
    elif not torch.cuda.is_available():
        print(f"gpu-check: skipped, no CUDA device (torch {torch.__version__})")
        return 0
    else:
        report = run(args, "cuda", "bf16")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu-check: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

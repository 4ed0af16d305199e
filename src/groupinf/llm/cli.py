"""``groupinf llm warmup | extract | select``: the instruction-tuning selection pipeline (paper §5.2).

This module only defines options; the commands import torch-heavy modules (transformers, peft,
datasets) when they run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from groupinf.checks import check_device, option
from groupinf.llm.config import ExtractConfig, SelectConfig, WarmupConfig, add_options, load_config

MODEL_HELP = "a local Hugging Face model directory, or any name AutoModelForCausalLM can load on this machine"
CONFIG_HELP = "a JSON config file with warmup/extract/select sections (see configs/)"


def parse_target(text: str) -> tuple[str, Path]:
    """``NAME=STORE`` -> ``(NAME, Path(STORE))``."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAME=STORE (NAME without '/'), got {text!r}")
    return name, Path(path)


def add_llm(commands: argparse._SubParsersAction) -> None:
    llm = commands.add_parser(
        "llm",
        help="instruction-tuning data selection for causal LMs: warmup, extract, select (paper §5.2)",
        description="LoRA warmup on a random fraction of the pool, LoGra-projected per-example gradients "
        "(torchrun-parallel, resumable), then greedy F+I, top-k F and random selection per target.",
    )
    steps = llm.add_subparsers(dest="llm_command", required=True)

    warm = steps.add_parser("warmup", help="LoRA fine-tuning on a random fraction of the pool (θ*)")
    warm.add_argument("--model", required=True, help=MODEL_HELP)
    warm.add_argument("--data", type=Path, required=True, help="the pool, a JSONL file")
    warm.add_argument("--out", type=Path, required=True, help="output directory (adapter/, optimizer.pt, warmup.json)")
    warm.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    warm.add_argument(
        "--device", type=option(check_device), default=None, help="torch device (default: cuda if available, else cpu)"
    )
    add_options(warm, WarmupConfig)

    ext = steps.add_parser(
        "extract",
        help="projected per-example gradients into a resumable store (run under torchrun to split the work)",
        description="Writes DIR/store.json and DIR/shards/. Rerunning the same command resumes an interrupted "
        "extraction. `torchrun --standalone --nproc_per_node N -m groupinf.cli llm extract ...` splits the "
        "shards across N processes (gloo on CPU, NCCL on GPU) and writes the same store.",
    )
    ext.add_argument("--model", required=True, help=MODEL_HELP)
    ext.add_argument("--adapter", type=Path, default=None, help="LoRA adapter directory (warmup's DIR/adapter)")
    ext.add_argument("--data", type=Path, required=True, help="a JSONL file: the pool or a target set")
    ext.add_argument("--out", type=Path, required=True, help="store directory")
    ext.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    ext.add_argument(
        "--device",
        type=option(check_device),
        default=None,
        help="torch device (default: cuda:LOCAL_RANK if available, else cpu)",
    )
    add_options(ext, ExtractConfig)

    sel = steps.add_parser("select", help="curvature, shifts and greedy F+I / top-k F / random per target")
    sel.add_argument("--pool", type=Path, required=True, help="the pool's gradient store")
    sel.add_argument(
        "--target", type=parse_target, action="append", default=[], help="NAME=STORE, a target set's store (repeat)"
    )
    sel.add_argument("--n", type=int, default=None, help="examples θ* was trained on (default: from warmup.json)")
    sel.add_argument("--out", type=Path, required=True, help="output directory")
    sel.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    sel.add_argument(
        "--device", type=option(check_device), default="cpu", help="torch device for the curvature and the selection"
    )
    add_options(sel, SelectConfig)

    exp = steps.add_parser(
        "experiment",
        help="warmup, features, every selection method, fine-tuning and evaluation (resumable stage by stage)",
        description="Runs the whole §5.2 experiment from one config file (see configs/llm-toy.json) and writes "
        "OUT/results.json, OUT/results.md and OUT/results.png; rerunning skips the finished stages whose settings "
        "did not change (recorded in OUT/stages/).",
    )
    exp.add_argument("--config", type=Path, required=True, help="experiment config (JSON)")
    exp.add_argument("--out", type=Path, required=True, help="output directory")
    exp.add_argument(
        "--recompute",
        action="store_true",
        help="recompute the stages of OUT whose settings or inputs changed and keep the others (without it, such a "
        "rerun stops and names the settings that differ)",
    )


def run_llm(args: argparse.Namespace) -> None:
    if args.llm_command == "warmup":
        from groupinf.llm.warmup import warmup

        record = warmup(args.model, args.data, args.out, load_config("warmup", args.config, args), args.device)
        losses = ", ".join(f"{v:.4g}" for v in record["epoch_losses"])
        print(f"trained on {record['train_size']} of {record['pool_size']} examples; loss per epoch: {losses}")
        print(f"wrote {args.out / 'adapter'}, {args.out / 'optimizer.pt'} and {args.out / 'warmup.json'}")
    elif args.llm_command == "extract":
        from groupinf.llm.extract import extract

        config = load_config("extract", args.config, args)
        done = extract(args.model, args.data, args.out, config, args.adapter, args.device)
        spec = done.store.spec
        print(f"rank {done.rank} of {done.world_size}: computed shards {done.computed}")
        if done.rank == 0:
            print(f"{spec.num_examples} examples, d = {spec.dim}, {spec.num_shards} {spec.dtype} shards in {args.out}")
    elif args.llm_command == "experiment":
        from groupinf.llm.experiment import run_experiment
        from groupinf.llm.report import markdown

        document = run_experiment(args.config, args.out, args.recompute)
        print(markdown(document))
        print(f"wrote {args.out / 'results.json'}, results.md and results.png")
    else:
        from groupinf.llm.select import run_selection

        names = [name for name, _ in args.target]
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be distinct, got {names}")
        config = load_config("select", args.config, args)
        run = run_selection(args.pool, dict(args.target), args.out, config, args.n, args.device)
        print(json.dumps({k: run[k] for k in ("pool_size", "n", "k", "damping", "seconds")}, indent=1))
        print(f"wrote {args.out}/<target>/selection.json and features.safetensors for {', '.join(run['selections'])}")

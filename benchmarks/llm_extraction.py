"""Projected per-example gradient extraction on a tiny local Llama: batched hooks vs a batch-size-1 loop.

Both compute, for every example, the LoGra projection ``P_o G P_iᵀ`` of the full weight gradient ``G`` of
each LoRA Linear layer (data labels): the loop runs autograd on one example at a time and projects the
LoRA weight gradients; the batched path is the extraction's own ``compute_shard`` (hooks, one einsum per
layer, examples batched by length). Side by side, on the same examples, with the results compared.
Also reported: the true Fisher's second backward pass and a plain LoRA training step (forward + backward
of the same batches) for reference. Nothing is downloaded.

Then the selection side per pool example, on a store of random projected gradients shaped like the paper's
setting (``--select-layers`` projected layers of ``r×r``; Llama-3.1-8B with LoRA on 7 modules has 448 LoRA
Linear layers): its size on disk, fitting EK-FAC (moments merge, eigenbases, one pass for the eigenvalues)
and the features of one target (``1 + m`` solved vectors, one pass over the pool).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks._timing import best_of, interleaved
from groupinf.curvature import fit_curvature
from groupinf.llm.config import ExtractConfig
from groupinf.llm.curvature import StoredGradients
from groupinf.llm.data import collate, encode, pad_id
from groupinf.llm.extract import compute_shard
from groupinf.llm.models import linear_layers, load_model, load_tokenizer
from groupinf.llm.objective import response_nll
from groupinf.llm.projection import LayerSpec, Projector
from groupinf.llm.select import load_target, pool_features
from groupinf.llm.store import GradientStore, StoreSpec
from groupinf.llm.tiny import save_tiny_model, synthetic_records

CPU = torch.device("cpu")


def build(root: Path, args: argparse.Namespace):
    """The tiny model with a random LoRA adapter (float32) and the encoded examples."""
    from peft import LoraConfig, get_peft_model

    records = synthetic_records(args.examples, seed=0)
    sizes = {"hidden_size": args.hidden, "num_layers": args.layers, "intermediate_size": 2 * args.hidden}
    model_dir = save_tiny_model(root / "model", records, **sizes)
    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets, init_lora_weights=False)
    get_peft_model(load_model(str(model_dir), torch.float32, CPU), lora).save_pretrained(root / "adapter")
    model = load_model(str(model_dir), torch.float32, CPU, root / "adapter")
    tokenizer = load_tokenizer(str(model_dir))
    return model, tokenizer, encode(records, tokenizer, "tulu", args.max_length)


def loop_gradients(model, projector: Projector, examples, padding: int) -> torch.Tensor:
    """Batch-size-1 autograd: full LoRA weight gradients of one example at a time, then projected."""
    weights = [projector.layers[s.name].weight for s in projector.specs]
    out = torch.empty(len(examples), projector.dim)
    for w in weights:
        w.requires_grad_(True)
    for row, example in enumerate(examples):
        batch = collate([example], padding)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        grads = torch.autograd.grad(response_nll(logits, batch["labels"]).sum(), weights)
        pairs = zip(projector.specs, grads, strict=True)
        out[row] = torch.cat([(projector.p_out[s.name] @ g @ projector.p_in[s.name].T).flatten() for s, g in pairs])
    for w in weights:
        w.requires_grad_(False)
    return out


def training_steps(model, projector: Projector, examples, padding: int, batch_size: int) -> None:
    """A plain LoRA training pass over the same batches: forward, backward to the LoRA weights."""
    weights = [projector.layers[s.name].weight for s in projector.specs]
    for w in weights:
        w.requires_grad_(True)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for first in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[first : first + batch_size]], padding)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        torch.autograd.grad(response_nll(logits, batch["labels"]).sum(), weights)
    for w in weights:
        w.requires_grad_(False)


def random_store(path: Path, rows: int, layers: tuple[LayerSpec, ...], seed: int) -> GradientStore:
    """A true-Fisher bfloat16 store of random projected gradients and moment sums, shards of 1024."""
    gen = torch.Generator().manual_seed(seed)
    spec = StoreSpec(rows, 1024, "bfloat16", "true", layers, {"model": "random"}, {})
    store = GradientStore.prepare(path, spec)
    for shard in range(spec.num_shards):
        start, stop = spec.rows(shard)
        arrays = {kind: torch.randn(stop - start, spec.dim, generator=gen) for kind in ("gradients", "fisher")}
        moments = {"tokens": torch.tensor(100.0 * (stop - start)), "examples": torch.tensor(float(stop - start))}
        for layer in layers:
            moments[f"in:{layer.name}"] = torch.eye(layer.r_in, dtype=torch.float64) * (1 + torch.rand(1).item())
            moments[f"out:{layer.name}"] = torch.eye(layer.r_out, dtype=torch.float64) * (1 + torch.rand(1).item())
        store.write_shard(shard, arrays, {k: v.double() for k, v in moments.items()}, {"ids": list(range(start, stop))})
    return store


def selection_costs(args: argparse.Namespace) -> None:
    layers = tuple(LayerSpec(f"layer{i}", 64, 64, args.r, args.r) for i in range(args.select_layers))
    with tempfile.TemporaryDirectory() as tmp:
        pool = random_store(Path(tmp) / "pool", args.select_pool, layers, seed=0)
        target = load_target("t", random_store(Path(tmp) / "target", args.select_target, layers, seed=1))
        fit_s, curvature = best_of(args.repeats, lambda: fit_curvature("ekfac", StoredGradients(pool), "heuristic"))
        features_s, _ = best_of(args.repeats, lambda: pool_features(pool, curvature, [target], n=1000))
        arrays = sum(p.stat().st_size for p in pool.path.rglob("*.bin"))
        everything = sum(p.stat().st_size for p in pool.path.rglob("*") if p.is_file())
    dim, rows, vectors = pool.spec.dim, args.select_pool, 1 + args.select_target
    print(
        f"selection side: {args.select_layers} projected layers of {args.r}x{args.r} (d = {dim}), "
        f"{rows} pool examples (bfloat16 store), one target of {args.select_target} examples"
    )
    print(f"store on disk: {arrays / rows:.0f} bytes per example in arrays, {everything / rows:.0f} with metadata")
    print(f"EK-FAC fit: {fit_s:.3f} s = {fit_s / rows * 1e6:.1f} us per pool example")
    print(
        f"features of one target ({vectors} vectors): {features_s:.3f} s = {features_s / rows * 1e6:.1f} us per "
        f"pool example = {features_s / (rows * dim * vectors) * 1e9:.3f} ns per (example x d x vector)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--r", type=int, default=4, help="projection r_in = r_out per LoRA Linear")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--select-layers", type=int, default=448, help="projected layers of the selection store")
    parser.add_argument("--select-pool", type=int, default=8192, help="pool examples of the selection store")
    parser.add_argument("--select-target", type=int, default=64, help="target examples (rank of H_f)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, examples = build(Path(tmp), args)
    padding = pad_id(tokenizer)
    projector = Projector(model, linear_layers(model), "gaussian", args.r, args.r, seed=0)
    config = ExtractConfig(r_in=args.r, r_out=args.r, batch_size=args.batch_size, fisher="empirical")
    tokens = sum(len(e.input_ids) for e in examples)
    print(
        f"tiny Llama: hidden {args.hidden}, {args.layers} blocks, LoRA r={args.rank} on 7 modules "
        f"({len(projector.specs)} Linear layers), projection {args.r}x{args.r} (d = {projector.dim}); "
        f"{len(examples)} examples, {tokens / len(examples):.1f} tokens each; float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    timed = interleaved(
        args.repeats,
        {
            "loop": lambda: loop_gradients(model, projector, examples, padding),
            "batched": lambda: compute_shard(projector, examples, 0, config, padding, CPU),
            "true": lambda: compute_shard(projector, examples, 0, replace(config, fisher="true"), padding, CPU),
            "train": lambda: training_steps(model, projector, examples, padding, args.batch_size),
        },
    )
    (loop_s, looped), (batched_s, (arrays, _)) = timed["loop"], timed["batched"]
    true_s, train_s = timed["true"][0], timed["train"][0]
    error = ((arrays["gradients"] - looped).abs().max() / looped.abs().max()).item()
    per = 1e3 / len(examples)
    print(f"{'path':<52} {'s':>7} {'ms/example':>11} {'examples/s':>11}")
    rows = [
        ("batch-size-1 autograd loop", loop_s),
        (f"batched hooks, batch {args.batch_size} (empirical Fisher)", batched_s),
        (f"batched hooks, batch {args.batch_size} (true Fisher: 2 backward)", true_s),
        (f"plain LoRA fwd+bwd, batch {args.batch_size} (reference)", train_s),
    ]
    for name, seconds in rows:
        print(f"{name:<52} {seconds:>7.3f} {seconds * per:>11.3f} {len(examples) / seconds:>11.1f}")
    print(f"speed-up of the batched extraction over the loop: {loop_s / batched_s:.1f}x")
    print(f"batched extraction / plain training step: {batched_s / train_s:.2f} (true Fisher {true_s / train_s:.2f})")
    print(f"largest difference between the two results, relative to the largest entry: {error:.1e}")
    selection_costs(args)


if __name__ == "__main__":
    main()

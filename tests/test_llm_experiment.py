"""The toy world and the end-to-end experiment command on a miniature configuration."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from groupinf.cli import main
from groupinf.llm.experiment import METHODS, ExperimentConfig, load_plan, resolve_world, skill_entropy
from groupinf.llm.toy import TARGETS, ToyConfig, pool_records, target_sets

MINI = {
    "toy": {"pool_size": 50, "dev_size": 3, "eval_size": 3, "pretrain_sentences": 50, "pretrain_steps": 3},
    "warmup": {
        "fraction": 0.2,
        "lora_rank": 2,
        "lora_alpha": 4,
        "lora_dropout": 0.0,
        "learning_rate": 1e-2,
        "epochs": 1,
        "batch_size": 5,
        "micro_batch_size": 5,
        "max_length": 96,
        "template": "tulu",
        "precision": "fp32",
    },
    "extract": {"r_in": 2, "r_out": 2, "shard_size": 32, "dtype": "float32", "max_length": 96, "template": "tulu"},
    "select": {"k": 4},
    "experiment": {"seeds": [3], "finetune": {"epochs": 1}, "less_dim": 8, "max_new_tokens": 4, "threads": 1},
}


pytestmark = pytest.mark.usefixtures("private_datasets_cache")


def test_toy_pool_has_skills_duplicates_and_mislabels():
    config = ToyConfig(pool_size=400, duplicate_fraction=0.25, mislabel_fraction=0.2)
    pool = pool_records(config)
    assert len(pool) == 400 and len({r["id"] for r in pool}) == 400
    assert sum("duplicate_of" in r for r in pool) == 100
    assert len({r["duplicate_of"] for r in pool if "duplicate_of" in r}) <= 6
    skills = Counter(r["skill"] for r in pool if "duplicate_of" not in r)
    assert set(skills) == {"arithmetic", "lookup", "classify", "string", "count"}
    wrong = [r for r in pool if r.get("mislabelled") and "duplicate_of" not in r]
    assert 0.1 < len(wrong) / (3 * 60) < 0.3 and all(r["skill"] not in ("string", "count") for r in wrong)
    for r in wrong:
        if r["skill"] == "arithmetic":
            a, b = (int(w) for w in r["prompt"].split() if w.isdigit())
            assert r["completion"] != f"{a} + {b} = {a + b}. The answer is {a + b}."
    for name in TARGETS:
        dev, held = target_sets(name, config)
        assert len(dev) == config.dev_size and len(held) == config.eval_size
        assert not {r["prompt"] for r in dev} & {r["prompt"] for r in held}


def test_skill_entropy():
    assert skill_entropy(["a", "a"]) == 0.0
    assert skill_entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)


def test_bad_experiment_settings(tmp_path):
    with pytest.raises(ValueError, match="methods must be"):
        ExperimentConfig(methods=("F+I", "BM25"))
    with pytest.raises(ValueError, match="LoRA"):
        ExperimentConfig(finetune={"lora_rank": 8})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"experiment": {"model": "m"}}))
    with pytest.raises(ValueError, match="needs model, pool and targets"):
        load_plan(path)
    path.write_text(json.dumps({"experiment": {"model": "m", "pool": "p", "targets": {"t": {"type": "essay"}}}}))
    with pytest.raises(ValueError, match="unknown task type 'essay'"):
        resolve_world(load_plan(path), tmp_path)
    with pytest.raises(FileNotFoundError, match="no config file"):
        load_plan(tmp_path / "missing.json")


@pytest.mark.slow
def test_experiment_runs_every_method_and_resumes(tmp_path, capsys):
    config = tmp_path / "mini.json"
    config.write_text(json.dumps(MINI))
    out = tmp_path / "run"
    assert main(["llm", "experiment", "--config", str(config), "--out", str(out)]) in (0, None)
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == set(METHODS)
    for row in results.values():
        assert set(row) == set(TARGETS)
        for cell in row.values():
            assert set(cell["seeds"]) == {"3"} and 0 <= cell["mean"] <= 100
            assert sum(cell["skills"].values()) == 4
    chosen = json.loads((out / "selections.json").read_text())
    pool = [json.loads(line) for line in (out / "world" / "pool.jsonl").read_text().splitlines()]
    for label, row in results.items():
        for name, cell in row.items():
            picked = [pool[i] for i in chosen[label][name]]
            assert cell["duplicates"] == sum("duplicate_of" in r for r in picked)
            assert cell["mislabelled"] == sum("mislabelled" in r for r in picked)
    record = json.loads((out / "finetune" / "less" / "math" / "seed3" / "warmup.json").read_text())
    assert record["indices"] == sorted(chosen["LESS"]["math"]) and record["settings"]["seed"] == 3
    table = (out / "results.md").read_text()
    assert all(f"| {label} |" in table for label in METHODS)
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun recomputes nothing: every stage's output is kept as it was
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name != "results.json"}
    os.remove(out / "eval" / "random" / "lookup_qa" / "seed3.json")
    assert main(["llm", "experiment", "--config", str(config), "--out", str(out)]) in (0, None)
    changed = [p for p, t in stamps.items() if not p.exists() or p.stat().st_mtime_ns != t]
    assert changed == [out / "eval" / "random" / "lookup_qa" / "seed3.json"]


@pytest.mark.slow
def test_a_rerun_with_other_settings_stops_or_recomputes_only_the_changed_stages(tmp_path, capsys):
    config = tmp_path / "mini.json"
    mini = {**MINI, "experiment": {**MINI["experiment"], "methods": ["F+I", "Random", "Embedding"]}}
    config.write_text(json.dumps(mini))
    out = tmp_path / "run"
    args = ["llm", "experiment", "--config", str(config), "--out", str(out)]
    assert main(args) == 0

    def stamps() -> dict:
        return {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    def changed(before: dict) -> set:
        after = stamps()
        return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}

    def redone(before: dict) -> set:
        """The stages (and their records) whose files changed since ``before``, and the results files."""
        paths = [p.with_suffix("").parts if p.parts[0] == "stages" else p.parts for p in changed(before)]
        return {"/".join(parts[:2]) if parts[0] == "stages" else parts[0] for parts in paths}

    first = stamps()
    config.write_text(json.dumps({**mini, "select": {"k": 2}}))
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("groupinf: error: ") and "select.k: 4 -> 2" in error and "--recompute" in error
    assert changed(first) == set()  # stopped before touching anything

    assert main([*args, "--recompute"]) == 0
    chosen = json.loads((out / "selections.json").read_text())
    assert all(len(indices) == 2 for row in chosen.values() for indices in row.values())
    assert json.loads((out / "results.json").read_text())["k"] == 2
    results = {"results.json", "results.md", "results.png"}
    stages = {"select", "baselines", "selections", "finetune", "eval"}
    # the world, the warmup and the gradient stores are kept
    assert redone(first) == stages - {"selections"} | {"selections.json"} | {f"stages/{s}" for s in stages} | results

    second = stamps()
    fewer_tokens = {**mini["experiment"], "max_new_tokens": 3}
    config.write_text(json.dumps({**mini, "select": {"k": 2}, "experiment": fewer_tokens}))
    assert main([*args, "--recompute"]) == 0
    assert redone(second) == {"eval", "stages/eval"} | results

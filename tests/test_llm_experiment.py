"""The toy world and the end-to-end experiment command on a miniature configuration."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch

from groupinf.cli import main
from groupinf.features import SelectionFeatures, select_from_features
from groupinf.llm.experiment import METHODS, ExperimentConfig, load_plan, picks, resolve_world
from groupinf.llm.report import BOUNDS, VAL_CHOSEN, feature_profile, skill_entropy
from groupinf.llm.toy import CAPITAL, CLASSES, ON_TARGET, SKILLS, TARGETS, ToyConfig, pool_records, target_sets
from groupinf.selection import InteractionFactors

MINI = {
    "toy": {
        "pool_size": 50,
        "dev_size": 3,
        "val_size": 3,
        "eval_size": 3,
        "pretrain_documents": 50,
        "pretrain_steps": 3,
        "vocab_size": 400,
        "hidden_size": 16,
        "intermediate_size": 32,
    },
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
    "experiment": {"seeds": [3, 4], "finetune": {"epochs": 1}, "less_dim": 8, "max_new_tokens": 4, "threads": 1},
}


pytestmark = pytest.mark.usefixtures("private_datasets_cache")


def test_toy_pool_has_skills_duplicates_and_mislabels():
    config = ToyConfig(pool_size=700, duplicate_fraction=0.2, mislabel_fraction=0.2)
    pool = pool_records(config)
    assert len(pool) == 700 and len({r["id"] for r in pool}) == 700
    copies = [r for r in pool if "duplicate_of" in r]
    assert len(copies) == 140
    by_prompt = {r["prompt"]: r for r in pool}
    for copy in copies:  # a near-duplicate repeats a correct on-target example with a suffix
        source = by_prompt[copy["duplicate_of"]]
        assert copy["prompt"].startswith(source["prompt"]) and copy["completion"] == source["completion"]
        assert source["skill"] in ON_TARGET and "mislabelled" not in source
    assert len({r["duplicate_of"] for r in copies}) == 2 * len(ON_TARGET)
    skills = Counter(r["skill"] for r in pool if "duplicate_of" not in r)
    assert set(skills) == set(SKILLS) and max(skills.values()) - min(skills.values()) <= 1
    wrong = [r for r in pool if r.get("mislabelled") and "duplicate_of" not in r]
    on_target = sum(skills[s] for s in ON_TARGET)
    assert 0.1 < len(wrong) / on_target < 0.3 and all(r["skill"] in ON_TARGET for r in wrong)
    for r in wrong:
        if r["skill"] == "arithmetic":
            left, right = r["completion"].split(" = ")
            assert sum(map(int, left.split(" + "))) != int(right)
        elif r["skill"] == "capital":
            assert r["completion"] != CAPITAL[r["prompt"].split()[-1].rstrip("?.")]
        else:
            assert r["completion"] not in [
                kind for kind, words in CLASSES.items() if set(words) & set(r["prompt"].split())
            ]
    for name in TARGETS:
        sets = target_sets(name, config)
        assert {split: len(records) for split, records in sets.items()} == {
            "dev": config.dev_size,
            "val": config.val_size,
            "eval": config.eval_size,
        }
        prompts = [{r["prompt"] for r in records} for records in sets.values()]
        assert sum(map(len, prompts)) == len(set().union(*prompts))  # no prompt in two sets


def test_skill_entropy():
    assert skill_entropy(["a", "a"]) == 0.0
    assert skill_entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)


def test_bad_experiment_settings(tmp_path):
    with pytest.raises(ValueError, match="methods must be"):
        ExperimentConfig(methods=("F+I", "BM25"))
    with pytest.raises(ValueError, match="LoRA"):
        ExperimentConfig(finetune={"lora_rank": 8})
    with pytest.raises(ValueError, match="add F\\+I to methods"):
        ExperimentConfig(methods=("Random",), scale_study=(1.0,))
    with pytest.raises(ValueError, match="interaction scale"):
        ExperimentConfig(scale_study=(0.0,))
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"experiment": {"model": "m"}}))
    with pytest.raises(ValueError, match="needs model, pool and targets"):
        load_plan(path)
    path.write_text(json.dumps({"experiment": {"model": "m", "pool": "p", "targets": {"t": {"type": "essay"}}}}))
    with pytest.raises(ValueError, match="unknown task type 'essay'"):
        resolve_world(load_plan(path), tmp_path)
    with pytest.raises(FileNotFoundError, match="no config file"):
        load_plan(tmp_path / "missing.json")


def test_feature_profile_matches_a_per_candidate_count():
    generator = torch.Generator().manual_seed(0)
    first_order = torch.randn(30, generator=generator, dtype=torch.float64)
    left, right = (torch.randn(30, 5, generator=generator, dtype=torch.float64) for _ in range(2))
    features = SelectionFeatures(first_order, InteractionFactors(left, right))
    skills = [("a", "b", "c")[i % 3] for i in range(30)]
    alpha = 0.7
    profile = feature_profile(features, skills, alpha)
    assert set(profile) == {"a", "b", "c"}
    for skill, row in profile.items():
        members = [c for c in range(30) if skills[c] == skill]
        halves = [0.5 * float(left[c] @ right[c]) for c in members]
        helps = [float(first_order[c]) > alpha * h for c, h in zip(members, halves, strict=True)]
        assert row["count"] == len(members) == 10
        assert row["first_order"] == pytest.approx(sum(float(first_order[c]) for c in members) / 10)
        assert row["self_interaction"] == pytest.approx(sum(halves) / 10)
        assert row["helps_alone"] == pytest.approx(sum(helps) / 10)
    assert 0 < sum(row["helps_alone"] for row in profile.values()) < 3  # some help alone, some do not
    with pytest.raises(ValueError, match="29 skill labels for 30 candidates"):
        feature_profile(features, skills[:29], alpha)


@pytest.mark.slow
def test_experiment_runs_every_method_and_resumes(tmp_path, capsys):
    config = tmp_path / "mini.json"
    config.write_text(json.dumps({**MINI, "experiment": {**MINI["experiment"], "scale_study": [2.0]}}))
    out = tmp_path / "run"
    assert main(["llm", "experiment", "--config", str(config), "--out", str(out)]) in (0, None)
    document = json.loads((out / "results.json").read_text())
    results = document["results"]
    assert list(results) == [*METHODS, VAL_CHOSEN, *BOUNDS]
    chosen = json.loads((out / "selections.json").read_text())
    pool = [json.loads(line) for line in (out / "world" / "pool.jsonl").read_text().splitlines()]
    for label, row in results.items():
        assert set(row) == set(TARGETS)
        for name, cell in row.items():
            assert set(cell["seeds"]) == {"3", "4"} and 0 <= cell["mean"] <= 100
            if label == "Base":
                assert cell["std"] == 0 and cell["skills"] == {}
                continue
            if label == VAL_CHOSEN:  # F+I at the α of the study: with one α in the study, that one
                study = document["scale_study"][name]
                assert study["val_best"] == 2.0 and cell["seeds"] == study["scales"]["2"]["eval"]["seeds"]
                assert sum(cell["skills"].values()) == 4
                continue
            subsets = (
                [list(range(len(pool)))] if label == "Full pool" else [picks(chosen, label, name, s) for s in (3, 4)]
            )
            assert sum(cell["skills"].values()) == len(subsets[0]) == (len(pool) if label == "Full pool" else 4)
            picked = [pool[i] for subset in subsets[: 2 if label == "Random" else 1] for i in subset]
            shares = len(subsets) if label == "Random" else 1
            assert cell["duplicates"] == sum("duplicate_of" in r for r in picked) / shares
            assert cell["mislabelled"] == sum("mislabelled" in r for r in picked) / shares
    # Random draws a new subset per seed, the same for every target
    assert (
        chosen["Random"]["math"] == chosen["Random"]["capital_qa"]
        and chosen["Random"]["math"]["3"] != chosen["Random"]["math"]["4"]
    )
    for name in TARGETS:
        pair = document["paired"][name]["F+I − Random"]
        assert pair["seeds"] == {
            s: results["F+I"][name]["seeds"][s] - results["Random"][name]["seeds"][s] for s in ("3", "4")
        }
        assert pair["mean"] == pytest.approx(sum(pair["seeds"].values()) / 2)
        base = json.loads((out / "eval" / "base" / f"{name}.json").read_text())["score"]
        assert results["Base"][name]["seeds"] == {"3": base, "4": base}
    record = json.loads((out / "finetune" / "less" / "math" / "seed3" / "warmup.json").read_text())
    assert record["indices"] == sorted(chosen["LESS"]["math"]) and record["settings"]["seed"] == 3
    record = json.loads((out / "finetune" / "full" / "seed4" / "warmup.json").read_text())
    assert record["indices"] == list(range(len(pool))) and record["settings"]["seed"] == 4
    # the α study: F+I reselected at α = 2 from the saved features, fine-tuned per seed, scored on val and eval
    for name in TARGETS:
        features = SelectionFeatures.load(out / "select" / name / "features.safetensors")
        expected = select_from_features(features, 4, "greedy", "F+I", interaction_scale=2.0).indices.tolist()
        record = json.loads((out / "scale" / "2" / name / "seed4" / "warmup.json").read_text())
        assert record["indices"] == sorted(expected)
        row = document["scale_study"][name]["scales"]["2"]
        assert set(row) == {"val", "eval", "indices"} and row["indices"] == expected
        assert all(set(row[split]["seeds"]) == {"3", "4"} for split in ("val", "eval"))
        val = json.loads((out / "scale" / "2" / name / "seed3.val.json").read_text())
        assert row["val"]["seeds"]["3"] == val["score"] and val["n"] == 3
        # the study's evaluations are keyed on what scoring reads, as the table's are
        study_key = json.loads((out / "stages" / "scale" / "2" / name / "seed3.val.json").read_text())
        table_key = json.loads((out / "stages" / "eval" / "greedy" / name / "seed3.json").read_text())
        assert {k: study_key[k] for k in ("template", "max_new_tokens")} == {
            k: table_key[k] for k in ("template", "max_new_tokens")
        }
    # F+I's features by skill, at the α select chose for each target
    for name, profile in document["feature_profile"].items():
        features = SelectionFeatures.load(out / "select" / name / "features.safetensors")
        skills = [r["skill"] for r in pool]
        assert profile == feature_profile(features, skills, document["interaction_scale"][name])
        assert sum(row["count"] for row in profile.values()) == len(pool) and set(profile) == set(skills)
    table = (out / "results.md").read_text()
    assert all(f"| {label} |" in table for label in [*METHODS, *BOUNDS]) and "| F+I − Additive IF |" in table
    assert all(f"| {name} | {skill} |" in table for name in TARGETS for skill in SKILLS)
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun recomputes nothing: every stage's output is kept as it was
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name != "results.json"}
    os.remove(out / "eval" / "random" / "capital_qa" / "seed3.json")
    assert main(["llm", "experiment", "--config", str(config), "--out", str(out)]) in (0, None)
    changed = [p for p, t in stamps.items() if not p.exists() or p.stat().st_mtime_ns != t]
    assert changed == [out / "eval" / "random" / "capital_qa" / "seed3.json"]


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

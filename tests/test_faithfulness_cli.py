"""The `groupinf faithfulness` command: schema, resume, regression data, errors, and the demo's claim."""

import json

import numpy as np
import pytest

from groupinf import cli
from groupinf.experiments import faithfulness


def write_npz(path, regression=False, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(160, 4))
    if regression:
        y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * rng.normal(size=160)
    else:
        y = (X[:, 0] + 0.5 * X[:, 1] + 0.5 * rng.normal(size=160) > 0).astype(np.int64) * 3 + 2  # labels {2, 5}
    np.savez(path, X=X, y=y)


def run(args):
    return cli.main(["faithfulness", *map(str, args)])


@pytest.mark.parametrize("regression", [False, True])
def test_results_schema_on_npz(tmp_path, capsys, regression):
    data = tmp_path / "toy.npz"
    write_npz(data, regression)
    assert run(["--data", data, "--groups", 12, "--group-size", 6, "--l2", 0.05, "--out", tmp_path / "out"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["spearman"]) == {"F", "F+I", "F+B", "F+I+B", "TRAK", "TracIn"}
    assert len(results["groups"]) == 12
    for group in results["groups"]:
        assert len(group["indices"]) == 6 == len(set(group["indices"]))
        assert set(group["estimates"]) == set(results["spearman"])
        assert np.isfinite(group["truth"])
    assert results["spearman"]["F+I"] > 0.8
    assert results["target_curvature"] == "exact"  # the default for a linear model
    assert "F+I" in capsys.readouterr().out


def test_interrupted_run_resumes_without_retraining_finished_groups(tmp_path, monkeypatch):
    data = tmp_path / "toy.npz"
    write_npz(data)
    args = ["--data", data, "--groups", 8, "--group-size", 5]
    assert run([*args, "--out", tmp_path / "fresh"]) == 0  # uninterrupted, for comparison
    fresh = json.loads((tmp_path / "fresh" / "results.json").read_text())
    args += ["--out", tmp_path / "out"]
    real_fit = faithfulness.fit_convex
    calls = []

    def dying_fit(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # the full-data fit, then 2 retrainings, then "killed"
            raise KeyboardInterrupt
        return real_fit(*a, **k)

    monkeypatch.setattr(faithfulness, "fit_convex", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        run(args)
    assert not (tmp_path / "out" / "results.json").exists()
    assert len(list((tmp_path / "out" / "work").glob("*/retrain/g*.json"))) == 2
    calls.clear()
    monkeypatch.setattr(faithfulness, "fit_convex", lambda *a, **k: (calls.append(1), real_fit(*a, **k))[1])
    assert run(args) == 0
    assert len(calls) == 1 + 6  # the full-data fit and only the 6 unfinished groups
    resumed = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [g["truth"] for g in resumed["groups"]] == [g["truth"] for g in fresh["groups"]]
    assert resumed["spearman"] == fresh["spearman"]
    calls.clear()
    assert run(args) == 0
    assert len(calls) == 1
    assert json.loads((tmp_path / "out" / "results.json").read_text())["spearman"] == fresh["spearman"]


def test_retraining_cache_is_reused_only_for_the_same_group(tmp_path, monkeypatch, breast_cancer):
    task, tensors = faithfulness.build_task(breast_cancer, l2=0.1)
    X, y = tensors["X_train"], tensors["y_train"]
    theta = faithfulness.fit_convex(task, task.theta(), X, y, len(X))
    groups = [np.arange(10 * m, 10 * m + 10) for m in range(4)]
    truth = faithfulness.retraining_truth(task, theta, tensors, groups, tmp_path)
    real_fit = faithfulness.fit_convex
    calls = []
    monkeypatch.setattr(faithfulness, "fit_convex", lambda *a, **k: (calls.append(1), real_fit(*a, **k))[1])
    swapped = [groups[1], groups[0], *groups[2:]]
    assert faithfulness.retraining_truth(task, theta, tensors, swapped, tmp_path) == [truth[1], truth[0], *truth[2:]]
    assert len(calls) == 2  # the two moved groups are retrained, not read from the other group's file


def test_target_curvature_default_per_model_kind():
    """Linear models keep the exact H_f; networks take per-layer Gauss–Newton blocks (docs/math.md §7)."""
    assert faithfulness.DEFAULT_TARGET_CURVATURE == {"lr": "exact", "mlp": "block-ggn", "resnet9": "block-ggn"}
    for model, kind in faithfulness.DEFAULT_TARGET_CURVATURE.items():
        assert faithfulness.FaithfulnessConfig(model=model).target_kind == kind
        assert faithfulness.FaithfulnessConfig(model=model, target_curvature="ggn").target_kind == "ggn"
    assert cli.build_parser().parse_args(["faithfulness", "--out", "o"]).target_curvature is None
    with pytest.raises(ValueError, match="target curvature"):
        faithfulness.FaithfulnessConfig(target_curvature="blocks")


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    assert run(["--data", tmp_path / "missing.npz", "--out", tmp_path / "o"]) == 2
    assert "missing.npz" in capsys.readouterr().err
    data = tmp_path / "nan.npz"
    X = np.ones((50, 3))
    X[4, 1] = np.nan
    np.savez(data, X=X, y=np.arange(50) % 2)
    assert run(["--data", data, "--out", tmp_path / "o"]) == 2
    assert "NaN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["--damping", "lots", "--out", tmp_path / "o"])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    X[:, 2] = 0.0  # a constant feature: without L2 or damping its weights have zero curvature
    y = (X[:, 0] + rng.normal(size=120) > 0).astype(np.int64)
    np.savez(tmp_path / "flat.npz", X=X, y=y)
    assert run(["--data", tmp_path / "flat.npz", "--l2", 0, "--groups", 3, "--out", tmp_path / "o"]) == 2
    assert "singular" in capsys.readouterr().err


def test_demo_digits_lr_interaction_term_tracks_retraining(tmp_path, capsys):
    """What `make demo` runs: multinomial LR on scikit-learn's digits, 10 draws of 50 groups of 5 %.
    F+I ranks the groups better than F in every draw and at least 0.95 on average; the first draw
    (anchor seed 0) is the hardest, where F alone falls to about 0.67 (docs/results.md)."""
    args = ["--data", "digits", "--model", "lr", "--groups", 50, "--draws", 10, "--out", tmp_path]
    assert run(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["n_train"] == 1257 and results["group_size"] == 63 and len(results["groups"]) == 500
    rho = results["spearman"]
    assert rho["F+I"] >= 0.95
    draws = [draw["spearman"] for draw in results["spearman_per_draw"]]
    assert [draw["anchor_seed"] for draw in results["spearman_per_draw"]] == list(range(10))
    assert all(draw["F+I"] > draw["F"] for draw in draws)
    assert min(draw["F+I"] for draw in draws) >= 0.9
    assert draws[0]["F+I"] > draws[0]["F"] + 0.2
    assert "Spearman, mean of 10 draws" in capsys.readouterr().out


def test_draws_repeat_the_protocol_with_consecutive_anchor_seeds(tmp_path):
    """Three draws from seed 2 = the runs with seeds 2, 3 and 4, side by side; the headline is their mean."""
    data = tmp_path / "toy.npz"
    write_npz(data)
    common = ["--data", data, "--groups", 6, "--group-size", 5, "--l2", 0.05]
    assert run([*common, "--seed", 2, "--draws", 3, "--out", tmp_path / "three"]) == 0
    three = json.loads((tmp_path / "three" / "results.json").read_text())
    singles = []
    for seed in (2, 3, 4):
        assert run([*common, "--seed", seed, "--out", tmp_path / f"s{seed}"]) == 0
        singles.append(json.loads((tmp_path / f"s{seed}" / "results.json").read_text()))
    assert [g["indices"] for g in three["groups"]] == [g["indices"] for s in singles for g in s["groups"]]
    assert [g["anchor_seed"] for g in three["groups"]] == [2] * 6 + [3] * 6 + [4] * 6
    for draw, single in zip(three["spearman_per_draw"], singles, strict=True):
        for method in ("F", "F+I", "F+B", "F+I+B"):
            assert draw["spearman"][method] == pytest.approx(single["spearman"][method], abs=1e-12)
    for method, mean in three["spearman"].items():
        values = [draw["spearman"][method] for draw in three["spearman_per_draw"]]
        assert mean == pytest.approx(np.mean(values))
        assert three["spearman_summary"][method]["min"] == min(values)
    assert "| 4 |" in (tmp_path / "three" / "results.md").read_text()
    with pytest.raises(ValueError, match="draws"):
        faithfulness.FaithfulnessConfig(draws=0)


def test_mlp_faithfulness_resumes_and_writes_every_output(tmp_path, monkeypatch):
    args = [
        "--data",
        "digits",
        "--model",
        "mlp",
        "--hidden",
        "8",
        "--max-train",
        240,
        "--max-test",
        100,
        "--groups",
        4,
        "--group-size",
        6,
        "--seeds",
        2,
        "--epochs",
        3,
        "--workers",
        1,
        "--curvature",
        "ggn",
        "--damping",
        0.1,
        "--damping-sweep",
        "0.01,1",
        "--class-pairs",
        "--out",
        tmp_path,
    ]
    calls = []
    real = faithfulness.train_network_job
    monkeypatch.setattr(faithfulness, "train_network_job", lambda s, j: (calls.append(1), real(s, j))[1])
    assert run(args) == 0
    assert len(calls) == 2 + 4 * 2  # one full model per seed, every group under every seed
    results = json.loads((tmp_path / "results.json").read_text())
    per_seed = np.array([g["truth_per_seed"] for g in results["groups"]])
    assert per_seed.shape == (4, 2)
    np.testing.assert_allclose([g["truth"] for g in results["groups"]], per_seed.mean(axis=1))
    assert results["truth_seed_agreement"] == faithfulness.seed_agreement(per_seed)
    assert "a perfect estimator would reach" in (tmp_path / "results.md").read_text()
    assert results["target_curvature"] == "block-ggn"  # the default for a network
    assert set(results["damping_sweep"]) == {"0.01", "1.0"}
    assert "| 0.01 | " in (tmp_path / "results.md").read_text()  # the sweep's table
    assert len(results["class_pairs"]["average"]) == 10
    for name in ("results.md", "spearman.png", "damping_sweep.png", "class_pairs.png"):
        assert (tmp_path / name).stat().st_size > 100
    checkpoints = json.loads(next(tmp_path.rglob("checkpoints_s0/index.json")).read_text())
    assert [c["lr"] for c in checkpoints] == [0.01, 0.01, 0.01]  # 3 epochs, 5 checkpoints asked: one per epoch
    calls.clear()
    assert run(args) == 0
    assert calls == []  # everything came from the cache
    assert json.loads((tmp_path / "results.json").read_text())["spearman"] == results["spearman"]


def test_resnet9_faithfulness_on_cifar_batches(tmp_path):
    """ResNet-9 (narrow) on CIFAR-format pickles: EK-FAC over its Conv2d/Linear weights, BatchNorm excluded."""
    from groupinf.models import resnet9, weight_parameters
    from test_data import write_cifar_dir

    model = resnet9(width=4)
    names = weight_parameters(model)
    assert len(names) == 9 and not any("running" in n for n in names)
    assert sum(dict(model.named_parameters())[n].numel() for n in names) < sum(p.numel() for p in model.parameters())
    write_cifar_dir(tmp_path / "cifar", n=16)
    args = [
        "--data",
        "cifar10",
        "--data-dir",
        tmp_path / "cifar",
        "--model",
        "resnet9",
        "--width",
        4,
        "--groups",
        3,
        "--group-size",
        4,
        "--seeds",
        1,
        "--epochs",
        2,
        "--momentum",
        0.9,
        "--cosine",
        "--workers",
        1,
        "--curvature",
        "ekfac",
        "--damping",
        0.1,
        "--trak-dim",
        16,
        "--out",
        tmp_path / "out",
    ]
    assert run(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["n_train"] == 80 and set(results["spearman"]) == set(faithfulness.METHODS)
    assert all(np.isfinite(g["estimates"]["F+I"]) for g in results["groups"])


def test_seed_agreement_against_hand_computed_values():
    """Spearman–Brown on the mean pairwise Spearman: identical seeds are perfectly reliable; a reversed
    seed leaves nothing repeatable; partial agreement follows the formula."""
    effects = np.arange(6.0)
    same = np.stack([effects, effects, effects], axis=1)
    assert faithfulness.seed_agreement(same) == {"pairwise": 1.0, "reliability": 1.0}
    opposite = np.stack([effects, effects[::-1]], axis=1)
    assert faithfulness.seed_agreement(opposite) == {"pairwise": -1.0, "reliability": 0.0}
    swapped = np.stack([effects, effects[[1, 0, 2, 3, 5, 4]]], axis=1)
    r = 1 - 6 * 4 / (6 * 35)  # two adjacent swaps: Σd² = 4, n = 6
    agreement = faithfulness.seed_agreement(swapped)
    assert agreement["pairwise"] == pytest.approx(r)
    assert agreement["reliability"] == pytest.approx(2 * r / (1 + r))
    with pytest.raises(ValueError, match="2 seeds"):
        faithfulness.seed_agreement(effects[:, None])

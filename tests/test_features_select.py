"""Selection features (compute, store, load) and the `groupinf select` / `selection-eval` commands."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from groupinf import cli
from groupinf.curvature import EigenCurvature, gauss_newton
from groupinf.curvature_ops import LowRankCurvature
from groupinf.data import load_dataset
from groupinf.experiments import faithfulness
from groupinf.experiments.selection_eval import PRESETS
from groupinf.features import (
    LowRankTarget,
    SelectionFeatures,
    compute_features,
    cross_validated_scale,
    select_from_features,
    target_side_features,
)
from groupinf.gradients import per_example_gradients
from groupinf.methods import METHODS
from groupinf.selection import InteractionFactors
from groupinf.target import NETWORK_TARGET_CURVATURE, target_curvature
from groupinf.training import SGDConfig


@pytest.fixture
def features(mlp_task):
    task, theta, X, y = mlp_task
    curvature = EigenCurvature(gauss_newton(task, theta, X, len(X)), damping=0.1)
    return compute_features(
        task, theta, curvature, X[:25], y[:25], len(X), target_curvature(task, theta, "ggn"), basu="ggn"
    )


def test_features_match_brute_force(mlp_task, features):
    task, theta, X, y = mlp_task
    G = gauss_newton(task, theta, X, len(X)) + 0.1 * torch.eye(theta.numel(), dtype=theta.dtype)
    grads = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda th, i=i: task.losses(th, X[i : i + 1], y[i : i + 1])[0], theta)
            for i in range(25)
        ]
    )
    shifts = torch.linalg.solve(G, grads.T).T / len(X)
    grad_f = task.target.gradient(task, theta)
    B = task.target.ggn_factor(task, theta)
    torch.testing.assert_close(features.first_order, shifts @ grad_f)
    torch.testing.assert_close(features.interactions.left @ features.interactions.right.T, shifts @ B.T @ B @ shifts.T)
    low = compute_features(
        task,
        theta,
        EigenCurvature(G - 0.1 * torch.eye(len(G), dtype=G.dtype), damping=0.1),
        X[:25],
        y[:25],
        len(X),
        LowRankCurvature(B),
    )
    assert low.interactions.left.shape == (25, len(B))
    assert low.meta["hf"] == "LowRankCurvature"  # the target-side solve: H⁻¹ applied to ∇f and B's rows
    torch.testing.assert_close(low.first_order, shifts @ grad_f)
    torch.testing.assert_close(
        low.interactions.left @ low.interactions.right.T,
        features.interactions.left @ features.interactions.right.T,
    )


def test_target_side_features_from_blocks_in_any_order(mlp_task):
    task, theta, X, y = mlp_task
    curvature = EigenCurvature(gauss_newton(task, theta, X, len(X)), damping=0.1)
    grads = per_example_gradients(task, theta, X[:25], y[:25])
    hf = LowRankCurvature(task.target.ggn_factor(task, theta), None)
    hf.sign[0] = -1.0  # an indefinite H_f: left = σ ∘ b, right = b
    target = LowRankTarget(task.target.gradient(task, theta), hf, "t")
    (whole,) = target_side_features([(0, grads)], 25, curvature, [target], len(X), dtype=grads.dtype)
    blocks = [(10, grads[10:25]), (0, grads[:4]), (4, grads[4:10])]
    (pieces,) = target_side_features(blocks, 25, curvature, [target], len(X), dtype=grads.dtype)
    shifts = curvature.solve(grads) / len(X)
    for features in (whole, pieces):
        torch.testing.assert_close(features.first_order, shifts @ target.gradient)
        interactions = features.interactions.left @ features.interactions.right.T
        torch.testing.assert_close(interactions, shifts @ hf.matmul(shifts).T)
    assert whole.meta["target"] == "t" and whole.meta["target_rank"] == str(hf.rank)
    with pytest.raises(ValueError, match="cover 21 of the 25"):
        target_side_features(blocks[:1] + blocks[2:], 25, curvature, [target], len(X))
    with pytest.raises(ValueError, match="overlap"):
        target_side_features([*blocks, (3, grads[3:5])], 25, curvature, [target], len(X))
    with pytest.raises(ValueError, match="no target"):
        target_side_features(blocks, 25, curvature, [], len(X))


def test_feature_store_round_trip(features, tmp_path):
    path = tmp_path / "f.safetensors"
    features.save(path)
    loaded = SelectionFeatures.load(path)
    torch.testing.assert_close(loaded.first_order, features.first_order)
    torch.testing.assert_close(loaded.basu.response, features.basu.response)
    assert loaded.basu.shifts is loaded.interactions.right  # δ stored once
    for method, terms in [("greedy", "F+I"), ("greedy", "F+I+B"), ("topk", "F"), ("random", "F")]:
        a = select_from_features(features, 7, method, terms, seed=3)
        b = select_from_features(loaded, 7, method, terms, seed=3)
        assert torch.equal(a.indices, b.indices)
    assert [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]  # no temporary file left behind


def test_loaded_features_do_not_depend_on_where_the_file_puts_them(features, tmp_path):
    # two files with the same tensors behind headers of other lengths: memory-mapped, their data would start at
    # other alignments, where BLAS kernels round differently; loaded, both live in memory of their own
    offsets = set()
    loaded = []
    for pad in range(8):
        path = tmp_path / f"f{pad}.safetensors"
        SelectionFeatures(features.first_order, features.interactions, meta={"pad": "x" * pad}).save(path)
        with open(path, "rb") as handle:
            offsets.add((8 + int.from_bytes(handle.read(8), "little")) % 64)
        loaded.append(SelectionFeatures.load(path))
    assert len(offsets) > 1  # the files do place their data at different alignments
    for copy in loaded:
        tensors = (copy.first_order, copy.interactions.left, copy.interactions.right)
        assert all(t.data_ptr() % 64 == 0 for t in tensors)
        assert torch.equal(copy.first_order, features.first_order)
        picked = select_from_features(copy, 12, "greedy", "F+I", interaction_scale=4.0).indices
        assert torch.equal(picked, select_from_features(loaded[0], 12, "greedy", "F+I", interaction_scale=4.0).indices)


def test_bad_feature_files(features, tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature file"):
        SelectionFeatures.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable"):
        SelectionFeatures.load(tmp_path / "junk.safetensors")
    save_file({"first_order": torch.zeros(3)}, str(tmp_path / "alien.safetensors"), metadata={"format": "x"})
    with pytest.raises(ValueError, match="not a groupinf feature file"):
        SelectionFeatures.load(tmp_path / "alien.safetensors")
    tensors = {
        "first_order": torch.zeros(5),
        "left": torch.zeros(4, 2),
        "right": torch.zeros(4, 2),
    }
    save_file(tensors, str(tmp_path / "mismatch.safetensors"), metadata={"format": "groupinf-selection-features/1"})
    with pytest.raises(ValueError, match="disagree"):
        SelectionFeatures.load(tmp_path / "mismatch.safetensors")
    no_basu = SelectionFeatures(features.first_order, features.interactions)
    with pytest.raises(ValueError, match="no Basu factors"):
        select_from_features(no_basu, 3, "greedy", "F+B")


def test_select_command_from_features(features, tmp_path, capsys):
    features.save(tmp_path / "f.safetensors")
    out = tmp_path / "sel"
    argv = ["select", "--features", tmp_path / "f.safetensors", "--k", 5, "--method", "greedy", "--out", out]
    assert cli.main(list(map(str, argv))) == 0
    record = json.loads((out / "selection.json").read_text())
    expected = select_from_features(features, 5, "greedy", "F+I")
    assert record["indices"] == expected.indices.tolist() == np.load(out / "selection.npy").tolist()
    np.testing.assert_allclose(record["scores"], expected.scores.numpy())
    # k larger than the pool: a clear error and nothing written.
    bad_out = tmp_path / "bad"
    argv = ["select", "--features", tmp_path / "f.safetensors", "--k", 26, "--out", bad_out]
    assert cli.main(list(map(str, argv))) == 2
    assert "k must be in [1, 25]" in capsys.readouterr().err
    assert not bad_out.exists()


def test_select_and_selection_eval_from_data(tmp_path, capsys):
    pool = ["--data", "digits", "--pool-size", 300, "--target-size", 200, "--hidden", "16"]
    out = tmp_path / "sel"
    argv = ["select", *pool, "--k", 12, "--terms", "F+I+B", "--interaction-scale", 3, "--out", out]
    assert cli.main(list(map(str, argv))) == 0
    record = json.loads((out / "selection.json").read_text())
    assert len(record["train_indices"]) == 12 == len(set(record["indices"]))
    assert record["terms"] == "F+I+B" and record["interaction_scale"] == 3
    assert record["target_curvature"] == "block-ggn"  # θ* is a network: the networks' default H_f
    argv = ["selection-eval", *pool, "--budgets", "5,10", "--seeds", 2, "--workers", 1, "--out", tmp_path / "ev"]
    argv += ["--scale-grid", "1,8", "--scale-folds", 2]
    argv += ["--epochs", 20, "--lr", 0.1]
    assert cli.main(list(map(str, argv))) == 0
    (results_file,) = (tmp_path / "ev").rglob("results.json")
    run_dir = results_file.parent
    results = json.loads(results_file.read_text())
    assert results["config"]["target_curvature"] == "block-ggn"
    assert results["config"]["sgd"] == {
        "epochs": 20,
        "lr": 0.1,
        "weight_decay": 0.01,
        "batch_size": 64,
        "momentum": 0.0,
        "cosine": True,  # the cpu preset's
    }
    paper = cli.build_parser().parse_args(["select", "--preset", "paper", "--cosine", "--k", "1", "--out", "x"])
    assert cli.pool_config(paper).sgd == SGDConfig(epochs=200, lr=0.01, cosine=True)
    constant = cli.build_parser().parse_args(["select", "--no-cosine", "--k", "1", "--out", "x"])
    assert cli.pool_config(constant).sgd == SGDConfig(epochs=100, lr=0.05, cosine=False)
    assert set(results["results"]) == set(METHODS)
    # auto (the default) chose F+I's α per budget from the grid, each budget with its own greedy run
    assert set(results["interaction_scale"]["auto"]) == {"5", "10"}
    for k, alpha in results["interaction_scale"]["per_budget"].items():
        assert alpha in (1.0, 8.0) and results["results"]["F+I"][k]["interaction_scale"] == alpha
    # the bounds show the comparison can discriminate: training on the pool beats no training by far
    bounds = results["bounds"]
    assert bounds["full pool"]["test_loss_mean"] < 0.5 * bounds["no training"]["test_loss_mean"]
    for rows in results["results"].values():
        assert set(rows) == {"5", "10"}
        assert all(np.isfinite(r["test_loss_mean"]) and 0 <= r["class_entropy"] <= np.log(10) for r in rows.values())
    labels = load_dataset("digits").y_train[results["pool_train_indices"]]
    assert len(results["pool_train_indices"]) == 300
    for name, rows in results["results"].items():
        for k, row in rows.items():
            picks = results["selections"][name][k]
            assert len(picks) == (2 if METHODS[name].randomised else 1)
            assert all(len(set(p)) == int(k) for p in picks)
            expected = np.mean([np.bincount(labels[idx], minlength=10) for idx in picks], axis=0)
            np.testing.assert_allclose(row["class_counts"], expected)
            assert sum(row["class_counts"]) == pytest.approx(int(k))
        # deterministic methods with a fixed α: the smaller budget's pick is a prefix of the larger's
        if not METHODS[name].randomised and name != "F+I":
            assert results["selections"][name]["10"][0][:5] == results["selections"][name]["5"][0]
    assert (run_dir / "selection.png").stat().st_size > 10_000
    report = (run_dir / "results.md").read_text()
    assert "Test loss (mean ± std over seeds)" in report and "| F+I | " in report and "Class entropy" in report
    assert cli.main(list(map(str, ["select", *pool[:-2], "--pool-size", 0, "--k", 1, "--out", out]))) == 2
    assert cli.main(list(map(str, ["select", *pool, "--target-size", 0, "--k", 1, "--out", out]))) == 2
    assert cli.main(list(map(str, ["select", *pool, "--k", 301, "--out", tmp_path / "big"]))) == 2
    assert cli.main(list(map(str, ["select", *pool, "--k", 3, "--epochs", 0, "--out", tmp_path / "big"]))) == 2
    assert "invalid SGD settings" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()


def test_select_and_selection_eval_default_to_the_networks_target_curvature():
    """θ* of select and selection-eval is an MLP, so their H_f default is faithfulness's for networks."""
    assert NETWORK_TARGET_CURVATURE == faithfulness.DEFAULT_TARGET_CURVATURE["mlp"] == "block-ggn"
    assert all(preset.target_curvature == NETWORK_TARGET_CURVATURE for preset in PRESETS.values())
    for command in (["select", "--k", "1"], ["selection-eval"]):
        args = cli.build_parser().parse_args([*command, "--out", "x"])
        assert cli.pool_config(args).target_curvature == NETWORK_TARGET_CURVATURE
        args = cli.build_parser().parse_args([*command, "--target-curvature", "ggn", "--out", "x"])
        assert cli.pool_config(args).target_curvature == "ggn"


def test_select_from_a_checkpoint_reproduces_the_trained_selection(tmp_path):
    pool = ["--data", "digits", "--pool-size", 200, "--target-size", 100, "--hidden", "8", "--k", 6]
    pool += ["--interaction-scale", 1]
    assert cli.main(list(map(str, ["select", *pool, "--out", tmp_path / "a"]))) == 0
    (checkpoint,) = (tmp_path / "a").rglob("theta_star.safetensors")
    argv = ["select", *pool, "--checkpoint", checkpoint, "--out", tmp_path / "b"]
    assert cli.main(list(map(str, argv))) == 0
    first, second = (json.loads((tmp_path / d / "selection.json").read_text()) for d in "ab")
    assert first["indices"] == second["indices"]
    assert not list((tmp_path / "b").rglob("theta_star.safetensors"))  # loaded, not retrained
    bad = ["select", *pool, "--hidden", "9", "--checkpoint", checkpoint, "--out", tmp_path / "c"]
    assert cli.main(list(map(str, bad))) == 2


def test_select_chooses_the_interaction_scale_by_default(tmp_path, capsys):
    """From data, select's default α is auto: chosen on folds of the target set, recorded with its losses."""
    argv = ["select", "--data", "digits", "--pool-size", 200, "--target-size", 60, "--hidden", 8, "--k", 10]
    argv += ["--epochs", 15, "--scale-grid", "0.5,16", "--scale-folds", 2, "--out", tmp_path / "a"]
    assert cli.main(list(map(str, argv))) == 0
    record = json.loads((tmp_path / "a" / "selection.json").read_text())
    choice = record["interaction_scale_auto"]
    losses = choice["validation_loss"]
    assert set(losses) == {"0.5", "16"} and record["interaction_scale"] == choice["chosen"]
    assert choice["chosen"] == float(min(losses, key=losses.get))
    assert f"α = {choice['chosen']:g}" in capsys.readouterr().out


def duplicate_pair_features(first_order: list[float]) -> SelectionFeatures:
    """Three candidates: 0 and 1 share one direction of H_f's factor, 2 is orthogonal (b = e1, e1, e2)."""
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    return SelectionFeatures(torch.tensor(first_order, dtype=torch.float64), InteractionFactors(b, b))


def test_cross_validated_scale_by_hand():
    # greedy with k = 2 takes 0 first; then 1 (the duplicate) while -0.99 + 1.5α < -0.5 + 0.5α, i.e. α < 0.49,
    # else 2. Objective of {0,1}: -1.99 + 2·ref, of {0,2}: -1.5 + ref.
    fit = duplicate_pair_features([1.0, 0.99, 0.5])
    choice = cross_validated_scale([(fit, fit)], 2, (0.25, 1.0, 4.0), reference=1.0)
    assert choice.held_out == pytest.approx([0.01, -0.5, -0.5]) and choice.per_fold == [choice.held_out]
    assert choice.scale == 1.0  # tie between 1 and 4 (the same set): the one closest to 1
    assert cross_validated_scale([(fit, fit)], 2, (0.25, 1.0, 4.0), reference=0.1).scale == 0.25
    # two folds: the mean of the held-out values; the second fold's held-out set prefers the duplicate pair
    other = duplicate_pair_features([1.0, 2.0, 0.1])  # {0,1}: -3 + 2 = -1, {0,2}: -1.1 + 1 = -0.1
    choice = cross_validated_scale([(fit, fit), (fit, other)], 2, (0.25, 1.0, 4.0), reference=1.0)
    assert choice.per_fold[1] == pytest.approx([-1.0, -0.1, -0.1])
    assert choice.held_out == pytest.approx([-0.495, -0.3, -0.3]) and choice.scale == 0.25


def test_cross_validated_scale_rejects_bad_input():
    fit = duplicate_pair_features([1.0, 0.99, 0.5])
    with pytest.raises(ValueError, match="at least one"):
        cross_validated_scale([], 2)
    with pytest.raises(ValueError, match="grid"):
        cross_validated_scale([(fit, fit)], 2, ())
    with pytest.raises(ValueError, match="finite and > 0"):
        cross_validated_scale([(fit, fit)], 2, (1.0, -2.0))
    rows = fit.interactions.left[:2]
    fewer = SelectionFeatures(fit.first_order[:2], InteractionFactors(rows, rows))
    with pytest.raises(ValueError, match="disagree"):
        cross_validated_scale([(fit, fewer)], 2)

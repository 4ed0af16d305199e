"""Selection problems (clean, targeted, redundant, noisy, .npz target split) and the interaction-scale choice."""

import json

import numpy as np
import pytest
import torch

from groupinf import cli
from groupinf.data import load_dataset
from groupinf.data.files import load_npz
from groupinf.data.transforms import standardize
from groupinf.experiments.jobs import run_jobs
from groupinf.experiments.pools import PoolRegime, build_problem
from groupinf.experiments.selection_eval import (
    PoolAnalysis,
    SelectionEvalConfig,
    choose_interaction_scale,
    shared_data,
    subset_job,
    target_folds,
    train_model,
)
from groupinf.features import compute_features
from groupinf.selection import greedy_select
from groupinf.target import target_curvature
from groupinf.training import SGDConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return standardize(load_dataset("digits"))


def test_regimes_produce_the_requested_counts_and_noise(digits):
    regime = PoolRegime(
        target_classes=(0, 2, 4, 6), duplicates=0.3, duplicate_sources=5, duplicate_noise=0.2, label_noise=0.2
    )
    problem = build_problem(digits, regime, pool_size=400, target_size=100, seed=0)
    C = len(problem.X_pool)
    assert C == 400 == len(problem.y_pool) == len(problem.train_indices)
    copies = np.flatnonzero(problem.duplicate_of >= 0)
    assert len(copies) == round(0.3 * 400)
    sources = problem.duplicate_of[copies]
    assert len(set(sources.tolist())) <= 5 and (problem.duplicate_of[sources] == -1).all()
    noise = (problem.X_pool[copies] - problem.X_pool[sources]).numpy()
    assert noise.std() == pytest.approx(0.2, rel=0.05) and abs(noise.mean()) < 0.01
    assert (problem.train_indices[copies] == problem.train_indices[sources]).all()
    assert (problem.clean_labels[copies] == problem.clean_labels[sources]).all()
    wrong = problem.mislabelled
    assert wrong.sum() == round(0.2 * 400)
    assert (problem.y_pool.numpy()[wrong] != problem.clean_labels[wrong]).all()
    assert (problem.y_pool.numpy()[~wrong] == problem.clean_labels[~wrong]).all()
    assert set(problem.y_pool.unique().tolist()) == set(range(10))  # the pool keeps every class
    for y in (problem.y_target, problem.y_test):
        assert set(y.unique().tolist()) == {0, 2, 4, 6}
    assert len(problem.y_target) == 100
    assert (np.isin(digits.y_test, [0, 2, 4, 6])).sum() == len(problem.y_test)
    picks = np.concatenate([copies[:3], np.flatnonzero(wrong & (problem.duplicate_of < 0))[:2]])
    purity = problem.purity(picks)
    assert purity["duplicate_fraction"] == pytest.approx(3 / 5)
    assert purity["mislabelled_fraction"] == pytest.approx(wrong[picks].mean())
    assert purity["on_target"] == pytest.approx(np.isin(problem.clean_labels[picks], [0, 2, 4, 6]).mean())
    assert regime.name == "targeted+redundant+noisy"


def test_clean_redundant_and_noisy_share_the_target_set(digits):
    clean = build_problem(digits, PoolRegime(), 300, 100)
    redundant = build_problem(digits, PoolRegime(duplicates=0.5), 300, 100)
    noisy = build_problem(digits, PoolRegime(label_noise=0.3), 300, 100)
    for other in (redundant, noisy):
        assert torch.equal(clean.X_target, other.X_target) and torch.equal(clean.X_test, other.X_test)
    assert (redundant.train_indices[:150] == clean.train_indices[:150]).all()
    assert clean.purity(np.arange(10)) == {}
    assert PoolRegime().name == "clean"


@pytest.mark.parametrize(
    ("regime", "message"),
    [
        ({"duplicates": 1.0}, "duplicates must be a fraction"),
        ({"label_noise": -0.1}, "label-noise must be a fraction"),
        ({"label_noise": float("nan")}, "label-noise must be a fraction"),
        ({"duplicate_noise": float("inf")}, "duplicate-noise"),
        ({"duplicate_sources": 0}, "duplicate-sources"),
        ({"target_classes": ()}, "distinct and not empty"),
        ({"target_classes": (1, 1)}, "distinct and not empty"),
    ],
)
def test_bad_regimes_are_rejected(regime, message):
    with pytest.raises(ValueError, match=message):
        PoolRegime(**regime)


def test_regimes_that_do_not_fit_the_data_are_rejected(digits):
    with pytest.raises(ValueError, match=r"labels 0\.\.9"):
        build_problem(digits, PoolRegime(target_classes=(3, 12)), 300, 100)
    with pytest.raises(ValueError, match="target classes"):
        build_problem(digits, PoolRegime(target_classes=(0,)), 1000, 200)
    with pytest.raises(ValueError, match="fewer than the 10 duplicate sources"):
        build_problem(digits, PoolRegime(duplicates=0.99), 300, 100)


def test_npz_target_split_round_trips_and_defines_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    X, X_test, X_target = (rng.normal(size=(n, 6)).astype(np.float32) for n in (60, 20, 15))
    y, y_test = rng.choice([3, 5, 9], size=60), rng.choice([3, 5, 9], size=20)
    y_target = np.array([9, 3] * 7 + [9])
    path = tmp_path / "mine.npz"
    np.savez(path, X=X, y=y, X_test=X_test, y_test=y_test, X_target=X_target, y_target=y_target)
    data = load_npz(path)
    assert data.has_target
    np.testing.assert_array_equal(data.X_target, X_target)
    np.testing.assert_array_equal(data.y_target, np.searchsorted([3, 5, 9], y_target))
    np.testing.assert_array_equal(data.y_train, np.searchsorted([3, 5, 9], y))
    other = tmp_path / "other.npz"
    np.savez(other, X=X, y=y, X_test=X_test, y_test=y_test, X_target=X_target + 1, y_target=y_target)
    assert load_npz(other).fingerprint() != data.fingerprint()
    scaled = standardize(data)
    mean, std = X.mean(axis=0), X.std(axis=0)
    np.testing.assert_allclose(scaled.X_target, (X_target - mean) / std, rtol=1e-5, atol=1e-5)
    problem = build_problem(scaled, PoolRegime(), pool_size=60, target_size=1)
    assert len(problem.X_pool) == 60 and sorted(problem.train_indices.tolist()) == list(range(60))
    np.testing.assert_allclose(problem.X_target.numpy(), scaled.X_target)
    targeted = build_problem(scaled, PoolRegime(target_classes=(2,)), pool_size=30, target_size=1)
    assert len(targeted.y_target) == 8 and set(targeted.y_test.tolist()) == {2}
    half = tmp_path / "half.npz"
    np.savez(half, X=X, y=y, X_target=X_target)
    with pytest.raises(ValueError, match="both X_target and y_target"):
        load_npz(half)


@pytest.mark.parametrize("alpha", ["0", "-2", "nan", "inf", "many"])
def test_bad_interaction_scales_are_rejected_before_anything_is_written(tmp_path, capsys, alpha):
    out = tmp_path / "sel"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["select", "--data", "digits", "--k", "3", "--interaction-scale", alpha, "--out", str(out)])
    assert exit_info.value.code == 2
    assert "interaction scale must be" in capsys.readouterr().err
    assert not out.exists()


def test_auto_without_a_target_split_is_rejected(tmp_path, capsys):
    from safetensors.torch import save_file

    features = tmp_path / "f.safetensors"
    save_file({"first_order": torch.zeros(3)}, str(features))
    out = tmp_path / "sel"
    argv = ["select", "--features", str(features), "--k", "2", "--interaction-scale", "auto", "--out", str(out)]
    assert cli.main(argv) == 2
    assert "a feature file does not hold" in capsys.readouterr().err
    argv = ["select", "--data", "digits", "--k", "2", "--terms", "F", "--interaction-scale", "2", "--out", str(out)]
    assert cli.main(argv) == 2
    assert "use it with --terms F+I or F+I+B" in capsys.readouterr().err
    assert not out.exists()


def test_auto_chooses_the_scale_with_the_lowest_held_out_loss(digits, tmp_path):
    """``auto``'s record equals, per fold, greedy on features computed directly for the other folds' target
    examples, retrained by hand and scored on the held-out fold; the choice is the α with the lowest mean."""
    config = SelectionEvalConfig(
        data="digits",
        pool_size=150,
        target_size=60,
        hidden=(8,),
        sgd=SGDConfig(epochs=15, lr=0.05, cosine=True),
        curvature="ggn",
        scale_grid=(0.5, 4.0, 32.0),
        scale_folds=3,
        workers=1,
    )
    problem = build_problem(digits, config.regime, 150, 60)
    shared = shared_data(config, problem)
    analysis = PoolAnalysis(config, problem, tmp_path)
    record = choose_interaction_scale(
        analysis, (6, 20), lambda jobs: run_jobs(train_model, jobs, tmp_path / "retrain", shared, 1)
    )
    folds = target_folds(60, 3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(60))
    task = analysis.task(problem.X_target, problem.y_target)
    theta, X, y = task.theta(), problem.X_pool, problem.y_pool
    by_hand: dict[int, dict[str, list[float]]] = {6: {}, 20: {}}
    for held, part in enumerate(folds):
        rest = torch.as_tensor(np.setdiff1d(np.arange(60), part))
        fold_task = analysis.task(problem.X_target[rest], problem.y_target[rest])
        hf = target_curvature(fold_task, theta, config.target_curvature)
        direct = compute_features(fold_task, theta, analysis.curvature(), X, y, len(X), hf)
        for alpha in config.scale_grid:
            order = greedy_select(direct.first_order, 20, direct.interactions, interaction_scale=alpha).indices
            for k in (6, 20):
                _, job = subset_job(order[:k].numpy(), 0)
                loss = train_model(shared, job)["target_loss"][str(held)]
                by_hand[k].setdefault(f"{alpha:g}", []).append(loss)
    for k in (6, 20):
        means = {alpha: float(np.mean(losses)) for alpha, losses in by_hand[k].items()}
        assert record[str(k)]["validation_loss"] == pytest.approx(means)
        assert record[str(k)]["chosen"] == float(min(means, key=means.get))
    json.dumps(record)  # what results.json stores


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"interaction_scale": -1.0}, "interaction scale"),
        ({"interaction_scale": float("nan")}, "interaction scale"),
        ({"scale_grid": ()}, "grid is empty"),
        ({"scale_grid": (1.0, 0.0)}, "interaction scale"),
        ({"scale_sweep": (float("inf"),)}, "interaction scale"),
        ({"scale_seeds": 0}, "scale seeds"),
        ({"scale_folds": 1}, "at least 2 folds"),
        ({"methods": ("F+I", "oracle")}, "unknown methods"),
    ],
)
def test_bad_selection_eval_settings_are_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        SelectionEvalConfig(**settings)

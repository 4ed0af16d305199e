"""Projected curvature and per-target selection: against definitions and the core's dense computation."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from groupinf.cli import main
from groupinf.curvature import EigenCurvature, KroneckerCurvature, fit_curvature, second_moment
from groupinf.curvature_ops import LowRankCurvature
from groupinf.features import SelectionFeatures
from groupinf.llm.config import SelectConfig
from groupinf.llm.curvature import StoredGradients, projected_layout
from groupinf.llm.data import collate, encode, load_records, pad_id
from groupinf.llm.models import linear_layers, load_model, load_tokenizer
from groupinf.llm.objective import response_nll
from groupinf.llm.projection import LayerSpec
from groupinf.llm.select import halves, load_target, pool_features, run_selection
from groupinf.llm.store import GradientStore
from groupinf.selection import InteractionFactors, greedy_select, random_select, topk_select
from groupinf.shifts import compute_shifts
from llm_helpers import (
    LAYERS,
    TINY_EXTRACT,
    extract_args,
    make_world,
    random_adapter,
    synthetic_store,
)

pytestmark = pytest.mark.usefixtures("one_thread", "private_datasets_cache")


def blocks(matrix_per_layer):
    return torch.block_diag(*matrix_per_layer)


def test_dense_curvature_is_the_damped_projected_fisher(tmp_path):
    store = synthetic_store(tmp_path, 40, seed=0)
    fisher = store.read("fisher").double()
    torch.testing.assert_close(second_moment(StoredGradients(store).row_batches()), fisher.T @ fisher / 40)
    curvature = fit_curvature("dense", StoredGradients(store), damping=0.3, l2=0.2)
    V = torch.randn(4, store.spec.dim, dtype=torch.float64)
    expected = V @ torch.linalg.inv(fisher.T @ fisher / 40 + 0.5 * torch.eye(store.spec.dim, dtype=torch.float64))
    torch.testing.assert_close(curvature.solve(V), expected)


def test_kfac_is_the_kronecker_product_of_the_moment_factors(tmp_path):
    store = synthetic_store(tmp_path, 40, seed=1)
    moments = store.moments()
    explicit = []
    for layer in LAYERS:
        A = moments[f"in:{layer.name}"] / moments["tokens"]  # averaged over tokens
        S = moments[f"out:{layer.name}"] / 40  # summed over tokens, averaged over examples
        explicit.append(torch.kron(S, A))  # row-major (r_out, r_in) layout: vec(S W A)
    curvature = fit_curvature("kfac", StoredGradients(store), damping=0.1, l2=0.05)
    V = torch.randn(3, store.spec.dim, dtype=torch.float64)
    H = blocks(explicit) + 0.15 * torch.eye(store.spec.dim, dtype=torch.float64)
    torch.testing.assert_close(curvature.solve(V), V @ torch.linalg.inv(H))
    torch.testing.assert_close(curvature.matvec(V), V @ H)


def test_ekfac_eigenvalues_are_the_fisher_diagonal_in_the_kfac_eigenbasis(tmp_path):
    store = synthetic_store(tmp_path, 40, seed=2)
    curvature = fit_curvature("ekfac", StoredGradients(store), damping="heuristic", l2=0.01)
    assert isinstance(curvature, KroneckerCurvature)
    fisher = store.read("fisher").double()
    offset, explicit = 0, []
    for layer, (q_s, q_a), values, rho in zip(
        LAYERS, curvature.bases, curvature.eigenvalues, curvature.layer_damping, strict=True
    ):
        Q = torch.kron(q_s, q_a)
        g = fisher[:, offset : offset + layer.size]
        diagonal = torch.diagonal(Q.T @ (g.T @ g / 40) @ Q)
        torch.testing.assert_close(values.flatten(), diagonal)
        assert rho == pytest.approx(0.1 * (diagonal.mean().item() + 0.01))
        explicit.append(Q @ torch.diag(diagonal + 0.01 + rho) @ Q.T)
        offset += layer.size
    V = torch.randn(3, store.spec.dim, dtype=torch.float64)
    torch.testing.assert_close(curvature.solve(V), V @ torch.linalg.inv(blocks(explicit)))
    with pytest.raises(ValueError, match="singular"):
        layout, values = projected_layout(LAYERS), [torch.zeros(2, 3), torch.ones(3, 2), torch.ones(2, 3)]
        KroneckerCurvature(layout, curvature.bases, values, 0.0, 0.0)


def test_features_for_several_targets_equal_those_computed_one_at_a_time(tmp_path):
    pool = synthetic_store(tmp_path / "pool", 40, seed=3)
    targets = [load_target(name, synthetic_store(tmp_path / name, m, seed=4 + m)) for name, m in (("x", 5), ("y", 7))]
    curvature = fit_curvature("ekfac", StoredGradients(pool), damping=0.1)
    together = pool_features(pool, curvature, targets, n=12)
    for target in targets:
        (alone,) = pool_features(pool, curvature, [target], n=12).values()
        torch.testing.assert_close(together[target.name].first_order, alone.first_order)
        torch.testing.assert_close(together[target.name].interactions.right, alone.interactions.right)
        # against the definitions: a_c = ∇fᵀδ_c, b_c = B δ_c with δ_c = (1/n) H⁻¹ g_c
        shifts = compute_shifts(curvature, pool.read().double(), 12)
        torch.testing.assert_close(alone.first_order.double(), shifts @ target.gradient, rtol=1e-4, atol=1e-7)
        projected = target.curvature.project(shifts)
        torch.testing.assert_close(alone.interactions.right.double(), projected, rtol=1e-4, atol=1e-7)


def test_target_rank_keeps_the_top_eigenpairs_of_the_target_fisher(tmp_path):
    store = synthetic_store(tmp_path, 9, seed=5)
    full, cut = load_target("t", store), load_target("t", store, rank=3)
    fisher = store.read("fisher").double()
    torch.testing.assert_close(full.gradient, store.read().double().mean(0))
    torch.testing.assert_close(full.curvature.factor.T @ full.curvature.factor, fisher.T @ fisher / 9)
    top = torch.linalg.eigvalsh(fisher.T @ fisher / 9).flip(0)[:3]
    assert cut.curvature.rank == 3
    torch.testing.assert_close(torch.linalg.eigvalsh(cut.curvature.factor @ cut.curvature.factor.T).flip(0), top)


def test_run_selection_writes_each_targets_selections(tmp_path):
    pool = synthetic_store(tmp_path / "pool", 40, seed=6)
    synthetic_store(tmp_path / "x", 6, seed=7)
    synthetic_store(tmp_path / "y", 4, seed=8)
    config = SelectConfig(k=5, curvature="kfac", damping=0.2)
    run = run_selection(pool.path, {"x": tmp_path / "x", "y": tmp_path / "y"}, tmp_path / "out", config, n=10)
    assert (run["k"], run["n"], run["pool_size"]) == (5, 10, 40)
    for name in ("x", "y"):
        record = json.loads((tmp_path / "out" / name / "selection.json").read_text())
        features = SelectionFeatures.load(tmp_path / "out" / name / "features.safetensors")
        assert record["methods"]["greedy"]["terms"] == "F+I" and record["methods"]["topk"]["terms"] == "F"
        greedy = greedy_select(features.first_order, 5, features.interactions)
        assert record["methods"]["greedy"]["indices"] == greedy.indices.tolist()
        assert record["methods"]["topk"]["indices"] == topk_select(features.first_order, 5).indices.tolist()
        assert record["methods"]["random"]["indices"] == random_select(features.first_order, 5, 0).indices.tolist()
        assert record["methods"]["greedy"]["ids"] == [f"p{i}" for i in greedy.indices.tolist()]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["damping"] == pytest.approx(0.2)
    assert SelectConfig(fraction=0.1).budget(40) == 4


def test_selection_refuses_mismatched_or_incomplete_inputs(tmp_path):
    pool = synthetic_store(tmp_path / "pool", 20, seed=9)
    synthetic_store(tmp_path / "other", 5, seed=10, source={"model": "another"})
    synthetic_store(tmp_path / "t", 5, seed=11)
    with pytest.raises(ValueError, match=r"extracted differently.*model"):
        run_selection(pool.path, {"o": tmp_path / "other"}, tmp_path / "out", SelectConfig(k=2), n=5)
    with pytest.raises(ValueError, match="pass --n"):
        run_selection(pool.path, {"t": tmp_path / "t"}, tmp_path / "out", SelectConfig(k=2))
    with pytest.raises(ValueError, match="k must be in"):
        run_selection(pool.path, {"t": tmp_path / "t"}, tmp_path / "out", SelectConfig(k=21), n=5)
    huge = GradientStore(pool.path, replace(pool.spec, layers=(LayerSpec("big", 200, 200, 200, 200),)))
    with pytest.raises(ValueError, match="too large for the dense"):
        fit_curvature("dense", StoredGradients(huge), 0.1)
    (tmp_path / "pool" / "shards" / "00001.json").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        run_selection(pool.path, {"t": tmp_path / "t"}, tmp_path / "out", SelectConfig(k=2), n=5)
    args = ["llm", "select", "--pool", str(pool.path), "--target", f"t={tmp_path / 't'}", "--target", "t=x"]
    assert main([*args, "--out", str(tmp_path / "cli")]) == 2


def autograd_gradients(model, layers, examples, padding) -> torch.Tensor:
    """Full per-example gradients of ``layers`` (flattened, in order), one example at a time: ``(N, p)``."""
    weights = [module.weight for module in layers.values()]
    rows = []
    for example in examples:
        batch = collate([example], padding)
        for w in weights:
            w.requires_grad_(True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        grads = torch.autograd.grad(response_nll(logits, batch["labels"]).sum(), weights)
        for w in weights:
            w.requires_grad_(False)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows).double()


def test_identity_projection_pipeline_selects_what_the_core_dense_computation_selects(tmp_path):
    """CLI extract (P = I) + select (dense Fisher) against autograd gradients + EigenCurvature + greedy."""
    world = make_world(tmp_path, pool_size=20, target_sizes={"math": 6})
    adapter = random_adapter(world.model, tmp_path / "adapter")
    config = replace(TINY_EXTRACT, projection="identity", fisher="empirical", layers=r"layers\.1\..*lora_")
    for name, data in {"pool": world.pool, "math": world.targets["math"]}.items():
        assert main(extract_args(world, data, tmp_path / name, config, adapter)) == 0
    n, k, damping = 7, 6, 0.05
    select = ["llm", "select", "--pool", str(tmp_path / "pool"), "--target", f"math={tmp_path / 'math'}"]
    options = ["--n", str(n), "--k", str(k), "--curvature", "dense", "--damping", str(damping), "--seed", "3"]
    assert main([*select, *options, "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "math" / "selection.json").read_text())["methods"]
    features = SelectionFeatures.load(tmp_path / "out" / "math" / "features.safetensors")

    # the core library, dense, from autograd per-example gradients of the same layers
    tokenizer = load_tokenizer(str(world.model))
    model = load_model(str(world.model), torch.float32, torch.device("cpu"), adapter).eval().requires_grad_(False)
    layers = linear_layers(model, config.layers)
    assert len(layers) == 6

    def gradients(path):
        examples = encode(load_records(path), tokenizer, "auto", config.max_length)
        return autograd_gradients(model, layers, examples, pad_id(tokenizer))

    pool, target = gradients(world.pool), gradients(world.targets["math"])
    assert pool.shape == (20, sum(m.weight.numel() for m in layers.values()))
    H = EigenCurvature(pool.T @ pool / len(pool), damping=damping)
    shifts = compute_shifts(H, pool, n)
    hf = LowRankCurvature(target / math.sqrt(len(target)))
    first_order = shifts @ target.mean(0)
    factors = InteractionFactors.low_rank(shifts, hf)
    # float32 store and products against float64: agreement to ~1e-4 of each array's scale
    for got, want in ((features.first_order, first_order), (features.interactions.right, factors.right)):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4 * want.abs().max().item())
    greedy = greedy_select(first_order, k, factors)
    assert record["greedy"]["indices"] == greedy.indices.tolist()
    scores = torch.tensor(record["greedy"]["scores"]).double()
    torch.testing.assert_close(scores, greedy.scores, rtol=0, atol=1e-4 * greedy.scores.abs().max().item())
    assert record["topk"]["indices"] == topk_select(first_order, k).indices.tolist()
    assert record["random"]["indices"] == random_select(first_order, k, seed=3).indices.tolist()
    assert record["greedy"]["indices"] != record["topk"]["indices"]  # the interaction term changes the choice


def test_auto_interaction_scale_cross_validates_over_halves_of_the_target(tmp_path):
    """``auto``'s held-out values against the definitions: per half, ∇f and H_f of its rows, dense H."""
    pool = synthetic_store(tmp_path / "pool", 40, seed=12)
    target = synthetic_store(tmp_path / "x", 10, seed=13)
    n, k, grid = 10, 5, (0.25, 1.0, 4.0)
    config = SelectConfig(k=k, curvature="dense", damping=0.2, interaction_scale="auto", interaction_grid=grid)
    run = run_selection(pool.path, {"x": target.path}, tmp_path / "out", config, n=n)
    record = json.loads((tmp_path / "out" / "x" / "selection.json").read_text())
    first, second = record["auto"]["halves"]
    assert sorted(first + second) == list(range(10)) and len(first) == 5
    assert [first, second] == list(halves(10, 0))
    fisher, gradients = pool.read("fisher").double(), pool.read().double()
    H = fisher.T @ fisher / 40 + 0.2 * torch.eye(pool.spec.dim, dtype=torch.float64)
    shifts = gradients @ torch.linalg.inv(H) / n  # δ_c = (1/n) H⁻¹ g_c
    g, f = target.read().double(), target.read("fisher").double()
    expected = []
    for fit, held in ((first, second), (second, first)):
        b_fit = shifts @ f[fit].T / math.sqrt(len(fit))
        hf_held = f[held].T @ f[held] / len(held)
        row = []
        for alpha in grid:
            chosen = greedy_select(
                shifts @ g[fit].mean(0), k, InteractionFactors(b_fit, b_fit), interaction_scale=alpha
            )
            delta = shifts[chosen.indices].sum(0)
            row.append(
                (-(shifts[chosen.indices] @ g[held].mean(0)).sum() + n / k * 0.5 * delta @ hf_held @ delta).item()
            )
        expected.append(row)
    torch.testing.assert_close(torch.tensor(record["auto"]["per_fold"]), torch.tensor(expected), rtol=1e-4, atol=1e-6)
    best = min(range(3), key=lambda i: sum(r[i] for r in expected))
    assert record["interaction_scale"] == grid[best] == run["interaction_scale"]["x"]
    assert record["auto"]["reference"] == n / k
    features = SelectionFeatures.load(tmp_path / "out" / "x" / "features.safetensors")
    greedy = greedy_select(features.first_order, k, features.interactions, interaction_scale=grid[best])
    assert record["methods"]["greedy"]["indices"] == greedy.indices.tolist()


def test_interaction_scale_settings(tmp_path):
    assert SelectConfig(interaction_scale="auto").interaction_scale == "auto"
    for bad in (0, -1.0, "fast", float("nan")):
        with pytest.raises(ValueError, match=r"interaction.scale"):
            SelectConfig(interaction_scale=bad)
    with pytest.raises(ValueError, match="interaction_grid is empty"):
        SelectConfig(interaction_grid=())
    with pytest.raises(ValueError, match="halves of at least 2"):
        halves(3, 0)
    pool = synthetic_store(tmp_path / "pool", 20, seed=14)
    synthetic_store(tmp_path / "t", 6, seed=15)
    args = ["llm", "select", "--pool", str(pool.path), "--target", f"t={tmp_path / 't'}", "--n", "5", "--k", "3"]
    with pytest.raises(SystemExit, match="2"):
        main([*args, "--interaction-scale", "fast", "--out", str(tmp_path / "bad")])
    assert main([*args, "--interaction-scale", "2.5", "--out", str(tmp_path / "fixed")]) == 0
    assert json.loads((tmp_path / "fixed" / "run.json").read_text())["interaction_scale"] == {"t": 2.5}
    assert (
        main([*args, "--interaction-scale", "auto", "--interaction-grid", "0.5,2", "--out", str(tmp_path / "a")]) == 0
    )
    assert json.loads((tmp_path / "a" / "t" / "selection.json").read_text())["auto"]["grid"] == [0.5, 2.0]

"""Selection per target from projected gradients: ∇f, a low-rank H_f, shifts and Algorithm 1.

For a target set of ``m`` examples with projected data-label gradients ``g_j`` and Fisher gradients
``g̃_j`` (a store made by ``extract`` with the pool's settings):

- ``f = (1/m) Σ_j l_j`` (the mean instruction-masked NLL), so ``∇f = (1/m) Σ_j g_j``;
- ``H_f ≈ Bᵀ B`` with ``B = g̃ / √m`` ``(m, d)``: the (true or empirical) Fisher of ``f``, i.e. its
  Gauss–Newton matrix, in the projected space; with ``target_rank r < m``, the top ``r`` singular
  directions of ``B`` (``B_r = Σ_r V_rᵀ``, the top ``r`` eigenpairs of ``BᵀB``).

For candidate ``c`` of the pool (addition setting, ``n`` = the number of examples ``θ*`` was trained on):
``δ_c = (1/n) H⁻¹ g_c``, ``a_c = ∇fᵀ δ_c``, ``b_c = B δ_c`` and ``δ_cᵀ H_f δ_c' = b_c · b_c'``. As ``H`` is
symmetric, ``a_c = g_cᵀ q`` and ``b_c = Q g_c`` with ``q = (1/n) H⁻¹ ∇f`` and ``Q = (1/n) B H⁻¹``: the
curvature is applied to the ``1 + r`` vectors of each target, never to the ``C`` pool gradients, and every
target shares one streaming pass over the pool store. Greedy F+I, top-k F ("Additive IF") and random then
run on these features (``groupinf.features``).

Interaction scale α (``interaction_scale``): greedy F+I minimises ``−Σ_{c∈S} a_c + α·½ δ_Sᵀ H_f δ_S``. With
``auto``, each target's examples are split in two halves (seeded by ``seed``); the features of each half
(its own ``∇f`` and ``H_f``) are built in the same pool pass, and ``features.cross_validated_scale``
selects with one half at every α of ``interaction_grid`` and scores the selection with the other half's
F+I estimate at the fixed scale ``n/k`` (the weight ``1/k`` a model fine-tuned on ``S`` alone gives each
example, against θ*'s ``1/n``), both ways; the α with the lowest mean held-out estimate is used with the
whole target set. This is a surrogate measured without any fine-tuning: it guards the selection against
the noise of a finite target set, but it trusts the quadratic model of the loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from groupinf.checks import check_count
from groupinf.curvature import Curvature, fit_curvature
from groupinf.curvature_ops import LowRankCurvature
from groupinf.features import (
    LowRankTarget,
    SelectionFeatures,
    cross_validated_scale,
    select_from_features,
    target_side_features,
)
from groupinf.files import atomic_write_json
from groupinf.llm.config import SelectConfig, as_dict
from groupinf.llm.curvature import StoredGradients
from groupinf.llm.store import GradientStore
from groupinf.selection import check_budget

#: the settings that must agree between the pool store and a target store
SHARED_SETTINGS = ("projection", "r_in", "r_out", "seed", "layers", "fisher", "precision")


def load_target(name: str, store: GradientStore, rank: int | None = None) -> LowRankTarget:
    """``∇f`` and the low-rank ``H_f`` of a target store (see the module docstring)."""
    return low_rank_target(name, store.read("gradients").double(), store.read("fisher").double(), rank)


def low_rank_target(
    name: str, gradients: Tensor, fisher: Tensor, rank: int | None = None, rows: list[int] | None = None
) -> LowRankTarget:
    """``∇f`` and the low-rank ``H_f`` of a target set's projected data-label ``gradients`` and ``fisher``
    gradients ``(m, d)`` (float64), of its examples ``rows`` when given."""
    if rows is not None:
        gradients, fisher = gradients[rows], fisher[rows]
    factor = fisher / math.sqrt(len(gradients))
    if rank is not None and rank < min(factor.shape):
        _, values, vh = torch.linalg.svd(factor, full_matrices=False)
        factor = values[:rank, None] * vh[:rank]
    return LowRankTarget(gradients.mean(dim=0), LowRankCurvature(factor), name)


def halves(size: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(size)`` into two sorted halves (the first gets ``size // 2``)."""
    if size < 4:
        raise ValueError(f"interaction_scale 'auto' splits a target set in halves of at least 2; it has {size}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[: size // 2]), sorted(order[size // 2 :])


def check_compatible(pool: GradientStore, target: GradientStore, name: str) -> None:
    """Raise ValueError unless both stores project the same layers of the same model the same way."""
    problems = [key for key in SHARED_SETTINGS if pool.spec.settings.get(key) != target.spec.settings.get(key)]
    for key in ("model", "adapter_sha256"):
        if pool.spec.source.get(key) != target.spec.source.get(key):
            problems.append(key)
    if pool.spec.layers != target.spec.layers:
        problems.append("layers")
    if problems:
        raise ValueError(
            f"target {name!r} was extracted differently from the pool ({', '.join(sorted(set(problems)))} differ); "
            "extract it with the pool's model, adapter and extract settings"
        )


def pool_features(
    pool: GradientStore,
    curvature: Curvature,
    targets: list[LowRankTarget],
    n: int,
    device: str | torch.device = "cpu",
) -> dict[str, SelectionFeatures]:
    """Selection features (``a_c``, interaction factors ``b_c``) of every pool example for every target, by
    name, from one streaming pass over the pool store (``features.target_side_features``, float32)."""
    check_count(n, "n (the number of examples θ* was trained on)")
    shards = pool.shards("gradients")
    features = target_side_features(shards, pool.spec.num_examples, curvature, targets, n, device)
    return {target.name: feature for target, feature in zip(targets, features, strict=True)}


def run_selection(
    pool_path: str | Path,
    target_paths: dict[str, str | Path],
    out: str | Path,
    config: SelectConfig,
    n: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fit the curvature on the pool, build every target's features and select for each; write
    ``out/<target>/features.safetensors`` and ``out/<target>/selection.json`` and ``out/run.json``."""
    if not target_paths:
        raise ValueError("no target given; pass --target NAME=STORE at least once")
    clock = {"start": time.perf_counter()}
    pool = GradientStore.open(pool_path)
    train_size = n if n is not None else pool.spec.source.get("train_size")
    if train_size is None:
        raise ValueError("pass --n, the number of examples θ* was trained on (no warmup record beside the adapter)")
    check_count(train_size, "n (the number of examples θ* was trained on)")
    k = config.budget(pool.spec.num_examples)
    check_budget(k, pool.spec.num_examples)
    stores = {name: GradientStore.open(path) for name, path in target_paths.items()}
    for name, store in stores.items():
        check_compatible(pool, store, name)
    arrays = {name: (store.read("gradients").double(), store.read("fisher").double()) for name, store in stores.items()}
    targets = [low_rank_target(name, *arrays[name], config.target_rank) for name in stores]
    auto = config.interaction_scale == "auto" and "greedy" in config.methods
    parts = {}
    if auto:
        for name, store in stores.items():
            parts[name] = halves(store.spec.num_examples, config.seed)
            for part, rows in zip("AB", parts[name], strict=True):
                targets.append(low_rank_target(f"{name}#{part}", *arrays[name], config.target_rank, rows))
    curvature = fit_curvature(config.curvature, StoredGradients(pool, device), config.damping, config.l2)
    clock["curvature"] = time.perf_counter()
    features = pool_features(pool, curvature, targets, train_size, device)
    clock["features"] = time.perf_counter()
    ids = pool.ids()
    out = Path(out)
    summary: dict[str, Any] = {}
    scales: dict[str, float] = {}
    for name in stores:
        target_features = features[name]
        target_features.save(out / name / "features.safetensors")
        document: dict[str, Any] = {"target": name, "k": k}
        # α only matters to greedy F+I; 'auto' without it leaves the (unused) default
        scales[name] = 1.0 if config.interaction_scale == "auto" else config.interaction_scale
        if auto:
            first, second = features[f"{name}#A"], features[f"{name}#B"]
            choice = cross_validated_scale(
                [(first, second), (second, first)], k, config.interaction_grid, reference=train_size / k
            )
            scales[name] = choice.scale
            document["auto"] = {**asdict(choice), "halves": parts[name]}
        scale = document["interaction_scale"] = scales[name]
        record = {}
        for method in config.methods:
            terms = "F+I" if method == "greedy" else "F"
            selection = select_from_features(target_features, k, method, terms, config.seed, interaction_scale=scale)
            indices = selection.indices.cpu().tolist()
            record[method] = {
                "terms": selection.terms,
                "indices": indices,
                "ids": [ids[i] for i in indices],
                "scores": selection.scores.cpu().tolist(),
            }
        document["methods"] = record
        atomic_write_json(out / name / "selection.json", document)
        summary[name] = {method: record[method]["indices"] for method in config.methods}
    clock["select"] = time.perf_counter()
    run = {
        "pool": str(pool_path),
        "targets": {name: str(path) for name, path in target_paths.items()},
        "pool_size": pool.spec.num_examples,
        "n": train_size,
        "k": k,
        "damping": curvature.damping,
        "interaction_scale": scales,
        "settings": as_dict(config),
        "seconds": {
            "curvature": clock["curvature"] - clock["start"],
            "features": clock["features"] - clock["curvature"],
            "select": clock["select"] - clock["features"],
        },
    }
    atomic_write_json(out / "run.json", run)
    return {**run, "selections": summary}

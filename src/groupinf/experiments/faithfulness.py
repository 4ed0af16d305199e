"""Faithfulness to leave-group-out retraining (paper §4; MATH.md "Evaluation protocols").

Train to convergence, build nearest-neighbour groups in output space, retrain without each group for
the ground truth ``Δf(−G) = f(θ*_{D\\G}) − f(θ*)`` and rank-correlate every estimator with it.

Retraining convention: removing ``G`` minimises ``(1/n) Σ_{i∉G} l_i + (λ/2)‖θ‖²`` (the ε = −1/n
path of the influence derivation, MATH.md), warm-started from ``θ*``; for a convex model this is
the unique leave-group-out minimiser.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from groupinf.curvature import Damping, EigenCurvature, exact_hessian, gauss_newton
from groupinf.data import Dataset, load_dataset
from groupinf.data.transforms import standardize
from groupinf.files import atomic_write_json
from groupinf.groups import nearest_neighbour_groups
from groupinf.influence import GroupInfluence
from groupinf.models import linear_model
from groupinf.target import mean_loss
from groupinf.task import Task
from groupinf.training import fit_convex

REPORTED = ("F", "F+I", "F+B", "F+I+B")


@dataclass(frozen=True)
class FaithfulnessConfig:
    """Settings of one faithfulness run (the CLI flags)."""

    data: str = "digits"
    data_dir: str | None = None
    model: str = "lr"
    groups: int = 50
    group_size: int | None = None  # default: 5 % of the training set (anchor included)
    seed: int = 0
    damping: Damping = 0.0
    curvature: str = "exact"
    l2: float = 0.01

    def __post_init__(self) -> None:
        if self.model != "lr":
            raise ValueError(f"model {self.model!r} is not supported yet; use --model lr")
        if self.curvature not in ("exact", "ggn"):
            raise ValueError(f"curvature must be 'exact' or 'ggn', got {self.curvature!r}")
        if self.groups < 2:
            raise ValueError(f"a rank correlation needs at least 2 groups, got {self.groups}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")

    def fingerprint(self) -> str:
        """A short hash of the settings that change the retraining results (not damping/curvature)."""
        keys = ("data", "data_dir", "model", "groups", "group_size", "seed", "l2")
        settings = {k: getattr(self, k) for k in keys}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def build_task(data: Dataset, l2: float) -> tuple[Task, dict[str, torch.Tensor]]:
    """A float64 linear model with its loss, targeting the mean test loss; returns the task and tensors."""
    tensors = {
        "X_train": torch.as_tensor(data.X_train, dtype=torch.float64),
        "X_test": torch.as_tensor(data.X_test, dtype=torch.float64),
    }
    label_dtype = torch.int64 if data.kind == "classification" else torch.float64
    tensors["y_train"] = torch.as_tensor(data.y_train, dtype=label_dtype)
    tensors["y_test"] = torch.as_tensor(data.y_test, dtype=label_dtype)
    torch.manual_seed(0)
    model, loss = linear_model(data.X_train.shape[1], data.num_classes, data.kind)
    task = Task(model.double(), loss, l2, mean_loss(tensors["X_test"], tensors["y_test"]))
    return task, tensors


def retraining_truth(
    task: Task,
    theta: torch.Tensor,
    tensors: dict[str, torch.Tensor],
    groups: list[np.ndarray],
    cache_dir: Path,
) -> list[float]:
    """``Δf(−G)`` per group, each cached in ``cache_dir`` as it finishes so a rerun resumes."""
    X, y = tensors["X_train"], tensors["y_train"]
    n = len(X)
    base = task.target.value(task, theta).item()
    truth = []
    for m, group in enumerate(tqdm(groups, desc="retraining")):
        path = cache_dir / f"group_{m:04d}.json"
        if path.exists():
            cached = json.loads(path.read_text())
            if cached["indices"] != group.tolist():
                raise ValueError(f"{path} holds another group; delete {cache_dir} or use a new --out")
            truth.append(cached["truth"])
            continue
        weights = torch.ones(n, dtype=X.dtype)
        weights[torch.as_tensor(group)] = 0.0
        theta_minus = fit_convex(task, theta, X, y, n, weights=weights)
        delta_f = task.target.value(task, theta_minus).item() - base
        atomic_write_json(path, {"indices": group.tolist(), "truth": delta_f})
        truth.append(delta_f)
    return truth


def run_faithfulness(config: FaithfulnessConfig, out: Path) -> dict:
    """Run the protocol, write ``out/results.json`` and return the results."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = standardize(load_dataset(config.data, config.data_dir))
    task, tensors = build_task(data, config.l2)
    X, y = tensors["X_train"], tensors["y_train"]
    n = len(X)
    theta = fit_convex(task, task.theta(), X, y, n)
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    if config.curvature == "exact":
        matrix = exact_hessian(task, theta, X, y, n)
    else:
        matrix = gauss_newton(task, theta, X, n)
    influence = GroupInfluence(
        task,
        theta,
        X,
        y,
        EigenCurvature(matrix, config.damping),
        n=n,
        hf="exact",
        group_hessian=config.curvature,
    )
    timings["fit_influence"] = time.perf_counter() - start

    embedding = task.loss.predictions(task.outputs(theta, X)).detach().numpy()
    group_size = config.group_size or max(2, round(0.05 * n))
    groups = nearest_neighbour_groups(embedding, config.groups, group_size, config.seed)

    start = time.perf_counter()
    estimates = {k: v.detach().numpy() for k, v in influence.estimate(groups).items() if k in REPORTED}
    timings["estimate"] = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    cache = out / "retrain" / config.fingerprint()
    start = time.perf_counter()
    truth = retraining_truth(task, theta, tensors, groups, cache)
    timings["retrain"] = time.perf_counter() - start

    results = {
        "config": asdict(config),
        "n_train": n,
        "group_size": group_size,
        "damping": influence.curvature.damping,
        "spearman": {k: float(spearmanr(v, truth).statistic) for k, v in estimates.items()},
        "runtime_s": timings,
        "groups": [
            {
                "indices": g.tolist(),
                "truth": t,
                "estimates": {k: float(v[m]) for k, v in estimates.items()},
            }
            for m, (g, t) in enumerate(zip(groups, truth, strict=True))
        ],
    }
    atomic_write_json(out / "results.json", results)
    return results


def format_table(results: dict) -> str:
    """A plain-text table of the Spearman correlations."""
    lines = [f"{'method':<8} {'Spearman':>9}", "-" * 18]
    lines += [f"{k:<8} {v:>9.4f}" for k, v in results["spearman"].items()]
    return "\n".join(lines)

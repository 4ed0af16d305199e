"""Selection quality by retraining (paper §5.1; MATH.md "Evaluation protocols").

A candidate pool is drawn by a fixed permutation of the training set and ``θ*`` is trained on it
(MLP with dropout). Per-candidate features (shifts from the damped training curvature, the target's
Gauss–Newton products, Basu's factors) are computed once; every method selects ``k`` examples at each
budget; each subset is retrained from scratch over several seeds and scored by held-out test loss;
the class entropy of each subset measures its diversity.

The target ``f`` is the mean loss on a validation set of training examples outside the pool, so
the test split used for the reported loss is never seen by any selection method.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from groupinf.checks import check_fields
from groupinf.curvature import Damping, check_damping
from groupinf.data import load_dataset
from groupinf.data.transforms import standardize
from groupinf.experiments.common import as_tensors, class_entropy, digest, fit_curvature
from groupinf.experiments.figures import figure, save
from groupinf.experiments.jobs import run_jobs
from groupinf.features import SelectionFeatures, compute_features, select_from_features
from groupinf.files import atomic_path, atomic_write_bytes, atomic_write_json, read_safetensors
from groupinf.influence import TARGET_KINDS, target_curvature
from groupinf.losses import CrossEntropy
from groupinf.models import mlp
from groupinf.target import mean_loss
from groupinf.task import Task
from groupinf.training import SGDConfig, train_sgd

#: method name -> (selection method, objective terms)
METHODS: dict[str, tuple[str, str]] = {
    "F+I": ("greedy", "F+I"),
    "F": ("topk", "F"),
    "F+B": ("greedy", "F+B"),
    "F+I+B": ("greedy", "F+I+B"),
    "random": ("random", "F"),
}


@dataclass(frozen=True)
class SelectionEvalConfig:
    """One §5.1 run. ``preset`` "cpu" is scaled to 2 CPU cores; "paper" follows Table 3 / App. E."""

    data: str = "fashion-mnist"
    data_dir: str | None = None
    pool_size: int = 2000
    target_size: int = 1000
    hidden: tuple[int, ...] = (64, 64)
    dropout: float = 0.1
    # The cpu preset's short run takes a 5x larger step than Table 3; its cosine decay ends θ* and every
    # retraining at a stable near-minimiser (a constant 0.05 keeps SGD bouncing: docs/results.md).
    sgd: SGDConfig = field(default_factory=lambda: SGDConfig(epochs=100, lr=0.05, cosine=True))
    budgets: tuple[int, ...] = (25, 50, 100, 200, 400)
    seeds: int = 5
    methods: tuple[str, ...] = tuple(METHODS)
    curvature: str = "ekfac"
    damping: Damping = 0.01
    target_curvature: str = "ggn"
    workers: int = 2

    def __post_init__(self) -> None:
        check_damping(self.damping)
        check_fields(self)
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
        if self.pool_size < 1:
            raise ValueError(f"the candidate pool is empty (pool_size = {self.pool_size})")
        if self.target_size < 1:
            raise ValueError(f"the target set has no examples (target_size = {self.target_size})")
        if self.target_curvature not in TARGET_KINDS:
            raise ValueError(f"target curvature must be one of {TARGET_KINDS}, got {self.target_curvature!r}")
        if self.seeds < 1 or self.workers < 1:
            raise ValueError("seeds and workers must be >= 1")

    def check_budgets(self) -> None:
        if not self.budgets or min(self.budgets) < 1 or max(self.budgets) > self.pool_size:
            raise ValueError(f"budgets must lie in [1, pool_size = {self.pool_size}], got {self.budgets}")

    def model_fingerprint(self, data_fingerprint: str) -> str:
        """A short hash of the settings and the (standardised) data that determine the pool, θ* and every
        retraining."""
        keys = ("data", "data_dir", "pool_size", "target_size", "hidden", "dropout", "sgd")
        return digest({k: getattr(self, k) for k in keys} | {"data_fingerprint": data_fingerprint})

    def features_fingerprint(self) -> str:
        """A short hash of the settings that determine the features given θ*."""
        return digest({"curvature": self.curvature, "damping": self.damping, "target_curvature": self.target_curvature})


PRESETS: dict[str, SelectionEvalConfig] = {
    "cpu": SelectionEvalConfig(),
    "paper": SelectionEvalConfig(
        pool_size=10_000,
        target_size=2000,
        hidden=(128, 128),
        dropout=0.2,
        sgd=SGDConfig(epochs=200),
        budgets=(100, 200, 300, 400, 500, 600, 700, 800, 900, 1000),
        curvature="ekfac",
        damping=0.01,
    ),
}


def split_pool(num_train: int, pool_size: int, target_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint pool and validation (target) indices from a fixed permutation of the training set."""
    if pool_size + target_size > num_train:
        raise ValueError(f"pool ({pool_size}) + target set ({target_size}) exceed the {num_train} training examples")
    order = np.random.default_rng(seed).permutation(num_train)
    return order[:pool_size], order[pool_size : pool_size + target_size]


def train_model(shared: dict, job: dict) -> dict:
    """Train a fresh MLP (seeded) on the pool subset ``job["indices"]``; test loss and accuracy."""
    config: SelectionEvalConfig = shared["config"]
    idx = torch.as_tensor(job["indices"])
    torch.manual_seed(job["seed"])
    model = mlp(shared["X_pool"].shape[1], shared["num_classes"], config.hidden, config.dropout)
    train_sgd(model, CrossEntropy(), shared["X_pool"][idx], shared["y_pool"][idx], config.sgd, seed=job["seed"])
    with torch.no_grad():
        logits = model(shared["X_test"])
        loss = CrossEntropy()(logits, shared["y_test"]).mean().item()
        accuracy = (logits.argmax(1) == shared["y_test"]).double().mean().item()
    return {"test_loss": loss, "test_accuracy": accuracy}


def reference_model(shared: dict, root: Path, checkpoint: Path | None = None) -> torch.nn.Module:
    """``θ*``: the MLP trained on the whole pool with seed 0 (cached as ``root/theta_star.safetensors``),
    or the state dict in ``checkpoint`` (safetensors) for the configured architecture."""
    config: SelectionEvalConfig = shared["config"]
    torch.manual_seed(0)
    model = mlp(shared["X_pool"].shape[1], shared["num_classes"], config.hidden, config.dropout)
    path = root / "theta_star.safetensors"
    if checkpoint is not None:
        state, _ = read_safetensors(checkpoint, "--checkpoint takes θ* as a safetensors state dict of the MLP")
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"{checkpoint} does not fit an MLP with hidden sizes {config.hidden}: {error}") from None
    elif path.exists():
        model.load_state_dict(load_file(str(path)))
    else:
        train_sgd(model, CrossEntropy(), shared["X_pool"], shared["y_pool"], config.sgd, seed=0, progress=True)
        with atomic_path(path) as tmp:
            save_file(model.state_dict(), str(tmp))
    return model.eval()


def pool_features(
    config: SelectionEvalConfig,
    shared: dict,
    target: tuple[Tensor, Tensor],
    root: Path,
    checkpoint: Path | None = None,
) -> SelectionFeatures:
    """Per-candidate features of the pool at ``θ*`` (cached as ``root/<features hash>/features.safetensors``)."""
    path = root / config.features_fingerprint() / "features.safetensors"
    if path.exists():
        return SelectionFeatures.load(path)
    model = reference_model(shared, root, checkpoint)
    task = Task(model, CrossEntropy(), config.sgd.weight_decay, mean_loss(*target))
    theta = task.theta()
    X, y = shared["X_pool"], shared["y_pool"]
    curvature = fit_curvature(config.curvature, task, theta, X, y, len(X), config.damping)
    hf = target_curvature(task, theta, config.target_curvature)
    features = compute_features(task, theta, curvature, X, y, len(X), hf, basu="ggn")
    features.save(path)
    return features


def prepare_pool(config: SelectionEvalConfig) -> tuple[dict, tuple[Tensor, Tensor]]:
    """Standardised data split into pool, target (validation) set and test set.

    Returns the ``shared`` dict (config, pool tensors, test tensors, ``num_classes``,
    ``pool_indices`` into the training set, ``data_fingerprint`` of the standardised data) and the target
    set ``(X, y)``.
    """
    data = standardize(load_dataset(config.data, config.data_dir))
    if data.kind != "classification":
        raise ValueError(f"selection needs a classification data set; {config.data} is {data.kind}")
    tensors = as_tensors(data)
    pool, held = split_pool(len(tensors["X_train"]), config.pool_size, config.target_size)
    shared = {
        "config": config,
        "X_pool": tensors["X_train"][pool],
        "y_pool": tensors["y_train"][pool],
        "X_test": tensors["X_test"],
        "y_test": tensors["y_test"],
        "num_classes": data.num_classes,
        "pool_indices": pool,
        "data_fingerprint": data.fingerprint(),
    }
    return shared, (tensors["X_train"][held], tensors["y_train"][held])


def run_selection_eval(config: SelectionEvalConfig, out: Path) -> dict:
    """Run the protocol; write ``out/results.json``, ``out/results.md`` and ``out/selection.png``."""
    config.check_budgets()
    shared, target = prepare_pool(config)
    root = out / config.model_fingerprint(shared["data_fingerprint"])
    features = pool_features(config, shared, target, root)
    out = root / config.features_fingerprint()

    k_max = max(config.budgets)
    orders: dict[str, list[np.ndarray]] = {}
    for name in config.methods:
        method, terms = METHODS[name]
        seeds = range(config.seeds) if method == "random" else [0]
        orders[name] = [select_from_features(features, k_max, method, terms, seed=s).indices.numpy() for s in seeds]
    # Retrainings are keyed by the subset's content, so identical subsets (e.g. the same random draw under
    # another damping) are trained once.
    keys: dict[str, str] = {}
    jobs = {}
    for name, chosen in orders.items():
        for k in config.budgets:
            for seed in range(config.seeds):
                indices = sorted(chosen[seed % len(chosen)][:k].tolist())
                key = f"{digest(indices)}_s{seed}"
                keys[f"{name}_k{k}_s{seed}"] = key
                jobs[key] = {"indices": indices, "seed": seed}
    done = run_jobs(train_model, jobs, root / "retrain", shared, config.workers, desc="retraining subsets")
    trained = {name: done[key] for name, key in keys.items()}

    labels = shared["y_pool"].numpy()
    table = {}
    for name, chosen in orders.items():
        table[name] = {}
        for k in config.budgets:
            losses = [trained[f"{name}_k{k}_s{s}"]["test_loss"] for s in range(config.seeds)]
            accuracy = [trained[f"{name}_k{k}_s{s}"]["test_accuracy"] for s in range(config.seeds)]
            entropy = [class_entropy(labels[c[:k]], shared["num_classes"]) for c in chosen]
            counts = [np.bincount(labels[c[:k]], minlength=shared["num_classes"]) for c in chosen]
            table[name][str(k)] = {
                "test_loss_mean": float(np.mean(losses)),
                "test_loss_std": float(np.std(losses)),
                "test_accuracy_mean": float(np.mean(accuracy)),
                "class_entropy": float(np.mean(entropy)),
                "class_counts": np.mean(counts, axis=0).tolist(),  # mean over random's draws
            }
    results = {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "max_entropy": float(np.log(shared["num_classes"])),
        "results": table,
        "selections": {name: [c.tolist() for c in chosen] for name, chosen in orders.items()},  # pool positions
        "pool_indices": shared["pool_indices"].tolist(),  # pool position -> training-set index
    }
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "results.md", format_table(results).encode())
    plot(results, out / "selection.png")
    return results | {"out": str(out)}


def format_table(results: dict) -> str:
    """Markdown: test loss (mean ± std over seeds) and class entropy per method and budget."""
    table = results["results"]
    budgets = list(next(iter(table.values())))
    lines = [
        "| method | " + " | ".join(f"k={k}" for k in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for name, rows in table.items():
        cells = [f"{rows[k]['test_loss_mean']:.3f} ± {rows[k]['test_loss_std']:.3f}" for k in budgets]
        lines.append(f"| {name} test loss | " + " | ".join(cells) + " |")
    for name, rows in table.items():
        cells = [f"{rows[k]['class_entropy']:.3f}" for k in budgets]
        lines.append(f"| {name} class entropy | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Fig. 3-style panels: test loss vs budget (mean ± std) and class entropy vs budget."""
    table = results["results"]
    fig, (left, right) = figure(10, 4, columns=2)
    for name, rows in table.items():
        budgets = [int(k) for k in rows]
        mean = np.array([rows[str(k)]["test_loss_mean"] for k in budgets])
        std = np.array([rows[str(k)]["test_loss_std"] for k in budgets])
        left.plot(budgets, mean, marker="o", label=name)
        left.fill_between(budgets, mean - std, mean + std, alpha=0.15)
        right.plot(budgets, [rows[str(k)]["class_entropy"] for k in budgets], marker="o", label=name)
    right.axhline(results["max_entropy"], color="grey", linestyle=":", label="uniform")
    left.set(xlabel="budget k", ylabel="test loss", title="Test loss after retraining", xscale="log")
    right.set(xlabel="budget k", ylabel="class entropy (nats)", title="Class entropy of the selection", xscale="log")
    left.legend()
    save(fig, path)


def with_overrides(preset: str, **overrides: object) -> SelectionEvalConfig:
    """A preset with the given fields replaced (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})

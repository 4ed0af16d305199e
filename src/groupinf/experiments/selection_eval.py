"""Selection quality by retraining (paper §5.1; docs/math.md §9).

A selection problem (``pools.build_problem``: clean, targeted, redundant or noisy pool) is drawn and
``θ*`` is trained on the pool (MLP with dropout). Per-candidate inputs are computed once: influence
features (shifts from the damped training curvature, ``H_f`` products, by default the target's per-layer
Gauss–Newton blocks, and Basu's factors), and, for the baselines that need them, per-example gradients, the
target's gradients and penultimate-layer features. Every method selects at each budget; each subset is
retrained from scratch over several seeds and scored by held-out test loss; class entropy and the regime's
purity describe the subsets.

The target ``f`` is the mean loss on the target set (validation examples outside the pool), so the test
split used for the reported loss is never seen by any selection method. ``interaction_scale="auto"``
chooses F+I's ``α`` per budget on the target set alone, by K-fold cross-fitting: the target set is split
into ``scale_folds`` parts; with each part held out, the rest selects at every ``α`` of a grid, the subset
is retrained (``scale_seeds`` seeds) and its loss on the held-out part scores that ``α``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from groupinf.checks import check_fields
from groupinf.curvature import Curvature, Damping, check_damping, fit_curvature
from groupinf.data import load_dataset
from groupinf.data.transforms import standardize
from groupinf.digests import settings_digest
from groupinf.experiments.common import class_entropy
from groupinf.experiments.figures import figure, save
from groupinf.experiments.jobs import run_jobs
from groupinf.experiments.pools import PoolRegime, SelectionProblem, build_problem
from groupinf.features import SelectionFeatures, candidate_shifts, compute_features
from groupinf.files import atomic_path, atomic_write_bytes, atomic_write_json, read_safetensors
from groupinf.gradients import per_example_gradients
from groupinf.losses import CrossEntropy
from groupinf.methods import METHODS, PoolInputs, run_method
from groupinf.models import mlp
from groupinf.selection import (
    SCALE_GRID,
    InteractionFactors,
    InteractionScale,
    check_interaction_scale,
    greedy_select,
    lowest_scale,
)
from groupinf.target import NETWORK_TARGET_CURVATURE, TARGET_KINDS, mean_loss, target_curvature
from groupinf.task import Task
from groupinf.training import SGDConfig, train_sgd

#: ``α`` values ``auto`` chooses from: powers of two from near top-k F (1/16) to about ``n/k`` at k = 25 (64)


@dataclass(frozen=True)
class SelectionEvalConfig:
    """One §5.1 run. ``preset`` "cpu" is scaled to 2 CPU cores; "paper" follows Table 3 / App. E.

    ``pool_size`` None: ``default_pool_size`` candidates, or all of ``X`` for a data set with its own
    target split. ``interaction_scale`` is F+I's ``α``: a number, or "auto" (the default; docs/selection.md
    measures it against fixed values); F+I+B keeps the paper's ``α = 1``. ``scale_sweep`` adds one F+I row
    per fixed ``α`` (named ``F+I α=…``).
    """

    data: str = "fashion-mnist"
    data_dir: str | None = None
    pool_size: int | None = None
    default_pool_size: int = 2000
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
    target_curvature: str = NETWORK_TARGET_CURVATURE  # θ* is an MLP: the networks' default H_f
    workers: int = 2
    regime: PoolRegime = field(default_factory=PoolRegime)
    interaction_scale: InteractionScale = "auto"
    scale_grid: tuple[float, ...] = SCALE_GRID
    scale_folds: int = 5
    scale_seeds: int = 1
    scale_sweep: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # the checks of the damping and of α first, for their specific messages; then every field's type
        check_damping(self.damping)
        if self.interaction_scale != "auto":
            check_interaction_scale(self.interaction_scale)
        for alpha in (*self.scale_grid, *self.scale_sweep):
            check_interaction_scale(alpha)
        check_fields(self)
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError(f"the candidate pool is empty (pool_size = {self.pool_size})")
        if self.target_size < 1:
            raise ValueError(f"the target set has no examples (target_size = {self.target_size})")
        if self.target_curvature not in TARGET_KINDS:
            raise ValueError(f"target curvature must be one of {TARGET_KINDS}, got {self.target_curvature!r}")
        if self.seeds < 1 or self.workers < 1 or self.scale_seeds < 1:
            raise ValueError("seeds, scale seeds and workers must be >= 1")
        if self.scale_folds < 2:
            raise ValueError(f"choosing α needs at least 2 folds of the target set, got {self.scale_folds}")
        if not self.scale_grid:
            raise ValueError("the interaction-scale grid is empty")

    def check_budgets(self, pool_size: int) -> None:
        if not self.budgets or min(self.budgets) < 1 or max(self.budgets) > pool_size:
            raise ValueError(f"budgets must lie in [1, pool size = {pool_size}], got {self.budgets}")

    def model_fingerprint(self, data_fingerprint: str) -> str:
        """A short hash of the settings and the (standardised) data that determine the problem, θ* and every
        retraining."""
        keys = ("data", "data_dir", "pool_size", "default_pool_size", "target_size", "hidden", "dropout", "sgd")
        settings = {k: getattr(self, k) for k in keys} | {"regime": asdict(self.regime)}
        return settings_digest(settings | {"data_fingerprint": data_fingerprint})

    def features_fingerprint(self) -> str:
        """A short hash of the settings that determine the features given θ*."""
        return settings_digest(
            {"curvature": self.curvature, "damping": self.damping, "target_curvature": self.target_curvature}
        )

    def method_names(self) -> list[str]:
        """The rows of the report: the methods, then F+I at every ``scale_sweep`` value."""
        return [*self.methods, *(sweep_name(alpha) for alpha in self.scale_sweep)]


def sweep_name(alpha: float) -> str:
    return f"F+I α={alpha:g}"


PRESETS: dict[str, SelectionEvalConfig] = {
    "cpu": SelectionEvalConfig(),
    "paper": SelectionEvalConfig(
        default_pool_size=10_000,
        target_size=2000,
        hidden=(128, 128),
        dropout=0.2,
        sgd=SGDConfig(epochs=200),
        budgets=(100, 200, 300, 400, 500, 600, 700, 800, 900, 1000),
        curvature="ekfac",
        damping=0.01,
    ),
}


def prepare_problem(config: SelectionEvalConfig) -> tuple[SelectionProblem, str]:
    """The standardised selection problem of ``config`` and the data's fingerprint."""
    data = standardize(load_dataset(config.data, config.data_dir))
    if config.pool_size is not None:
        pool_size = config.pool_size
    elif data.has_target:
        pool_size = len(data.X_train)
    else:
        pool_size = config.default_pool_size
    problem = build_problem(data, config.regime, pool_size, config.target_size)
    return problem, data.fingerprint()


def target_folds(num: int, folds: int) -> list[np.ndarray]:
    """A fixed (seed 0) split of ``num`` target examples into ``folds`` parts of near-equal size."""
    if num < folds:
        raise ValueError(f"choosing the interaction scale splits the target set into {folds} folds; it has {num}")
    order = np.random.default_rng(0).permutation(num)
    return [np.sort(part) for part in np.array_split(order, folds)]


def shared_data(config: SelectionEvalConfig, problem: SelectionProblem) -> dict[str, Any]:
    """What every retraining worker needs: the pool, the test set and the target set's folds."""
    folds = target_folds(len(problem.X_target), config.scale_folds)
    return {
        "config": config,
        "X_pool": problem.X_pool,
        "y_pool": problem.y_pool,
        "X_test": problem.X_test,
        "y_test": problem.y_test,
        "targets": {str(j): (problem.X_target[idx], problem.y_target[idx]) for j, idx in enumerate(folds)},
        "num_classes": problem.num_classes,
    }


def train_model(shared: dict, job: dict) -> dict:
    """Train a fresh MLP (seeded) on the pool subset ``job["indices"]`` (none: the untrained model): its
    test loss and accuracy and its mean loss on each fold of the target set."""
    config: SelectionEvalConfig = shared["config"]
    idx = torch.as_tensor(job["indices"], dtype=torch.long)
    torch.manual_seed(job["seed"])
    model = mlp(shared["X_pool"].shape[1], shared["num_classes"], config.hidden, config.dropout)
    if len(idx):
        train_sgd(model, CrossEntropy(), shared["X_pool"][idx], shared["y_pool"][idx], config.sgd, seed=job["seed"])
    model.eval()
    with torch.no_grad():
        logits = model(shared["X_test"])
        loss = CrossEntropy()(logits, shared["y_test"]).mean().item()
        accuracy = (logits.argmax(1) == shared["y_test"]).double().mean().item()
        target = {h: CrossEntropy()(model(X), y).mean().item() for h, (X, y) in shared["targets"].items()}
    return {"test_loss": loss, "test_accuracy": accuracy, "target_loss": target}


def reference_model(config: SelectionEvalConfig, problem: SelectionProblem, root: Path, checkpoint: Path | None = None):
    """``θ*``: the MLP trained on the whole pool with seed 0 (cached as ``root/theta_star.safetensors``),
    or the state dict in ``checkpoint`` (safetensors) for the configured architecture."""
    torch.manual_seed(0)
    model = mlp(problem.X_pool.shape[1], problem.num_classes, config.hidden, config.dropout)
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
        train_sgd(model, CrossEntropy(), problem.X_pool, problem.y_pool, config.sgd, seed=0, progress=True)
        with atomic_path(path) as tmp:
            save_file(model.state_dict(), str(tmp))
    return model.eval()


class PoolAnalysis:
    """θ*, its training curvature and the candidates' shifts, computed once and on demand, and the
    selection inputs derived from them (influence features cached under ``root/<features hash>/``)."""

    def __init__(
        self, config: SelectionEvalConfig, problem: SelectionProblem, root: Path, checkpoint: Path | None = None
    ) -> None:
        self.config, self.problem, self.root, self.checkpoint = config, problem, root, checkpoint
        self.dir = root / config.features_fingerprint()
        self._model: nn.Module | None = None
        self._curvature: Curvature | None = None
        self._shifts: Tensor | None = None

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            self._model = reference_model(self.config, self.problem, self.root, self.checkpoint)
        return self._model

    def task(self, X_target: Tensor, y_target: Tensor) -> Task:
        return Task(self.model, CrossEntropy(), self.config.sgd.weight_decay, mean_loss(X_target, y_target))

    def curvature(self) -> Curvature:
        """The damped training curvature at ``θ*`` on the pool (it does not depend on the target)."""
        if self._curvature is None:
            task = self.task(self.problem.X_target, self.problem.y_target)
            X, y = self.problem.X_pool, self.problem.y_pool
            self._curvature = fit_curvature(
                self.config.curvature, task, task.theta(), X, y, len(X), self.config.damping
            )
        return self._curvature

    def shifts(self) -> Tensor:
        """``δ_c`` ``(C, p)`` of every candidate (they do not depend on the target)."""
        if self._shifts is None:
            task = self.task(self.problem.X_target, self.problem.y_target)
            X, y = self.problem.X_pool, self.problem.y_pool
            self._shifts = candidate_shifts(task, task.theta(), self.curvature(), X, y, len(X))
        return self._shifts

    def features(self) -> SelectionFeatures:
        """Influence features of the candidates for the whole target set, with Basu's factors."""
        path = self.dir / "features.safetensors"
        if path.exists():
            return SelectionFeatures.load(path)
        task = self.task(self.problem.X_target, self.problem.y_target)
        theta, X, y = task.theta(), self.problem.X_pool, self.problem.y_pool
        hf = target_curvature(task, theta, self.config.target_curvature)
        features = compute_features(task, theta, self.curvature(), X, y, len(X), hf, basu="ggn", shifts=self.shifts())
        features.save(path)
        return features

    def fold_features(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per fold ``j`` of the target set (``target_folds``): ``a_c^{(j)}`` ``(K, C)``, all
        ``δ_cᵀ H_f^{(j)} δ_c'`` ``(K, C, C)`` and the fold sizes ``(K,)``, with ``f^{(j)}`` the mean loss on
        fold ``j`` (cached). Any union of folds has the size-weighted means of these as its features, since
        ``∇f`` and ``H_f`` of a mean loss are means over its examples."""
        path = self.dir / f"target-folds-{self.config.scale_folds}.safetensors"
        if path.exists():
            saved = load_file(str(path))
            return saved["first_order"], saved["gram"], saved["sizes"]
        shifts, parts = self.shifts(), []
        for idx in target_folds(len(self.problem.X_target), self.config.scale_folds):
            task = self.task(self.problem.X_target[idx], self.problem.y_target[idx])
            hf = target_curvature(task, task.theta(), self.config.target_curvature)
            parts.append((shifts @ task.target.gradient(task, task.theta()), hf.matmul(shifts) @ shifts.T, len(idx)))
        first_order = torch.stack([p[0] for p in parts])
        gram = torch.stack([p[1] for p in parts])
        sizes = torch.tensor([float(p[2]) for p in parts], dtype=first_order.dtype)
        with atomic_path(path) as tmp:
            save_file({"first_order": first_order, "gram": gram, "sizes": sizes}, str(tmp))
        return first_order, gram, sizes

    def inputs(self, methods: list[str]) -> PoolInputs:
        """The ``PoolInputs`` that ``methods`` need, nothing more."""
        needs = {need for name in methods for need in METHODS[name].needs}
        task = self.task(self.problem.X_target, self.problem.y_target)
        values: dict[str, Any] = {"labels": self.problem.y_pool}
        if "features" in needs:
            values["features"] = self.features().with_gram_interactions()
        if "gradients" in needs:
            values["gradients"] = per_example_gradients(task, task.theta(), self.problem.X_pool, self.problem.y_pool)
        if "target_gradients" in needs:
            X_target, y_target = self.problem.X_target, self.problem.y_target
            values["target_gradients"] = per_example_gradients(task, task.theta(), X_target, y_target)
        if "embeddings" in needs:
            with torch.no_grad():
                values["embeddings"] = self.model[:-1](self.problem.X_pool)
        return PoolInputs(**values)


def subset_job(indices: np.ndarray | list[int], seed: int) -> tuple[str, dict]:
    """A retraining job and its key (the subset's content and the seed), so identical subsets train once."""
    chosen = sorted(int(i) for i in indices)
    return f"{settings_digest(chosen)}_s{seed}", {"indices": chosen, "seed": seed}


def choose_interaction_scale(
    analysis: PoolAnalysis, budgets: tuple[int, ...], retrain: Any
) -> dict[str, dict[str, Any]]:
    """F+I's ``α`` per budget, chosen on the target set alone by K-fold cross-fitting (module docstring).

    ``retrain(jobs)`` runs ``train_model`` jobs. Returns ``{str(k): {"chosen": α, "validation_loss":
    {α: mean held-out loss}, "validation_std": {α: std over folds and seeds}}}``; ties go to the ``α``
    nearest 1 (in log scale).
    """
    config = analysis.config
    first_order, gram, sizes = analysis.fold_features()
    eye = torch.eye(first_order.shape[1], dtype=gram.dtype)
    plan: dict[tuple[int, float], list[tuple[str, str]]] = {}
    jobs = {}
    for held in range(len(sizes)):
        weights = sizes.clone()
        weights[held] = 0
        weights /= weights.sum()
        interactions = InteractionFactors(torch.einsum("j,jcd->cd", weights, gram), eye)
        for alpha in config.scale_grid:
            order = greedy_select(weights @ first_order, max(budgets), interactions, interaction_scale=alpha)
            for k in budgets:  # with α fixed, each budget's greedy pick is a prefix of the largest's
                for seed in range(config.scale_seeds):
                    key, job = subset_job(order.indices[:k].numpy(), seed)
                    jobs[key] = job
                    plan.setdefault((k, alpha), []).append((key, str(held)))
    done = retrain(jobs)
    choice = {}
    for k in budgets:
        losses = {
            alpha: [done[key]["target_loss"][fold] for key, fold in plan[(k, alpha)]] for alpha in config.scale_grid
        }
        chosen = lowest_scale({alpha: float(np.mean(values)) for alpha, values in losses.items()})
        choice[str(k)] = {
            "chosen": chosen,
            "validation_loss": {f"{a:g}": float(np.mean(v)) for a, v in losses.items()},
            "validation_std": {f"{a:g}": float(np.std(v)) for a, v in losses.items()},
        }
    return choice


def select_all(
    config: SelectionEvalConfig, inputs: PoolInputs, scales: dict[str, float]
) -> dict[str, dict[str, list[np.ndarray]]]:
    """``{method: {str(k): [picks per draw]}}``: one draw for deterministic methods, one per seed for
    randomised ones. ``scales`` maps each budget to F+I's ``α``; where it is the same at every budget one
    greedy run serves all budgets (its prefixes), else each budget has its own run."""
    k_max = max(config.budgets)
    picks: dict[str, dict[str, list[np.ndarray]]] = {}
    for name in config.methods:
        method = METHODS[name]
        draws = range(config.seeds) if method.randomised else [0]
        varies = name == "F+I" and len(set(scales.values())) > 1
        if varies:
            picks[name] = {
                str(k): [run_method(name, inputs, k, s, scales[str(k)]).indices.numpy() for s in draws]
                for k in config.budgets
            }
            continue
        alpha = scales[str(k_max)] if name == "F+I" else 1.0
        orders = [run_method(name, inputs, k_max, s, alpha).indices.numpy() for s in draws]
        picks[name] = {str(k): [order[:k] for order in orders] for k in config.budgets}
    for alpha in config.scale_sweep:
        order = run_method("F+I", inputs, k_max, 0, alpha).indices.numpy()
        picks[sweep_name(alpha)] = {str(k): [order[:k]] for k in config.budgets}
    return picks


def seed_summary(runs: list[dict]) -> dict[str, float]:
    """Test loss (mean and std) and mean test accuracy over the retraining seeds of one subset."""
    losses = [run["test_loss"] for run in runs]
    return {
        "test_loss_mean": float(np.mean(losses)),
        "test_loss_std": float(np.std(losses)),
        "test_accuracy_mean": float(np.mean([run["test_accuracy"] for run in runs])),
    }


def run_selection_eval(config: SelectionEvalConfig, out: Path) -> dict:
    """Run the protocol; write ``results.json``, ``results.md`` and ``selection.png`` under
    ``out/<problem hash>/<features hash>/`` (returned as ``"out"``)."""
    problem, fingerprint = prepare_problem(config)
    config.check_budgets(len(problem.X_pool))
    shared = shared_data(config, problem)
    root = out / config.model_fingerprint(fingerprint)
    analysis = PoolAnalysis(config, problem, root)

    def retrain(jobs: dict) -> dict:
        return run_jobs(train_model, jobs, root / "retrain", shared, config.workers, desc="retraining subsets")

    scale_choice = None
    if config.interaction_scale == "auto" and "F+I" in config.methods:
        scale_choice = choose_interaction_scale(analysis, config.budgets, retrain)
        scales = {k: float(row["chosen"]) for k, row in scale_choice.items()}
    else:
        alpha = 1.0 if config.interaction_scale == "auto" else float(config.interaction_scale)
        scales = {str(k): alpha for k in config.budgets}
    names = config.method_names()
    picks = select_all(config, analysis.inputs(list(config.methods) + (["F+I"] if config.scale_sweep else [])), scales)

    keys: dict[tuple[str, str, int], str] = {}
    jobs = {}
    for name in names:
        for k in config.budgets:
            draws = picks[name][str(k)]
            for seed in range(config.seeds):
                keys[(name, str(k), seed)], job = subset_job(draws[seed % len(draws)], seed)
                jobs[keys[(name, str(k), seed)]] = job
    bound_subsets = {"no training": [], "full pool": range(len(problem.X_pool))}
    for bound, subset in bound_subsets.items():
        for seed in range(config.seeds):
            keys[(bound, "", seed)], job = subset_job(subset, seed)
            jobs[keys[(bound, "", seed)]] = job
    trained = retrain(jobs)
    seeds = range(config.seeds)
    bounds = {bound: seed_summary([trained[keys[(bound, "", s)]] for s in seeds]) for bound in bound_subsets}

    labels = problem.y_pool.numpy()
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        table[name] = {}
        for k in config.budgets:
            draws = picks[name][str(k)]
            purity = [problem.purity(d) for d in draws]
            row = seed_summary([trained[keys[(name, str(k), s)]] for s in range(config.seeds)]) | {
                "class_entropy": float(np.mean([class_entropy(labels[d], problem.num_classes) for d in draws])),
                "class_counts": np.mean([np.bincount(labels[d], minlength=problem.num_classes) for d in draws], axis=0)
                .astype(float)
                .tolist(),  # mean over the draws of randomised methods
                "purity": {key: float(np.mean([p[key] for p in purity])) for key in purity[0]},
            }
            if name == "F+I":
                row["interaction_scale"] = scales[str(k)]
            table[name][str(k)] = row
    results = {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "regime": config.regime.name,
        "max_entropy": float(np.log(problem.num_classes)),
        "bounds": bounds,
        "results": table,
        "interaction_scale": {"setting": config.interaction_scale, "per_budget": scales, "auto": scale_choice},
        "selections": {name: {k: [d.tolist() for d in v] for k, v in rows.items()} for name, rows in picks.items()},
        "pool_train_indices": problem.train_indices.tolist(),  # pool position -> training-set index
        "pool": {
            "size": len(problem.X_pool),
            "target_size": len(problem.X_target),
            "test_size": len(problem.X_test),
            "duplicate_of": problem.duplicate_of.tolist(),
            "mislabelled": np.flatnonzero(problem.mislabelled).tolist(),
        },
    }
    out_dir = analysis.dir
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_bytes(out_dir / "results.md", format_table(results).encode())
    plot(results, out_dir / "selection.png")
    return results | {"out": str(out_dir)}


def format_table(results: dict) -> str:
    """Markdown: test loss (mean ± std over seeds), class entropy and purity per method and budget, and the
    interaction scale of F+I per budget (with ``auto``'s validation losses)."""
    table = results["results"]
    budgets = list(next(iter(table.values())))
    header = ["| method | " + " | ".join(f"k={k}" for k in budgets) + " |", "|---|" + "---|" * len(budgets)]
    bounds = ", ".join(
        f"{name} {row['test_loss_mean']:.3f} ± {row['test_loss_std']:.3f}" for name, row in results["bounds"].items()
    )
    sections = [f"Regime: {results['regime']}", "", f"Test loss (mean ± std over seeds); bounds: {bounds}", ""]
    sections += header
    sections += [
        f"| {name} | "
        + " | ".join(f"{rows[k]['test_loss_mean']:.3f} ± {rows[k]['test_loss_std']:.3f}" for k in budgets)
        + " |"
        for name, rows in table.items()
    ]
    sections += ["", f"Class entropy (nats; uniform = {results['max_entropy']:.3f})", "", *header]
    sections += [
        f"| {name} | " + " | ".join(f"{rows[k]['class_entropy']:.3f}" for k in budgets) + " |"
        for name, rows in table.items()
    ]
    for key in next(iter(next(iter(table.values())).values()))["purity"]:
        sections += ["", key.replace("_", " ").capitalize(), "", *header]
        sections += [
            f"| {name} | " + " | ".join(f"{rows[k]['purity'][key]:.3f}" for k in budgets) + " |"
            for name, rows in table.items()
        ]
    scale = results["interaction_scale"]
    sections += [
        "",
        f"F+I interaction scale α ({scale['setting']}): "
        + ", ".join(f"k={k}: {alpha:g}" for k, alpha in scale["per_budget"].items()),
    ]
    if scale["auto"]:
        grid = list(next(iter(scale["auto"].values()))["validation_loss"])
        sections += ["", "Held-out target loss of F+I per α (auto's choice in bold)", ""]
        sections += ["| k | " + " | ".join(f"α={a}" for a in grid) + " |", "|---|" + "---|" * len(grid)]
        for k, row in scale["auto"].items():
            cells = [f"{row['validation_loss'][a]:.3f}" for a in grid]
            cells = [f"**{cell}**" if float(a) == row["chosen"] else cell for a, cell in zip(grid, cells, strict=True)]
            sections.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(sections) + "\n"


def plot(results: dict, path: Path) -> None:
    """Fig. 3-style panels: test loss vs budget (mean ± std), class entropy and the regime's first purity
    measure (when it has one) vs budget. F+I is drawn thick and black, the fixed-α sweep dashed."""
    table = results["results"]
    budgets = [int(k) for k in next(iter(table.values()))]
    purity_keys = list(table[next(iter(table))][str(budgets[0])]["purity"])
    fig, axes = figure(15 if purity_keys else 10, 4.2, columns=3 if purity_keys else 2)
    sweep = [name for name in table if name.startswith("F+I α=")]
    others = [name for name in table if name not in sweep and name != "F+I"]
    styles = {"F+I": {"color": "black", "linewidth": 2.5, "marker": "o", "zorder": 5}}
    for i, name in enumerate(others):
        styles[name] = {"color": f"C{i % 10}", "linewidth": 1.3, "marker": "sD^v<>pPX*h"[i % 11]}
    for i, name in enumerate(sweep):
        shade = matplotlib.colormaps["viridis"](i / max(1, len(sweep) - 1))
        styles[name] = {"color": shade, "linewidth": 1.0, "linestyle": "--", "marker": "."}
    for name, rows in table.items():
        style = {"label": name, **styles.get(name, {})}
        mean = np.array([rows[str(k)]["test_loss_mean"] for k in budgets])
        std = np.array([rows[str(k)]["test_loss_std"] for k in budgets])
        axes[0].errorbar(budgets, mean, yerr=std, capsize=3, **style)
        axes[1].plot(budgets, [rows[str(k)]["class_entropy"] for k in budgets], **style)
        if purity_keys:
            axes[2].plot(budgets, [rows[str(k)]["purity"][purity_keys[0]] for k in budgets], **style)
    for (name, bound), line in zip(results["bounds"].items(), (":", "-."), strict=True):
        axes[0].axhline(bound["test_loss_mean"], color="grey", linestyle=line, label=name)
    axes[1].axhline(results["max_entropy"], color="grey", linestyle=":", label="uniform entropy")
    axes[0].set(xlabel="budget k", ylabel="test loss", title=f"Test loss after retraining ({results['regime']})")
    axes[1].set(xlabel="budget k", ylabel="class entropy (nats)", title="Class entropy of the selection")
    if purity_keys:
        axes[2].set(xlabel="budget k", ylabel=purity_keys[0].replace("_", " "), title="Purity of the selection")
    for ax in axes:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(budgets, [str(k) for k in budgets])
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    uniform, uniform_label = axes[1].get_legend_handles_labels()
    handles, labels = handles + uniform[-1:], labels + uniform_label[-1:]
    axes[-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    save(fig, path)


def with_overrides(preset: str, **overrides: object) -> SelectionEvalConfig:
    """A preset with the given fields replaced (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})

"""Faithfulness to leave-group-out retraining (paper §4; docs/math.md §9).

Train, build nearest-neighbour groups in output space, retrain without each group for the ground
truth ``Δf(−G) = f(θ*_{D\\G}) − f(θ*)`` (``f`` = mean test loss) and rank-correlate every
estimator with it.

- ``lr`` (convex): L-BFGS to convergence; removing ``G`` minimises ``(1/n) Σ_{i∉G} l_i + (λ/2)‖θ‖²``
  (the ε = −1/n path of the influence derivation), warm-started from ``θ*``: the unique minimiser.
- ``mlp`` (non-convex): seeded minibatch SGD from scratch; the truth averages over ``seeds``, each
  retrained model paired with the full-data model of the same seed; estimates use the seed-0 model.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import spearmanr
from torch import Tensor, nn
from tqdm.auto import tqdm

from groupinf.baselines import tracin_scores, trak_scores
from groupinf.checks import check_count, check_fields
from groupinf.curvature import Damping, check_damping, fit_curvature
from groupinf.curvature.dense import exact_hessian
from groupinf.data import Dataset, load_dataset
from groupinf.data.transforms import standardize
from groupinf.digests import settings_digest
from groupinf.experiments.class_pairs import class_pair_interactions
from groupinf.experiments.common import as_tensors
from groupinf.experiments.figures import class_pair_figure, image_view
from groupinf.experiments.jobs import run_jobs
from groupinf.files import atomic_path, atomic_write_json
from groupinf.groups import check_group_settings, group_sums, nearest_neighbour_groups, validate_groups
from groupinf.influence import GroupInfluence
from groupinf.models import linear_model, loss_for, mlp, resnet9, weight_parameters
from groupinf.target import LINEAR_TARGET_CURVATURE, NETWORK_TARGET_CURVATURE, TARGET_KINDS, TargetKind, mean_loss
from groupinf.task import Task
from groupinf.training import SGDConfig, fit_convex, is_positive_definite, train_sgd

INFLUENCE_METHODS = ("F", "F+I", "F+B", "F+I+B")
METHODS = (*INFLUENCE_METHODS, "TRAK", "TracIn")
#: ``H_f`` when none is given, per model kind; docs/math.md §7 gives the measurements behind the networks'
#: choice. A linear model is one layer whose Hessian is its Gauss–Newton matrix: every kind is the same there.
DEFAULT_TARGET_CURVATURE: dict[str, TargetKind] = {
    "lr": LINEAR_TARGET_CURVATURE,
    "mlp": NETWORK_TARGET_CURVATURE,
    "resnet9": NETWORK_TARGET_CURVATURE,
}


@dataclass(frozen=True)
class FaithfulnessConfig:
    """Settings of one faithfulness run (the CLI flags)."""

    data: str = "digits"
    data_dir: str | None = None
    model: str = "lr"
    hidden: tuple[int, ...] = (32, 32)
    width: int = 64  # ResNet-9 base width
    groups: int = 50
    group_size: int | None = None  # default: 5 % of the training set (anchor included)
    seed: int = 0
    draws: int = 1  # independent anchor draws, seeds seed, seed + 1, …
    distinct_groups: bool = False
    damping: Damping = 0.0
    curvature: str = "exact"
    target_curvature: str | None = None  # None: DEFAULT_TARGET_CURVATURE of the model kind
    l2: float = 0.01
    sgd: SGDConfig = field(default_factory=SGDConfig)
    seeds: int = 3
    workers: int = 2
    max_train: int | None = None
    max_test: int | None = None
    methods: tuple[str, ...] = METHODS
    trak_dim: int = 512
    tracin_checkpoints: int = 5
    damping_sweep: tuple[float, ...] = ()
    class_pairs: bool = False

    def __post_init__(self) -> None:
        check_damping(self.damping)
        for value in self.damping_sweep:
            check_damping(value)
        check_fields(self)
        for name in ("max_train", "max_test", "group_size", "width", "trak_dim"):
            if getattr(self, name) is not None:
                check_count(getattr(self, name), name)
        if self.model not in ("lr", "mlp", "resnet9"):
            raise ValueError(f"model must be 'lr', 'mlp' or 'resnet9', got {self.model!r}")
        if self.target_curvature is not None and self.target_curvature not in TARGET_KINDS:
            raise ValueError(f"target curvature must be one of {TARGET_KINDS}, got {self.target_curvature!r}")
        if self.groups < 2:
            raise ValueError(f"a rank correlation needs at least 2 groups, got {self.groups}")
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
        if self.seeds < 1 or self.workers < 1 or self.tracin_checkpoints < 1:
            raise ValueError("seeds, workers and tracin_checkpoints must be >= 1")

    @property
    def retrain_seeds(self) -> int:
        return 1 if self.model == "lr" else self.seeds

    @property
    def target_kind(self) -> str:
        """The ``H_f`` used: ``target_curvature``, or the model kind's default."""
        return self.target_curvature or DEFAULT_TARGET_CURVATURE[self.model]

    def fingerprint(self, data_fingerprint: str) -> str:
        """A short hash of the settings and the (standardised) data that change the trained models and groups.

        ``draws`` is left out: draw ``r`` always has anchor seed ``seed + r``, so more draws only append groups.
        """
        keys = ("data", "data_dir", "model", "hidden", "width", "groups", "group_size", "seed", "distinct_groups", "l2")
        keys += ("sgd", "seeds", "max_train", "max_test")
        settings = {k: getattr(self, k) for k in keys} | {"data_fingerprint": data_fingerprint}
        return settings_digest(settings)


def subsample(data: Dataset, max_train: int | None, max_test: int | None, seed: int = 0) -> Dataset:
    """At most ``max_train``/``max_test`` examples of each split, drawn uniformly with ``seed``."""
    rng = np.random.default_rng(seed)

    def take(X: np.ndarray, y: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
        if limit is None or limit >= len(X):
            return X, y
        idx = np.sort(rng.choice(len(X), limit, replace=False))
        return X[idx], y[idx]

    X_train, y_train = take(data.X_train, data.y_train, max_train)
    X_test, y_test = take(data.X_test, data.y_test, max_test)
    return replace(data, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)


def load_raw(config: FaithfulnessConfig) -> Dataset:
    """The configured data set, subsampled, before standardisation."""
    return subsample(load_dataset(config.data, config.data_dir), config.max_train, config.max_test)


def build_task(data: Dataset, l2: float) -> tuple[Task, dict[str, Tensor]]:
    """A float64 linear model with its loss, targeting the mean test loss; returns the task and tensors."""
    tensors = as_tensors(data, torch.float64)
    torch.manual_seed(0)
    model, loss = linear_model(data.X_train.shape[1], data.num_classes, data.kind)
    task = Task(model.double(), loss, l2, mean_loss(tensors["X_test"], tensors["y_test"]))
    return task, tensors


def retrain_convex_job(shared: dict, job: list[int]) -> dict:
    """Convex models: the mean test loss ``f(θ*_{D\\G})`` after L-BFGS without the examples ``job``,
    warm-started from ``shared["theta"]`` and preconditioned by the Hessian there."""
    task, X = shared["task"], shared["X_train"]
    weights = torch.ones(len(X), dtype=X.dtype)
    weights[torch.as_tensor(job)] = 0.0
    theta_minus = fit_convex(
        task, shared["theta"], X, shared["y_train"], len(X), weights=weights, hessian=shared["hessian"]
    )
    return {"f": task.target.value(task, theta_minus).item()}


def group_key(m: int, group: np.ndarray) -> str:
    """``g<m>_<hash of the indices>``: a cached result can only be reused for the very same group."""
    return f"g{m:04d}_{settings_digest(group.tolist())[:12]}"


def retraining_truth(
    task: Task, theta: Tensor, tensors: dict[str, Tensor], groups: list[np.ndarray], cache_dir: Path
) -> list[float]:
    """Convex models: ``Δf(−G)`` per group, resumable (``run_jobs`` in this process: each L-BFGS is fast)."""
    X, y = tensors["X_train"], tensors["y_train"]
    hessian = exact_hessian(task, theta, X, y, len(X))
    # Preconditioning needs a positive-definite Hessian. A singular one (no L2, a constant feature) leaves
    # plain L-BFGS to find the minimiser, and the estimators then report the singularity.
    preconditioner = hessian if is_positive_definite(hessian) else None
    shared = {"task": task, "theta": theta, "X_train": X, "y_train": y, "hessian": preconditioner}
    jobs = {group_key(m, group): group.tolist() for m, group in enumerate(groups)}
    values = run_jobs(retrain_convex_job, jobs, cache_dir, shared, desc="retraining")
    base = task.target.value(task, theta).item()
    return [values[key]["f"] - base for key in jobs]


def network(config: FaithfulnessConfig, num_features: int, num_outputs: int) -> nn.Module:
    """The MLP (``num_features`` inputs) or ResNet-9 (``num_features`` input channels)."""
    if config.model == "resnet9":
        return resnet9(num_features, num_outputs, config.width)
    return mlp(num_features, num_outputs, config.hidden)


def train_network_job(shared: dict, job: dict) -> dict:
    """Train the MLP from scratch with ``job["seed"]`` without ``job["exclude"]``; the mean test loss.

    Full-data jobs save the model (``job["save"]``) and, for TracIn, checkpoints with their learning
    rates (``job["checkpoints"]``) before returning, so a cached result implies the files exist.
    """
    config: FaithfulnessConfig = shared["config"]
    X, y = shared["X_train"], shared["y_train"]
    keep = torch.ones(len(X), dtype=torch.bool)
    keep[torch.as_tensor(job["exclude"], dtype=torch.long)] = False
    torch.manual_seed(job["seed"])
    model = network(config, X.shape[1], shared["num_outputs"])
    loss = loss_for(shared["kind"], shared["num_outputs"])
    saved: list[dict] = []
    every = max(1, config.sgd.epochs // config.tracin_checkpoints)

    def checkpoint(epoch: int, lr: float) -> None:
        if job.get("checkpoints") and (epoch + 1) % every == 0:
            path = Path(job["checkpoints"]) / f"epoch_{epoch + 1:04d}.safetensors"
            with atomic_path(path) as tmp:
                save_file(model.state_dict(), str(tmp))
            saved.append({"path": path.name, "lr": lr})

    train_sgd(model, loss, X[keep], y[keep], config.sgd, seed=job["seed"], on_epoch_end=checkpoint)
    if job.get("checkpoints"):
        atomic_write_json(Path(job["checkpoints"]) / "index.json", saved)
    if job.get("save"):
        with atomic_path(job["save"]) as tmp:
            save_file(model.state_dict(), str(tmp))
    with torch.no_grad():
        model = model.double()
        value = loss(model(shared["X_test"].double()), shared["y_test"]).mean().item()
    return {"f": value}


def full_model_jobs(config: FaithfulnessConfig, models: Path, seeds: range) -> dict[str, dict]:
    """Jobs training the full-data model of each seed; seed 0 also keeps TracIn checkpoints."""
    jobs = {f"full_s{s}": {"seed": s, "exclude": [], "save": str(models / f"full_s{s}.safetensors")} for s in seeds}
    if 0 in seeds:
        jobs["full_s0"]["checkpoints"] = str(models / "checkpoints_s0")
    return jobs


def network_ground_truth(config: FaithfulnessConfig, shared: dict, groups: list[np.ndarray], work: Path) -> np.ndarray:
    """``Δf(−G)`` of every group under every seed ``(M, seeds)`` (each retraining paired with the full-data
    model of its seed), resumable, in worker processes; the ground truth is the mean over seeds."""
    jobs = full_model_jobs(config, work / "models", range(config.seeds))
    for m, group in enumerate(groups):
        jobs |= {f"g{m:04d}_s{s}": {"seed": s, "exclude": group.tolist()} for s in range(config.seeds)}
    values = run_jobs(train_network_job, jobs, work / "retrain", shared, config.workers, desc="retraining")
    return np.array(
        [
            [values[f"g{m:04d}_s{s}"]["f"] - values[f"full_s{s}"]["f"] for s in range(config.seeds)]
            for m in range(len(groups))
        ]
    )


def seed_agreement(per_seed: np.ndarray) -> dict[str, float]:
    """How repeatable a seed-averaged ground truth is, from ``per_seed`` ``(M groups, S ≥ 2 seeds)``.

    ``pairwise``: the mean Spearman ``r``, over pairs of seeds, between two seeds' effects on the M groups;
    ``reliability``: the Spearman–Brown reliability of the S-seed mean, ``S·r / (1 + (S − 1)·r)`` with ``r``
    clipped at 0 (seeds that disagree carry no repeatable ranking). An
    estimator that ranked the expected effects perfectly would reach a Spearman of only about
    ``√reliability`` with the noisy mean: the ceiling to read every method's correlation against.
    """
    num_seeds = per_seed.shape[1]
    if num_seeds < 2:
        raise ValueError(f"seed agreement needs at least 2 seeds, got {num_seeds}")
    pairs = [(a, b) for a in range(num_seeds) for b in range(a + 1, num_seeds)]
    r = float(np.mean([spearmanr(per_seed[:, a], per_seed[:, b]).statistic for a, b in pairs]))
    positive = max(r, 0.0)
    return {"pairwise": r, "reliability": num_seeds * positive / (1 + (num_seeds - 1) * positive)}


def load_network(config: FaithfulnessConfig, shared: dict, path: Path) -> nn.Module:
    """A saved network in float64 eval mode; parameters that are not attributed (ResNet-9's
    normalisation layers) are frozen, so they are constants of every influence computation."""
    model = network(config, shared["X_train"].shape[1], shared["num_outputs"])
    model.load_state_dict(load_file(str(path)))
    if config.model == "resnet9":
        attributed = set(weight_parameters(model))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in attributed)
    return model.double().eval()


def draw_groups(config: FaithfulnessConfig, embedding: np.ndarray, group_size: int) -> list[np.ndarray]:
    """``config.draws`` draws of ``config.groups`` nearest-neighbour groups, draw ``r`` with anchor seed
    ``config.seed + r``, concatenated: draw ``r`` holds groups ``r·groups … (r + 1)·groups − 1``."""
    return [
        group
        for r in range(config.draws)
        for group in nearest_neighbour_groups(
            embedding, config.groups, group_size, config.seed + r, config.distinct_groups
        )
    ]


def spearman(estimates: dict[str, np.ndarray], truth: list[float]) -> dict[str, float]:
    return {k: float(spearmanr(v, truth).statistic) for k, v in estimates.items()}


def spearman_by_draw(estimates: dict[str, np.ndarray], truth: list[float], draws: int) -> list[dict[str, float]]:
    """The Spearman correlation of every method within each draw (equal consecutive blocks of groups)."""
    size = len(truth) // draws
    blocks = [slice(r * size, (r + 1) * size) for r in range(draws)]
    return [spearman({k: v[b] for k, v in estimates.items()}, truth[b]) for b in blocks]


def summarise_draws(per_draw: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per method: the mean, standard deviation, minimum and maximum of its Spearman over draws."""
    return {
        method: {
            "mean": float(np.mean(values)),
            "std": float(np.std(values)),
            "min": float(np.min(values)),
            "max": float(np.max(values)),
        }
        for method in per_draw[0]
        for values in [[draw[method] for draw in per_draw]]
    }


def influence_estimates(
    config: FaithfulnessConfig, task: Task, theta: Tensor, tensors: dict[str, Tensor], groups: list, damping: Damping
) -> tuple[dict[str, np.ndarray], GroupInfluence]:
    X, y = tensors["X_train"], tensors["y_train"]
    curvature = fit_curvature(config.curvature, task, theta, X, y, len(X), damping)
    group_hessian = "exact" if config.curvature == "exact" else "ggn"
    influence = GroupInfluence(task, theta, X, y, curvature, hf=config.target_kind, group_hessian=group_hessian)
    wanted = [m for m in config.methods if m in INFLUENCE_METHODS]
    basu = any("B" in m for m in wanted)
    estimates = influence.estimate(groups, basu=basu)
    return {k: estimates[k].detach().numpy() for k in wanted}, influence


def run_faithfulness(config: FaithfulnessConfig, out: Path) -> dict:
    """Run the protocol; write ``out/results.json``, ``out/results.md`` and figures; return the results."""
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    raw = load_raw(config)
    data = standardize(raw, flatten=config.model != "resnet9")
    work = out / "work" / config.fingerprint(data.fingerprint())
    tensors = as_tensors(data, torch.float64)
    X, y = tensors["X_train"], tensors["y_train"]
    n = len(X)

    start = time.perf_counter()
    group_size = config.group_size or max(2, round(0.05 * n))
    check_group_settings(config.groups, group_size, n)
    if config.class_pairs and data.kind != "classification":
        raise ValueError(f"the class-pair analysis needs a classification data set; {config.data} is {data.kind}")
    if config.model == "lr":
        task, _ = build_task(data, config.l2)
        theta = fit_convex(task, task.theta(), X, y, n)
        checkpoints, thetas = [(theta, 1.0)], [theta]
        embedding = task.loss.predictions(task.outputs(theta, X)).detach().numpy()
        groups = draw_groups(config, embedding, group_size)
        timings["train"] = time.perf_counter() - start
        start = time.perf_counter()
        truth = retraining_truth(task, theta, tensors, groups, work / "retrain")
        per_seed = None  # deterministic: convex, warm-started
    else:
        shared = {
            "config": config,
            "X_train": tensors["X_train"].float(),
            "y_train": tensors["y_train"] if data.kind == "classification" else tensors["y_train"].float(),
            "X_test": tensors["X_test"],
            "y_test": tensors["y_test"],
            "num_outputs": data.num_classes,
            "kind": data.kind,
        }
        # The seed-0 full model defines θ* and the groups, so it is trained first (cached like every job).
        models = work / "models"
        run_jobs(train_network_job, full_model_jobs(config, models, range(1)), work / "retrain", shared, 1)
        model = load_network(config, shared, models / "full_s0.safetensors")
        target = mean_loss(tensors["X_test"], tensors["y_test"])
        # Only parameters that require grad are attributed: ResNet-9's normalisation layers are frozen.
        task = Task(model, loss_for(data.kind, data.num_classes), config.l2, target)
        theta = task.theta()
        embedding = task.loss.predictions(task.outputs(theta, X)).detach().numpy()
        groups = draw_groups(config, embedding, group_size)
        timings["train"] = time.perf_counter() - start
        start = time.perf_counter()
        per_seed = network_ground_truth(config, shared, groups, work)
        truth = per_seed.mean(axis=1).tolist()
        thetas = [
            task.space.current(load_network(config, shared, models / f"full_s{s}.safetensors"))
            for s in range(config.seeds)
        ]
        index = json.loads((models / "checkpoints_s0" / "index.json").read_text())
        checkpoints = [
            (task.space.current(load_network(config, shared, models / "checkpoints_s0" / c["path"])), c["lr"])
            for c in index
        ]
    timings["retrain"] = time.perf_counter() - start

    runtimes: dict[str, float] = {}
    start = time.perf_counter()
    estimates, influence = influence_estimates(config, task, theta, tensors, groups, config.damping)
    runtimes["F+I and F+B family"] = time.perf_counter() - start
    valid = validate_groups(groups, n)
    if "TRAK" in config.methods:
        start = time.perf_counter()
        scores = trak_scores(task, thetas, X, y, config.trak_dim, seed=config.seed)
        estimates["TRAK"] = group_sums(valid, scores).numpy()
        runtimes["TRAK"] = time.perf_counter() - start
    if "TracIn" in config.methods:
        start = time.perf_counter()
        scores = tracin_scores(task, checkpoints, X, y)
        estimates["TracIn"] = group_sums(valid, scores).numpy()
        runtimes["TracIn"] = time.perf_counter() - start

    per_draw = spearman_by_draw(estimates, truth, config.draws)
    summary = summarise_draws(per_draw)
    results = {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "n_train": n,
        "group_size": group_size,
        "damping": influence.curvature.damping,
        "target_curvature": config.target_kind,
        # One draw: its Spearman; several: the mean over draws, each draw's in spearman_per_draw.
        "spearman": {method: stats["mean"] for method, stats in summary.items()},
        "runtime_s": timings | {"methods": runtimes},
        "groups": [
            {
                "indices": g.tolist(),
                "truth": t,
                "estimates": {k: float(v[m]) for k, v in estimates.items()},
                "anchor_seed": config.seed + m // config.groups,
            }
            for m, (g, t) in enumerate(zip(groups, truth, strict=True))
        ],
    }
    if config.draws > 1:
        results["spearman_per_draw"] = [
            {"anchor_seed": config.seed + r, "spearman": values} for r, values in enumerate(per_draw)
        ]
        results["spearman_summary"] = summary
    if per_seed is not None:
        for record, effects in zip(results["groups"], per_seed, strict=True):
            record["truth_per_seed"] = effects.tolist()
        if per_seed.shape[1] >= 2:
            results["truth_seed_agreement"] = seed_agreement(per_seed)
    if config.damping_sweep:
        sweep = {}
        for value in tqdm(config.damping_sweep, desc="damping sweep"):
            swept, _ = influence_estimates(config, task, theta, tensors, groups, value)
            swept_summary = summarise_draws(spearman_by_draw(swept, truth, config.draws))
            sweep[str(value)] = {method: stats["mean"] for method, stats in swept_summary.items()}
        results["damping_sweep"] = sweep
    if config.class_pairs:
        pairs = class_pair_interactions(influence.shifts, influence.hf, y, data.num_classes)
        results["class_pairs"] = {"average": pairs.average.tolist(), "lowest": pairs.lowest, "highest": pairs.highest}
        class_pair_figure(
            pairs.average,
            [str(c) for c in range(data.num_classes)],
            {"lowest J": pairs.lowest, "highest J": pairs.highest},
            image_view(raw.X_train),
            data.y_train,
            out / "class_pairs.png",
        )
    atomic_write_json(out / "results.json", results)
    write_report(results, out)
    return results


def format_table(results: dict) -> str:
    """A markdown table of the Spearman correlations and each method's run time (with several draws: their
    mean, spread and a table of every draw; with a damping sweep: its table)."""
    runtimes = results["runtime_s"]["methods"]
    summary = results.get("spearman_summary")
    if summary is None:
        lines = ["| method | Spearman | run time (s) |", "|---|---|---|"]
    else:
        draws = len(results["spearman_per_draw"])
        lines = [
            f"| method | Spearman, mean of {draws} draws | std | min | max | run time (s) |",
            "|---|---|---|---|---|---|",
        ]
    for method, value in results["spearman"].items():
        seconds = runtimes.get(method, runtimes.get("F+I and F+B family"))
        spread = "" if summary is None else " {std:.4f} | {min:.4f} | {max:.4f} |".format(**summary[method])
        lines.append(f"| {method} | {value:.4f} |{spread} {seconds:.2f} |")
    if summary is not None:
        methods = list(results["spearman"])
        lines += ["", "| anchor seed | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for draw in results["spearman_per_draw"]:
            cells = " | ".join(f"{draw['spearman'][m]:.4f}" for m in methods)
            lines.append(f"| {draw['anchor_seed']} | {cells} |")
    if "damping_sweep" in results:
        sweep = results["damping_sweep"]
        methods = list(next(iter(sweep.values())))
        lines += ["", "damping sweep: Spearman at each ρ", "", "| ρ | " + " | ".join(methods) + " |"]
        lines.append("|---" * (len(methods) + 1) + "|")
        lines += [f"| {rho} | " + " | ".join(f"{row[m]:.4f}" for m in methods) + " |" for rho, row in sweep.items()]
    agreement = results.get("truth_seed_agreement")
    if agreement is not None:
        ceiling = max(agreement["reliability"], 0.0) ** 0.5
        lines.append(
            f"\nground truth: two seeds agree at Spearman {agreement['pairwise']:.3f}; the seed mean's reliability is "
            f"{agreement['reliability']:.3f}, so a perfect estimator would reach about {ceiling:.3f}"
        )
    return "\n".join(lines)


def write_report(results: dict, out: Path) -> None:
    """``results.md`` (the table) and ``spearman.png`` (Fig. 1-style bars; the damping sweep if run)."""
    from groupinf.experiments.figures import damping_sweep_plot, spearman_bars

    config = results["config"]
    title = f"{config['data']} / {config['model']}"
    header = f"# Faithfulness: {title}\n\n{results['n_train']} training examples, {len(results['groups'])} groups"
    header += f" of {results['group_size']}, damping {results['damping']:.3g}, H_f {results['target_curvature']}\n\n"
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(header + format_table(results) + "\n")
    spearman_bars({title: results["spearman"]}, out / "spearman.png")
    if "damping_sweep" in results:
        damping_sweep_plot(results["damping_sweep"], title, out / "damping_sweep.png")

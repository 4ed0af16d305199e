"""EK-FAC influence scores: groupinf against Kronfluence on a FashionMNIST MLP, in one run.

    PYTHONPATH=src /work/main/.venv-bench/bin/python benchmarks/ekfac_vs_kronfluence.py

(the interpreter needs torch, kronfluence, scipy and groupinf's dependencies; Kronfluence is never installed
into the project's ``.venv``). What it does:

1. reads FashionMNIST from the Debian package ``dataset-fashion-mnist`` (IDX files), takes the first
   ``--train`` training images and the first ``--queries`` test images, standardises the pixels;
2. trains a 784-128-128-10 ReLU MLP (float32, Adam, a few epochs) and saves it with the data;
3. runs each library in its own subprocess (same interpreter, same torch build, same thread count): fit
   EK-FAC on the training set, then score every query against every training example,
   ``score[q, i] = ∇l_qᵀ (G + ρI)⁻¹ ∇l_i`` with the unscaled per-example cross-entropy, ``G`` the EK-FAC of the
   EMPIRICAL Fisher and the heuristic damping ``ρ_ℓ = 0.1 · mean(Λ_ℓ)`` per layer in both (no L2 term);
4. prints the wall-time and peak-memory ratios and the Spearman/Pearson correlations of the two
   ``queries × train`` score matrices, and groupinf's time over the physical limit of its scoring: the same
   matrix products on random numbers, on the same kernel and in the same batches (``product_floor``), timed
   in the groupinf worker after its scores.

Precision, as configured: Kronfluence's defaults (covariances, Λ, per-sample gradients and
preconditioning in float32, eigendecompositions in float64); groupinf likewise: ``dtype=float32`` for the
covariance and Λ sums, float64 eigendecompositions, ``compute_dtype=float32`` for the preconditioning.
Both run single-threaded by default (``--threads``): on a shared 2-core machine multi-threaded LAPACK
calls (eigh) slowed down by 10-50x under contention and made the timings meaningless.

Memory is the peak resident set size of each worker process (``VmHWM`` from ``/proc``), reported in total
and above the worker's RSS after imports, model and data are loaded; tracemalloc would miss torch's
allocations. Wall time covers fitting and scoring only (not imports, data or training).

Measured results, with the commits, loads and the profile of where the time goes: docs/results.md §3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def load_fashion_mnist(num_train: int, num_queries: int) -> tuple[torch.Tensor, ...]:
    """The first ``num_train`` training and ``num_queries`` test images (standardised pixels) and labels."""
    from groupinf.data import load_fashion_mnist as load

    data = load()  # a clear error naming the files and `apt-get install dataset-fashion-mnist` if missing
    X = data.X_train[:num_train].reshape(num_train, -1)
    Xq = data.X_test[:num_queries].reshape(num_queries, -1)
    mean, std = X.mean(), X.std()
    return (
        torch.from_numpy((X - mean) / std),
        torch.from_numpy(data.y_train[:num_train]),
        torch.from_numpy((Xq - mean) / std),
        torch.from_numpy(data.y_test[:num_queries]),
    )


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=gen)
        for start in range(0, len(X), 128):
            idx = order[start : start + 128]
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return F.cross_entropy(model(X), y).item()


def memory() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


# ----------------------------------------------------------------------------------------------- workers


def product_floor(model: nn.Module, queries: int, train: int, batch_size: int) -> float:
    """Seconds for the products any exact EK-FAC scoring makes: per Linear layer, ``queries`` preconditioned
    ``(d_out, in + 1)`` matrices against every training example's layer input, ``queries · d_out · (in + 1)``
    multiply-adds per example, on the same kernel and in the same batches as ``influence_scores``
    (``groupinf.matmul.FixedMatrix``), random float32 numbers, nothing else (no rotation, no weighting)."""
    from groupinf.curvature.factored import QUERY_CHUNK
    from groupinf.matmul import FixedMatrix

    gen = torch.Generator().manual_seed(0)
    work = []
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        columns = layer.in_features + 1
        rows = torch.randn(queries * layer.out_features, columns, generator=gen)
        inputs = [torch.randn(min(batch_size, train - i), columns, generator=gen) for i in range(0, train, batch_size)]
        work.append(([FixedMatrix(chunk) for chunk in rows.split(QUERY_CHUNK * layer.out_features)], inputs))
    start = time.perf_counter()
    for chunks, inputs in work:
        for x in inputs:
            for chunk in chunks:
                chunk(x)
    return time.perf_counter() - start


def run_groupinf(setup: dict, batch_size: int) -> tuple[np.ndarray, dict]:
    from groupinf.curvature import EKFACCurvature, fit_factors, influence_scores, tensor_batches
    from groupinf.losses import CrossEntropy
    from groupinf.target import mean_loss
    from groupinf.task import Task

    model = make_model()
    model.load_state_dict(setup["model"])
    model.eval()
    X, y, Xq, yq = setup["X"], setup["y"], setup["Xq"], setup["yq"]
    task = Task(model, CrossEntropy(), 0.0, mean_loss(Xq, yq))
    theta = task.theta()
    data = tensor_batches(X, y, batch_size)
    before = memory()
    start = time.perf_counter()
    factors = fit_factors(task, theta, data, fisher="empirical", dtype=torch.float32)
    covariances = time.perf_counter()
    factors.eigenbases  # noqa: B018 - computed once and cached
    eigen = time.perf_counter()
    curvature = EKFACCurvature.from_factors(
        factors, task, theta, data, damping="heuristic", dtype=torch.float32, compute_dtype=torch.float32
    )
    fitted = time.perf_counter()
    # (Q, N) in the eigenbasis: no per-example gradient, no dense query gradient, no rotation back
    scores = influence_scores(task, theta, tensor_batches(Xq, yq, batch_size), data, curvature)
    done = time.perf_counter()
    info = {"fit_s": fitted - start, "score_s": done - fitted, "total_s": done - start}
    info["stages_s"] = {"covariances": covariances - start, "eigh": eigen - covariances, "lambda": fitted - eigen}
    info["damping"] = dict(zip([b.name for b in curvature.layout.blocks], curvature.layer_damping, strict=True))
    info["product_floor_s"] = product_floor(model, len(Xq), len(X), batch_size)
    return scores.numpy(), {**info, "rss_before_mib": before["VmRSS"]}


def run_kronfluence(setup: dict, batch_size: int, workdir: Path) -> tuple[np.ndarray, dict]:
    from torch.utils.data import TensorDataset

    from benchmarks import _kronfluence as kronfluence

    model = make_model()
    model.load_state_dict(setup["model"])
    model.eval()
    analyzer = kronfluence.analyzer(model, workdir)
    train_set = TensorDataset(setup["X"], setup["y"])
    query_set = TensorDataset(setup["Xq"], setup["yq"])
    before = memory()
    start = time.perf_counter()
    stages = kronfluence.fit_ekfac(analyzer, train_set, batch_size, empirical=True)
    fitted = time.perf_counter()
    # damping None: the heuristic 0.1 × mean(Λ) per module
    scores = kronfluence.pairwise_scores(analyzer, query_set, train_set, batch_size, damping=None)
    done = time.perf_counter()
    info = {"fit_s": fitted - start, "score_s": done - fitted, "total_s": done - start, "stages_s": stages}
    return scores, {**info, "rss_before_mib": before["VmRSS"]}


def worker(library: str, workdir: Path, batch_size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    setup = torch.load(workdir / "setup.pt")
    if library == "groupinf":
        scores, info = run_groupinf(setup, batch_size)
    else:
        scores, info = run_kronfluence(setup, batch_size, workdir)
    info["rss_peak_mib"] = memory()["VmHWM"]
    np.save(workdir / f"{library}.npy", scores)
    (workdir / f"{library}.json").write_text(json.dumps(info))


# ----------------------------------------------------------------------------------------------- driver


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["groupinf", "kronfluence"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.workdir, args.batch_size, args.threads)
        return

    from scipy.stats import pearsonr, spearmanr

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    X, y, Xq, yq = load_fashion_mnist(args.train, args.queries)
    model = make_model()
    loss = train(model, X, y, args.epochs, args.seed)
    print(f"MLP 784-128-128-10 trained {args.epochs} epochs on {len(X)} FashionMNIST images: train loss {loss:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        torch.save({"model": model.state_dict(), "X": X, "y": y, "Xq": Xq, "yq": yq}, workdir / "setup.pt")
        results = {}
        # the workers run this file as a script: put the repository root on their path (benchmarks._kronfluence)
        env = os.environ.copy()
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
        for library in ("groupinf", "kronfluence"):
            command = [sys.executable, __file__, "--worker", library, "--workdir", str(workdir)]
            command += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            subprocess.run(command, check=True, env=env)
            info = json.loads((workdir / f"{library}.json").read_text())
            results[library] = (np.load(workdir / f"{library}.npy"), info)
            peak, base = info["rss_peak_mib"], info["rss_before_mib"]
            stages = ", ".join(f"{k} {v:.2f} s" for k, v in info["stages_s"].items())
            print(
                f"{library:12s} fit {info['fit_s']:7.2f} s  score {info['score_s']:7.2f} s  "
                f"total {info['total_s']:7.2f} s  peak RSS {peak:7.0f} MiB (+{peak - base:.0f} over {base:.0f} "
                f"MiB after loading)\n{'':12s} fit stages: {stages}",
                flush=True,
            )
    (ours, mine), (theirs, kron) = results["groupinf"], results["kronfluence"]
    print("groupinf per-layer damping:", {k: f"{v:.3g}" for k, v in mine["damping"].items()})
    print(f"scores: {ours.shape[0]} queries x {ours.shape[1]} training examples")
    print(f"wall time   groupinf / Kronfluence: total {mine['total_s'] / kron['total_s']:.3f}, "
          f"fit {mine['fit_s'] / kron['fit_s']:.3f}, score {mine['score_s'] / kron['score_s']:.3f}")  # fmt: skip
    floor = mine["product_floor_s"]
    print(f"groupinf's scoring / the products alone ({floor:.2f} s, same kernel and batches): "
          f"{mine['score_s'] / floor:.3f}; total / products: {mine['total_s'] / floor:.3f}")  # fmt: skip
    extra_ours = mine["rss_peak_mib"] - mine["rss_before_mib"]
    extra_theirs = kron["rss_peak_mib"] - kron["rss_before_mib"]
    print(f"peak RSS    groupinf / Kronfluence: {mine['rss_peak_mib'] / kron['rss_peak_mib']:.3f} "
          f"(above the loaded baseline: {extra_ours / max(extra_theirs, 1e-9):.3f})")  # fmt: skip
    flat_ours, flat_theirs = ours.ravel().astype(np.float64), theirs.ravel().astype(np.float64)
    per_query = [spearmanr(a, b).statistic for a, b in zip(ours, theirs, strict=True)]
    print(f"Spearman (all pairs) {spearmanr(flat_ours, flat_theirs).statistic:.6f}")
    print(f"Pearson  (all pairs) {pearsonr(flat_ours, flat_theirs).statistic:.6f}")
    print(f"Spearman per query   mean {np.mean(per_query):.6f}, min {np.min(per_query):.6f}")
    rel = np.linalg.norm(flat_ours - flat_theirs) / np.linalg.norm(flat_theirs)
    print(f"relative difference ‖groupinf − Kronfluence‖/‖Kronfluence‖ = {rel:.3g}")


if __name__ == "__main__":
    main(sys.argv[1:])

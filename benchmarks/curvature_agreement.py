"""How well K-FAC and EK-FAC (groupinf's and Kronfluence's) reproduce the dense damped curvature's scores.

A 64-32-32-10 MLP trained by SGD (Table 3 settings) on scikit-learn's digits, float64, the task's L2
strength ``λ = 0.01``; every curvature is fitted on all ``n`` training examples and scores
``∇l_qᵀ (H + ρI)⁻¹ ∇l_i`` for 50 test queries × 500 training examples (``l`` the unscaled per-example
cross-entropy). Printed: the Spearman correlation (over all scores) of each approximation with the
dense damped matrix OF THE SAME KIND, per damping ``ρ``, in two blocks:

- Gauss–Newton: the reference is ``G + (λ + ρ)I``, ``G = (1/n) Σ_i Φ_iᵀ Λ_i Φ_i`` (the exact expectation
  over the model's labels, equal to the true Fisher for cross-entropy); groupinf's K-FAC and EK-FAC with
  ``fisher="ggn"``. Kronfluence cannot form this expectation: its column is its EK-FAC of the true Fisher
  SAMPLED with one label per example (and per pass), a noisy estimate of the same matrix;
- empirical Fisher: the reference is ``F + (λ + ρ)I``, ``F = (1/n) Σ_i g_i g_iᵀ`` with the per-example
  gradients ``g_i`` at the real labels (held by ``EigenCurvature``); groupinf's K-FAC and EK-FAC with
  ``fisher="empirical"`` and Kronfluence's EK-FAC with ``use_empirical_fisher=True``: like for like.

groupinf adds ``λ`` to the curvature (dense: ``+ λI``; Kronecker: ``Λ + λ``) and then the damping ``ρ``;
Kronfluence has no L2 term, so its ``damping_factor`` is ``λ + ρ``: the same total shift of every
eigenvalue. Kronfluence runs with every dtype (covariances, eigendecompositions, per-sample gradients, Λ,
preconditioning, scores) float64, like groupinf here. ``layers`` keeps the exact per-layer blocks of the
dense matrix and drops the cross-layer blocks (no Kronecker factorisation); ``H = I`` scores with no
curvature at all;
``Kf~EK-FAC`` is the Spearman of Kronfluence's scores with groupinf's EK-FAC scores of the same block.
Without ``kronfluence`` importable (the project's ``.venv``) the Kronfluence columns are skipped with a
note; ``.venv-bench`` has it.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

from benchmarks import _kronfluence as kronfluence
from groupinf.curvature import (
    EigenCurvature,
    EKFACCurvature,
    KFACCurvature,
    corrected_eigenvalues,
    fit_factors,
    gauss_newton,
    tensor_batches,
)
from groupinf.data import load_dataset
from groupinf.data.transforms import standardize
from groupinf.experiments.common import as_tensors
from groupinf.gradients import per_example_gradients
from groupinf.losses import CrossEntropy
from groupinf.models import mlp
from groupinf.target import mean_loss
from groupinf.target_blocks import BlockDiagonalCurvature
from groupinf.task import Task
from groupinf.training import SGDConfig, train_sgd

L2 = 0.01
BATCH = 256
#: groupinf's Fisher kind per block, and Kronfluence's use_empirical_fisher for it
BLOCKS = {
    "ggn": ("dense damped GGN  G + (λ + ρ)I", False, "Kronfluence: EK-FAC of the SAMPLED true Fisher"),
    "empirical": ("dense damped empirical Fisher  F + (λ + ρ)I", True, "Kronfluence: EK-FAC of the empirical Fisher"),
}


def redamped(curvature: EigenCurvature, damping: float) -> EigenCurvature:
    """The same eigendecomposition with damping ``damping`` (one eigh per matrix: ~12 s at p = 3 466)."""
    out = copy.copy(curvature)
    out.damping = float(damping)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dampings", default="0.001,0.01,0.1")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dampings = [float(d) for d in args.dampings.split(",")]
    data = as_tensors(standardize(load_dataset("digits")))
    torch.manual_seed(0)
    model = mlp(64, 10, (32, 32))
    train_sgd(model, CrossEntropy(), data["X_train"], data["y_train"], SGDConfig(epochs=200))
    model = model.double().eval()
    X, y = data["X_train"].double(), data["y_train"]
    Xq, yq = data["X_test"][: args.queries].double(), data["y_test"][: args.queries]
    task = Task(model, CrossEntropy(), L2, mean_loss(Xq, yq))
    theta = task.theta()
    n, p = len(X), theta.numel()
    all_grads = per_example_gradients(task, theta, X, y)  # (n, p): the empirical Fisher's g_i
    train_grads = all_grads[: args.train]
    query_grads = per_example_gradients(task, theta, Xq, yq)
    batches = tensor_batches(X, y, BATCH)
    eye = torch.eye(p, dtype=theta.dtype)
    dense = {"ggn": gauss_newton(task, theta, X, n), "empirical": all_grads.T @ all_grads / n + L2 * eye}
    masks = BlockDiagonalCurvature(lambda V: V, task.space).masks.to(theta.dtype)  # (layers, p)
    same_layer = masks.T @ masks  # 1 where two coordinates belong to one layer: keeps the per-layer blocks

    def scores(curvature) -> np.ndarray:
        return (query_grads @ curvature.solve(train_grads).T).flatten().numpy()

    identity = (query_grads @ train_grads.T).flatten().numpy()
    with_kronfluence = kronfluence.available()
    print(
        f"digits MLP 64-32-32-10, L2 λ = {L2:g}, curvatures fitted on n = {n}; {args.queries} x {args.train} "
        "scores ∇l_qᵀ(H + ρI)⁻¹∇l_i; Spearman with the dense damped matrix of the same kind"
    )
    if with_kronfluence:
        from importlib.metadata import version

        print(f"Kronfluence {version('kronfluence')}: damping_factor = λ + ρ (same total diagonal shift), float64")
    else:
        print("Kronfluence columns skipped: kronfluence is not importable here (use .venv-bench)")
    with tempfile.TemporaryDirectory() as tmp:
        if with_kronfluence:
            from torch.utils.data import TensorDataset

            analyzer = kronfluence.analyzer(copy.deepcopy(model), Path(tmp))  # wraps its model in place
            fit_set, train_set = TensorDataset(X, y), TensorDataset(X[: args.train], y[: args.train])
            query_set = TensorDataset(Xq, yq)
        for fisher, (reference, empirical, kron_note) in BLOCKS.items():
            print(f"reference: {reference}" + (f"   [{kron_note}]" if with_kronfluence else ""))
            header = f"{'damping':>8} {'K-FAC':>7} {'EK-FAC':>7}"
            header += f" {'Kf EK-FAC':>9}" if with_kronfluence else ""
            print(header + f" {'layers':>7} {'H = I':>7}" + (f" {'Kf~EK-FAC':>9}" if with_kronfluence else ""))
            base = EigenCurvature(dense[fisher], 0.0)  # the matrix already holds λI
            per_layer = EigenCurvature(dense[fisher] * same_layer, 0.0)
            factors = fit_factors(task, theta, batches, fisher=fisher)
            eigenvalues = corrected_eigenvalues(task, theta, batches, factors)
            if with_kronfluence:
                torch.manual_seed(0)  # Kronfluence samples the true Fisher's labels from the global generator
                kronfluence.fit_ekfac(analyzer, fit_set, BATCH, empirical=empirical, dtype=torch.float64, name=fisher)
            for damping in dampings:
                reference_scores = scores(redamped(base, damping))
                row: dict[str, np.ndarray] = {
                    "kfac": scores(KFACCurvature.from_factors(factors, L2, damping)),
                    "ekfac": scores(EKFACCurvature.from_eigenvalues(factors, eigenvalues, L2, damping)),
                }
                if with_kronfluence:
                    row["kronfluence"] = kronfluence.pairwise_scores(
                        analyzer,
                        query_set,
                        train_set,
                        BATCH,
                        damping=L2 + damping,
                        dtype=torch.float64,
                        factors=fisher,
                        name=f"{fisher}-{damping:g}",
                    ).flatten()
                row["layers"] = scores(redamped(per_layer, damping))
                row["identity"] = identity
                rho = {k: spearman(v, reference_scores) for k, v in row.items()}
                line = f"{damping:>8g} {rho['kfac']:>7.3f} {rho['ekfac']:>7.3f}"
                line += f" {rho['kronfluence']:>9.3f}" if with_kronfluence else ""
                line += f" {rho['layers']:>7.3f} {rho['identity']:>7.3f}"
                line += f" {spearman(row['kronfluence'], row['ekfac']):>9.4f}" if with_kronfluence else ""
                print(line, flush=True)


def spearman(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    return float(spearmanr(a, b).statistic)


if __name__ == "__main__":
    main()

"""How well K-FAC and EK-FAC reproduce the dense damped Gauss–Newton influence scores.

A 64-32-32-10 MLP trained by SGD (Table 3 settings) on scikit-learn's digits; scores
``∇l_qᵀ (H + ρI)⁻¹ ∇l_i`` for 50 test queries × 500 training examples with the dense GGN, K-FAC,
EK-FAC (both of the exact GGN expectation) and no curvature (``H = I``); printed: Spearman of each
with the dense GGN's scores, per damping.
"""

from __future__ import annotations

import argparse

import torch
from scipy.stats import spearmanr

from groupinf.data import load_dataset
from groupinf.data.transforms import standardize
from groupinf.experiments.common import as_tensors, fit_curvature
from groupinf.gradients import per_example_gradients
from groupinf.losses import CrossEntropy
from groupinf.models import mlp
from groupinf.target import mean_loss
from groupinf.task import Task
from groupinf.training import SGDConfig, train_sgd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dampings", default="0.001,0.01,0.1")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--train", type=int, default=500)
    args = parser.parse_args(argv)
    data = as_tensors(standardize(load_dataset("digits")))
    torch.manual_seed(0)
    model = mlp(64, 10, (32, 32))
    train_sgd(model, CrossEntropy(), data["X_train"], data["y_train"], SGDConfig(epochs=200))
    model = model.double().eval()
    X, y = data["X_train"].double(), data["y_train"]
    Xq, yq = data["X_test"][: args.queries].double(), data["y_test"][: args.queries]
    task = Task(model, CrossEntropy(), 0.01, mean_loss(Xq, yq))
    theta = task.theta()
    train_grads = per_example_gradients(task, theta, X[: args.train], y[: args.train])
    query_grads = per_example_gradients(task, theta, Xq, yq)
    print(f"digits MLP 64-32-32-10, {args.queries} x {args.train} scores, Spearman with the dense damped GGN")
    print(f"{'damping':>8} {'K-FAC':>7} {'EK-FAC':>7} {'H = I':>7}")
    for damping in (float(d) for d in args.dampings.split(",")):
        scores = {}
        for kind in ("ggn", "kfac", "ekfac"):
            curvature = fit_curvature(kind, task, theta, X, y, len(X), damping)
            scores[kind] = (query_grads @ curvature.solve(train_grads).T).flatten()
        scores["identity"] = (query_grads @ train_grads.T).flatten()
        rho = {k: spearmanr(v, scores["ggn"]).statistic for k, v in scores.items()}
        print(f"{damping:>8g} {rho['kfac']:>7.3f} {rho['ekfac']:>7.3f} {rho['identity']:>7.3f}", flush=True)


if __name__ == "__main__":
    main()

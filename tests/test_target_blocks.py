"""Block-diagonal target curvature against the dense target Hessian with off-diagonal blocks zeroed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from groupinf.curvature import EigenCurvature, gauss_newton
from groupinf.experiments.faithfulness import build_task
from groupinf.influence import GroupInfluence
from groupinf.losses import CrossEntropy
from groupinf.models import loss_for, mlp
from groupinf.target import mean_loss, target_curvature
from groupinf.target_blocks import BlockDiagonalCurvature, layer_blocks
from groupinf.task import Task

DT = torch.float64


def zero_off_diagonal(matrix: torch.Tensor, task: Task, blocks: list[list[str]]) -> torch.Tensor:
    slices = task.space.slices()
    out = torch.zeros_like(matrix)
    for block in blocks:
        idx = torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in block])
        out[idx[:, None], idx[None, :]] = matrix[idx[:, None], idx[None, :]]
    return out


@pytest.fixture
def task():
    gen = torch.Generator().manual_seed(4)
    X, y = torch.randn(30, 4, generator=gen, dtype=DT), torch.randint(0, 3, (30,), generator=gen)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    return Task(model, CrossEntropy(), 0.0, mean_loss(X, y))


def test_block_diagonal_exact_and_ggn(task):
    theta = task.theta()
    blocks = layer_blocks(task.space)
    assert blocks == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
    V = torch.randn(7, theta.numel(), generator=torch.Generator().manual_seed(0), dtype=DT)

    exact = zero_off_diagonal(task.target.hessian(task, theta), task, blocks)
    op = BlockDiagonalCurvature.of_target(task, theta, "exact", chunk=3)
    torch.testing.assert_close(op.matmul(V), V @ exact)

    factor = task.target.ggn_factor(task, theta)
    ggn = zero_off_diagonal(factor.T @ factor, task, blocks)
    torch.testing.assert_close(BlockDiagonalCurvature.of_target(task, theta, "ggn").matmul(V), V @ ggn)

    per_parameter = [[n] for n in task.space.names]
    fine = BlockDiagonalCurvature.of_target(task, theta, "exact", blocks=per_parameter)
    torch.testing.assert_close(
        fine.matmul(V), V @ zero_off_diagonal(task.target.hessian(task, theta), task, per_parameter)
    )

    with pytest.raises(ValueError, match="partition"):
        BlockDiagonalCurvature.of_target(task, theta, blocks=[["0.weight"], ["2.weight", "2.bias"]])
    with pytest.raises(ValueError, match="kind"):
        BlockDiagonalCurvature.of_target(task, theta, "diag")


def test_block_kinds_by_name_in_the_interaction_term(task):
    """``hf="block-exact"`` / ``"block-ggn"`` give ``I(G) = ½ δ_Gᵀ H_f^{bd} δ_G`` with the masked dense matrices."""
    theta = task.theta()
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(12, 4, generator=gen, dtype=DT), torch.randint(0, 3, (12,), generator=gen)
    curvature = EigenCurvature(gauss_newton(task, theta, X, len(X)), damping=0.1)
    groups = [[0, 1, 2], [3, 7], [4, 5, 6, 8]]
    blocks = layer_blocks(task.space)
    factor = task.target.ggn_factor(task, theta)
    dense = {"block-exact": task.target.hessian(task, theta), "block-ggn": factor.T @ factor}
    for kind, matrix in dense.items():
        influence = GroupInfluence(task, theta, X, y, curvature, hf=kind)
        masked = zero_off_diagonal(matrix, task, blocks)
        shifts = torch.stack([influence.shifts[g].sum(0) for g in groups])
        expected = 0.5 * torch.einsum("gp,pq,gq->g", shifts, masked, shifts)
        torch.testing.assert_close(influence.estimate(groups, basu=False)["I"], expected)
    with pytest.raises(ValueError, match="block-ggn"):
        target_curvature(task, theta, "blocks")


def dense_ggn(task: Task, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(1/m) Σ_j J_jᵀ ∇²_z l(z_j, y_j) J_j``, formed from explicit Jacobians and output Hessians."""
    jac = torch.func.jacrev(lambda th: task.outputs(th, X))(theta)  # (m, C, p)
    outputs = task.outputs(theta, X).detach()
    out_hess = torch.stack(
        [
            torch.func.hessian(lambda z, t=t: task.loss(z.unsqueeze(0), t.unsqueeze(0)).sum())(z)
            for z, t in zip(outputs, y, strict=True)
        ]
    )  # (m, C, C)
    return torch.einsum("jcp,jcd,jdq->pq", jac, out_hess, jac) / len(X)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_every_target_kind_against_an_explicit_dense_matrix(kind):
    """On a two-hidden-layer ReLU MLP (the library's), ``target_curvature`` of each kind equals the dense
    target Hessian / Gauss–Newton matrix, whole or with its cross-layer blocks zeroed; those blocks are not
    zero, so dropping them matters. ReLU is piecewise linear in each layer's parameters, so the exact
    Hessian's diagonal blocks are the Gauss–Newton ones (docs/math.md §7)."""
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(25, 4, generator=gen, dtype=DT)
    y = (
        torch.randint(0, 3, (25,), generator=gen)
        if kind == "classification"
        else torch.randn(25, 1, generator=gen, dtype=DT)
    )
    torch.manual_seed(3)
    model = mlp(4, 3 if kind == "classification" else 1, (6, 5)).double()
    task = Task(model, loss_for(kind, 3), 0.0, mean_loss(X, y))
    theta = task.theta()
    blocks = layer_blocks(task.space)
    assert blocks == [["0.weight", "0.bias"], ["2.weight", "2.bias"], ["4.weight", "4.bias"]]
    dense = {"exact": task.target.hessian(task, theta), "ggn": dense_ggn(task, theta, X, y)}
    V = torch.randn(6, theta.numel(), generator=gen, dtype=DT)
    for name, matrix in dense.items():
        masked = zero_off_diagonal(matrix, task, blocks)
        assert (matrix - masked).abs().max() > 1e-3 * matrix.abs().max()  # real cross-layer blocks
        torch.testing.assert_close(target_curvature(task, theta, name).matmul(V), V @ matrix)
        torch.testing.assert_close(target_curvature(task, theta, f"block-{name}").matmul(V), V @ masked)
    torch.testing.assert_close(
        zero_off_diagonal(dense["exact"], task, blocks), zero_off_diagonal(dense["ggn"], task, blocks)
    )
    assert (dense["exact"] - dense["ggn"]).abs().max() > 1e-3 * dense["ggn"].abs().max()  # they differ across layers


def test_a_linear_model_has_one_target_curvature(breast_cancer):
    """Logistic regression is one layer whose Hessian is its Gauss–Newton matrix: all four kinds agree, so the
    linear model's default (exact) is every kind at once."""
    task, _ = build_task(breast_cancer, l2=0.1)
    theta = task.theta()
    V = torch.randn(4, theta.numel(), generator=torch.Generator().manual_seed(0), dtype=DT)
    exact = target_curvature(task, theta, "exact").matmul(V)
    for kind in ("ggn", "block-exact", "block-ggn"):
        torch.testing.assert_close(target_curvature(task, theta, kind).matmul(V), exact)

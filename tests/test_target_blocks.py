"""Block-diagonal target curvature against the dense target Hessian with off-diagonal blocks zeroed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from groupinf.curvature import EigenCurvature, gauss_newton
from groupinf.influence import GroupInfluence
from groupinf.losses import CrossEntropy
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

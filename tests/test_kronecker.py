"""The one Kronecker curvature over a block layout, against dense matrices built with ``torch.kron``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from groupinf.curvature import (
    Block,
    BlockLayout,
    KroneckerCurvature,
    fit_curvature,
    kronecker_eigenbases,
    refit_eigenvalues,
)
from groupinf.curvature.hooks import find_layers, parameter_layout
from groupinf.params import ParamSpace

DT = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")

#: two blocks of different shapes and two of one shape (3, 4), apart or side by side, one of them with a bias column
LAYOUTS = {
    "apart": (Block("a", (2, 3)), Block("b", (3, 4), bias=True), Block("c", (4, 2)), Block("d", (3, 4))),
    "adjacent": (Block("a", (2, 3)), Block("b", (3, 4)), Block("d", (3, 4), bias=True), Block("c", (4, 2))),
}


def spd(n: int, gen: torch.Generator) -> Tensor:
    m = torch.randn(n, n + 2, generator=gen, dtype=DT)
    return m @ m.T / (n + 2)


def flat_positions(layout: BlockLayout) -> list[Tensor]:
    """Per block, the flat index of each entry of its matrix in row-major order, written out by hand."""
    out, offset = [], 0
    for block in layout.blocks:
        rows, columns = block.shape
        index = torch.empty(rows, columns, dtype=torch.long)
        weight = columns - 1 if block.bias else columns
        for r in range(rows):
            for c in range(weight):
                index[r, c] = offset + r * weight + c
            if block.bias:
                index[r, -1] = offset + rows * weight + r
        out.append(index.flatten())
        offset += block.size
    return out


def dense(layout: BlockLayout, matrices: list[Tensor]) -> Tensor:
    """The ``d × d`` block-diagonal matrix in the flat layout, from each block's matrix over its row-major ``vec``."""
    H = torch.zeros(layout.dim, layout.dim, dtype=DT)
    for index, matrix in zip(flat_positions(layout), matrices, strict=True):
        H[index[:, None], index[None, :]] = matrix
    return H


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("damping", [0.2, "heuristic"])
def test_kfac_solve_and_matvec_equal_the_dense_kronecker_matrix(name, damping):
    layout = BlockLayout(LAYOUTS[name])
    gen = torch.Generator().manual_seed(0)
    factors = [(spd(b.shape[0], gen), spd(b.shape[1], gen)) for b in layout.blocks]
    bases, values = kronecker_eigenbases(factors)
    curvature = KroneckerCurvature(layout, bases, values, 0.05, damping)
    assert [g.members for g in layout.groups] == ([[0], [1, 2], [3]] if name == "adjacent" else [[0], [1, 3], [2]])
    assert [g.span is not None for g in layout.groups] == [True, False, True]  # read as views, or gathered
    blocks = []
    for (s, a), lam, rho in zip(factors, values, curvature.layer_damping, strict=True):
        assert rho == (0.2 if damping == 0.2 else pytest.approx(0.1 * (lam.mean().item() + 0.05)))
        blocks.append(torch.kron(s, a) + (0.05 + rho) * torch.eye(s.shape[0] * a.shape[0], dtype=DT))
    H = dense(layout, blocks)
    V = torch.randn(5, layout.dim, generator=gen, dtype=DT)
    torch.testing.assert_close(curvature.matvec(V), V @ H, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(curvature.solve(V), torch.linalg.solve(H, V.T).T, rtol=1e-10, atol=1e-12)
    assert curvature.solve(V.float()).dtype == torch.float32
    with pytest.raises(ValueError, match=rf"expected row vectors \(k, {layout.dim}\)"):
        curvature.solve(V[:, 1:])


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_ekfac_refits_the_eigenvalues_to_the_rows(name):
    """``Λ`` = the diagonal of the rows' second moment in the Kronecker eigenbasis; solves with the dense matrix."""
    layout = BlockLayout(LAYOUTS[name])
    gen = torch.Generator().manual_seed(1)
    bases, _ = kronecker_eigenbases([(spd(b.shape[0], gen), spd(b.shape[1], gen)) for b in layout.blocks])
    rows = torch.randn(30, layout.dim, generator=gen, dtype=DT)
    rows[7:20] = rows[7:20].float().double()  # one batch comes in float32, widened exactly
    values = refit_eigenvalues(layout, bases, [rows[:7], rows[7:20].float(), rows[20:]])
    blocks = []
    for index, (q_s, q_a), lam in zip(flat_positions(layout), bases, values, strict=True):
        Q = torch.kron(q_s, q_a)
        g = rows[:, index]
        torch.testing.assert_close(lam.flatten(), torch.diagonal(Q.T @ (g.T @ g / 30) @ Q))
        blocks.append(Q @ torch.diag(lam.flatten() + 0.1) @ Q.T)
    curvature = KroneckerCurvature(layout, bases, values, 0.0, 0.1)
    V = torch.randn(4, layout.dim, generator=gen, dtype=DT)
    torch.testing.assert_close(curvature.solve(V), torch.linalg.solve(dense(layout, blocks), V.T).T)
    with pytest.raises(ValueError, match="singular"):
        KroneckerCurvature(layout, bases, [torch.zeros(b.shape) for b in layout.blocks], 0.0, 0.0)
    with pytest.raises(ValueError, match=r"eigenvalues of layer 'a' must be \(2, 3\)"):
        KroneckerCurvature(layout, bases, [torch.ones(3, 2), *values[1:]], 0.0, 0.1)


class Rows:
    """A ``GradientSource`` held in memory: rows in a layout and given K-FAC factors."""

    def __init__(self, layout: BlockLayout, rows: Tensor, factors: list[tuple[Tensor, Tensor]]) -> None:
        self.layout, self.rows, self.factors = layout, rows, factors

    def kronecker_factors(self) -> list[tuple[Tensor, Tensor]]:
        return self.factors

    def row_batches(self) -> list[Tensor]:
        return list(self.rows.split(8))


def test_fit_curvature_by_name_from_a_gradient_source():
    layout = BlockLayout(LAYOUTS["apart"])
    gen = torch.Generator().manual_seed(2)
    factors = [(spd(b.shape[0], gen), spd(b.shape[1], gen)) for b in layout.blocks]
    source = Rows(layout, torch.randn(20, layout.dim, generator=gen, dtype=DT), factors)
    V = torch.randn(3, layout.dim, generator=gen, dtype=DT)
    fisher = source.rows.T @ source.rows / 20
    dense_fit = fit_curvature("dense", source, 0.1, l2=0.05)
    torch.testing.assert_close(dense_fit.solve(V), torch.linalg.solve(fisher + 0.15 * torch.eye(layout.dim), V.T).T)
    kfac = fit_curvature("kfac", source, 0.1, l2=0.05)
    H = dense(layout, [torch.kron(s, a) + 0.15 * torch.eye(s.shape[0] * a.shape[0]) for s, a in factors])
    torch.testing.assert_close(kfac.matvec(V), V @ H)
    ekfac = fit_curvature("ekfac", source, 0.1)
    assert isinstance(ekfac, KroneckerCurvature)
    torch.testing.assert_close(ekfac.eigenvalues, refit_eigenvalues(layout, kfac.bases, source.row_batches()))
    with pytest.raises(ValueError, match="curvature must be one of"):
        fit_curvature("ggn", source, 0.1)


class BiasFirst(nn.Linear):
    """A Linear whose bias is registered before its weight (parameter order bias, weight)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.randn(out_features))
        self.weight = nn.Parameter(torch.randn(out_features, in_features))


def test_parameter_layout_reads_each_weight_and_bias_as_one_matrix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3, bias=False), nn.Linear(3, 3)).double()
    space = ParamSpace.of(model)
    layout = parameter_layout(find_layers(model, space), space)
    assert layout.blocks == (Block("0", (4, 6), True), Block("2", (3, 4)), Block("3", (3, 4), True))
    theta = torch.randn(space.numel, dtype=DT)
    named = space.unflatten(theta)
    first, second, third = layout.split(theta[None])
    assert torch.equal(first[0], torch.cat([named["0.weight"], named["0.bias"][:, None]], dim=1))
    assert torch.equal(second[0], named["2.weight"])
    assert torch.equal(third[0], torch.cat([named["3.weight"], named["3.bias"][:, None]], dim=1))
    assert torch.equal(layout.join([first, second, third])[0], theta)
    odd = nn.Sequential(BiasFirst(4, 3))
    odd_space = ParamSpace.of(odd)
    with pytest.raises(ValueError, match="each weight followed by its bias"):
        parameter_layout(find_layers(odd, odd_space), odd_space)

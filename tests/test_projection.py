"""The Gaussian projection helper and the conventions of its three users: TRAK, the LESS baseline and LoGra."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from groupinf.baselines import trak
from groupinf.llm.baselines import gaussian_projection as less_projection
from groupinf.llm.objective import example_seed
from groupinf.llm.projection import LayerSpec, projection_matrix
from groupinf.projection import gaussian_projection
from test_baselines import small_task


def reference(shape, seed, dtype=None, divisor=None):
    """The projection written out: one ``randn`` from a CPU generator seeded by ``seed``, over ``√rank``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype) / divisor


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float64])
@pytest.mark.parametrize(("rank", "dim", "seed"), [(1, 1, 0), (3, 7, 5), (16, 37, 2**40)])
def test_the_helper_is_one_seeded_draw_over_the_square_root_of_the_rank(dtype, rank, dim, seed):
    matrix = gaussian_projection(rank, dim, seed, dtype=dtype)
    expected = reference((rank, dim), seed, dtype, math.sqrt(rank))
    assert matrix.shape == (rank, dim) and matrix.dtype == (dtype or torch.get_default_dtype())
    assert torch.equal(matrix, expected)
    # transposed draws (dim, rank) in its own row-major order: not the transpose of the other layout
    transposed = gaussian_projection(rank, dim, seed, dtype=dtype, transposed=True)
    assert torch.equal(transposed, reference((dim, rank), seed, dtype, math.sqrt(rank)))
    divided = gaussian_projection(rank, dim, seed, dtype=dtype, divisor=2.5)
    assert torch.equal(divided, reference((rank, dim), seed, dtype, 2.5))


def test_the_helper_preserves_inner_products_in_expectation_and_rejects_rank_zero():
    big = gaussian_projection(4000, 6, seed=0, dtype=torch.float64)
    torch.testing.assert_close(big.T @ big, torch.eye(6, dtype=torch.float64), atol=0.1, rtol=0)
    assert not torch.equal(gaussian_projection(3, 5, 0), gaussian_projection(3, 5, 1))
    with pytest.raises(ValueError, match="projection dim must be >= 1, got 0"):
        gaussian_projection(0, 5, 0)


def test_less_draws_float64_on_the_cpu_from_the_extraction_seed():
    matrix = less_projection(37, 16, 3)
    assert matrix.shape == (16, 37) and matrix.dtype == torch.float64
    assert torch.equal(matrix, reference((16, 37), 3, torch.float64, math.sqrt(16)))
    with pytest.raises(ValueError, match="projection dim must be >= 1"):
        less_projection(5, 0, 0)


@pytest.mark.parametrize("side", ["in", "out"])
def test_logra_seeds_each_layer_and_side_by_name(side):
    spec = LayerSpec("model.layers.0.mlp.down_proj", d_out=7, d_in=5, r_out=3, r_in=2)
    rank, dim = (spec.r_in, spec.d_in) if side == "in" else (spec.r_out, spec.d_out)
    seed = example_seed(9, zlib.crc32(f"{spec.name}:{side}".encode()))
    matrix = projection_matrix(spec, side, "gaussian", 9)
    assert matrix.dtype == torch.float32
    assert torch.equal(matrix, reference((rank, dim), seed, None, math.sqrt(rank)))
    assert torch.equal(projection_matrix(spec, side, "identity", 9), torch.eye(dim))


def test_trak_draws_the_transposed_projection_per_model_in_the_parameters_dtype(monkeypatch):
    task, X, y = small_task("classification", 3)
    theta = task.theta()
    drawn = []

    def spy(*args, **kwargs):
        drawn.append(gaussian_projection(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(trak, "gaussian_projection", spy)
    trak.trak_scores(task, [theta, theta], X, y, proj_dim=5, seed=4)
    assert len(drawn) == 2
    for s, matrix in enumerate(drawn):
        assert matrix.dtype == theta.dtype
        assert torch.equal(matrix, reference((theta.numel(), 5), 4 + s, theta.dtype, 5**0.5))

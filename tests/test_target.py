import pytest
import torch

from groupinf.curvature_ops import DenseCurvature, LowRankCurvature, OperatorCurvature
from groupinf.target import CallableTarget, example_loss, mean_loss


def test_target_gradient_and_hvp_against_autograd(mlp_task):
    task, theta, _, _ = mlp_task
    f = task.target
    g = f.gradient(task, theta)
    expected_g = torch.autograd.functional.jacobian(lambda th: f.value(task, th), theta)
    torch.testing.assert_close(g, expected_g)
    H = torch.autograd.functional.hessian(lambda th: f.value(task, th), theta)
    torch.testing.assert_close(f.hessian(task, theta), H)
    V = torch.randn(4, theta.numel(), dtype=torch.float64)
    torch.testing.assert_close(f.hvp(task, theta, V), V @ H)


def test_ggn_products_and_factor_agree(mlp_task):
    task, theta, _, _ = mlp_task
    f = task.target
    B = f.ggn_factor(task, theta, batch_size=4)
    assert B.shape == (f.size * 3, theta.numel())
    V = torch.randn(6, theta.numel(), dtype=torch.float64)
    torch.testing.assert_close(f.ggn_vp(task, theta, V), V @ B.T @ B)
    # The GGN is PSD and differs from the exact Hessian of a non-linear model.
    assert not torch.allclose(B.T @ B, f.hessian(task, theta))


def test_single_example_target(mlp_task):
    task, theta, X, y = mlp_task
    target = example_loss(X[3], y[3])
    expected = task.losses(theta, X[3:4], y[3:4])[0]
    torch.testing.assert_close(target.value(task, theta), expected)


def test_callable_target_of_the_model(mlp_task):
    task, theta, X, _ = mlp_task

    def mean_logit_norm(model):
        return model(X).pow(2).sum(dim=1).mean()

    target = CallableTarget(mean_logit_norm)
    expected = task.outputs(theta, X).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(target.value(task, theta), expected)
    g = target.gradient(task, theta)
    torch.testing.assert_close(
        g, torch.autograd.functional.jacobian(lambda th: task.outputs(th, X).pow(2).sum(1).mean(), theta)
    )
    with pytest.raises(ValueError, match="Gauss"):
        target.ggn_vp(task, theta, g[None])
    with pytest.raises(ValueError, match="scalar"):
        CallableTarget(lambda m: m(X)).value(task, theta)


def test_low_rank_full_rank_equals_dense(mlp_task):
    task, theta, _, _ = mlp_task
    H = task.target.hessian(task, theta)  # indefinite in general
    low = LowRankCurvature.from_matrix(H)
    assert (low.sign < 0).any() and (low.sign > 0).any()
    U = torch.randn(7, theta.numel(), dtype=torch.float64)
    torch.testing.assert_close(low.bilinear(U, U), DenseCurvature(H).bilinear(U, U))
    torch.testing.assert_close(low.project(U) * low.sign @ low.project(U).T, U @ H @ U.T)


def test_lanczos_top_eigenpairs_match_eigh(mlp_task):
    task, theta, _, _ = mlp_task
    H = task.target.hessian(task, theta)
    op = OperatorCurvature(lambda V: task.target.hvp(task, theta, V))
    top = LowRankCurvature.from_operator(op, theta.numel(), rank=5, like=theta)
    exact = LowRankCurvature.from_matrix(H, rank=5)
    torch.testing.assert_close(
        top.factor.T @ torch.diag(top.sign) @ top.factor,
        exact.factor.T @ torch.diag(exact.sign) @ exact.factor,
        rtol=1e-6,
        atol=1e-8,
    )


def test_empty_target_set_is_rejected(mlp_task):
    _, _, X, y = mlp_task
    with pytest.raises(ValueError, match="no examples"):
        mean_loss(X[:0], y[:0])

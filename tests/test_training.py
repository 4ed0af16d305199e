import pytest
import torch

from groupinf.curvature import exact_hessian
from groupinf.losses import CrossEntropy
from groupinf.models import linear_model, mlp
from groupinf.target import mean_loss
from groupinf.task import Task
from groupinf.training import ConvergenceError, SGDConfig, fit_convex, train_sgd


def toy(seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(96, 6, generator=gen)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    return X, y


def test_sgd_is_reproducible_and_decreases_the_loss():
    X, y = toy()
    config = SGDConfig(epochs=60, lr=0.1, batch_size=16)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = mlp(6, 3, hidden=(16, 16), dropout=0.1)
        history = train_sgd(model, CrossEntropy(), X, y, config, seed=5)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert not model.training
    assert torch.equal(runs[0], runs[1])
    assert history[-1] < 0.7 * history[0]


def test_sgd_reports_divergence_and_bad_settings():
    X, y = toy()
    X[0, 0] = 1e30
    with pytest.raises(ConvergenceError, match="diverged"):
        train_sgd(mlp(6, 3, hidden=(8,)), CrossEntropy(), X, y, SGDConfig(epochs=2, lr=10.0))
    with pytest.raises(ValueError, match="invalid SGD"):
        SGDConfig(epochs=0)
    with pytest.raises(ValueError, match="dropout"):
        mlp(6, 3, dropout=1.0)


def test_preconditioned_lbfgs_reaches_the_same_minimiser_and_checks_its_hessian():
    """Retraining without a group from θ*, preconditioned by ∇²R(θ*), lands on the minimiser plain
    L-BFGS finds (both to a gradient max-norm of 1e-9)."""
    X, y = toy()
    X, n = X.double(), len(X)
    task = Task(linear_model(6, 3, "classification")[0].double(), CrossEntropy(), 0.01, mean_loss(X, y))
    theta = fit_convex(task, task.theta(), X, y, n)
    hessian = exact_hessian(task, theta, X, y, n)
    weights = torch.ones(n, dtype=X.dtype)
    weights[:10] = 0.0
    plain = fit_convex(task, theta, X, y, n, weights=weights)
    preconditioned = fit_convex(task, theta, X, y, n, weights=weights, hessian=hessian)
    assert (plain - theta).abs().max() > 1e-2  # the group moves θ: the comparison is not trivial
    torch.testing.assert_close(preconditioned, plain, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="must be"):
        fit_convex(task, theta, X, y, n, hessian=hessian[:-1, :-1])
    with pytest.raises(ValueError, match="not positive definite"):
        fit_convex(task, theta, X, y, n, hessian=-hessian)

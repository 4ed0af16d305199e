import pytest
import torch

from groupinf.curvature import (
    EigenCurvature,
    EKFACCurvature,
    KFACCurvature,
    exact_hessian,
    fit_curvature,
    gauss_newton,
    parse_damping,
    resolve_damping,
)
from groupinf.gradients import per_example_jacobians
from groupinf.losses import CrossEntropy
from groupinf.models import linear_model
from groupinf.target import mean_loss
from groupinf.task import Task


def objective_hessian(task, theta, X, y, n):
    return torch.autograd.functional.hessian(lambda th: task.objective(th, X, y, n), theta)


def test_exact_hessian_equals_autograd_and_finite_differences(mlp_task):
    task, theta, X, y = mlp_task
    H = exact_hessian(task, theta, X, y, n=len(X), batch_size=16)
    torch.testing.assert_close(H, objective_hessian(task, theta, X, y, len(X)))

    # Central finite differences of the gradient, one column at a time.
    def grad_at(th):
        th = th.clone().requires_grad_(True)
        return torch.autograd.grad(task.objective(th, X, y, len(X)), th)[0]

    eps = 1e-5
    for j in (0, 17, theta.numel() - 1):
        e = torch.zeros_like(theta)
        e[j] = eps
        fd = (grad_at(theta + e) - grad_at(theta - e)) / (2 * eps)
        torch.testing.assert_close(H[:, j], fd, rtol=1e-6, atol=1e-8)


def test_gauss_newton_equals_brute_force(mlp_task):
    task, theta, X, _ = mlp_task
    G = gauss_newton(task, theta, X, n=len(X), batch_size=9)
    jac = per_example_jacobians(task, theta, X)
    lam = task.loss.output_hessian(task.outputs(theta, X))
    brute = torch.einsum("bcp,bcd,bdq->pq", jac, lam, jac) / len(X) + task.l2 * torch.eye(theta.numel()).double()
    torch.testing.assert_close(G, brute)


def test_gauss_newton_is_exact_for_linear_softmax_regression():
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(30, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (30,), generator=gen)
    model, loss = linear_model(4, 3, "classification")
    assert isinstance(loss, CrossEntropy)
    task = Task(model.double(), loss, 0.1, mean_loss(X, y))
    theta = task.theta()
    torch.testing.assert_close(gauss_newton(task, theta, X, 30), exact_hessian(task, theta, X, y, 30))


def test_solve_matvec_and_damping(mlp_task):
    task, theta, X, y = mlp_task
    H = exact_hessian(task, theta, X, y, len(X))
    V = torch.randn(5, theta.numel(), dtype=torch.float64)
    curv = EigenCurvature(H, damping=1.0)
    damped = H + 1.0 * torch.eye(len(H), dtype=H.dtype)
    torch.testing.assert_close(curv.solve(V), torch.linalg.solve(damped, V.T).T)
    torch.testing.assert_close(curv.matvec(V), V @ damped)
    torch.testing.assert_close(curv.solve(curv.matvec(V)), V)
    G = gauss_newton(task, theta, X, len(X))
    heuristic = EigenCurvature(G, damping="heuristic")
    assert heuristic.damping == pytest.approx(0.1 * torch.linalg.eigvalsh(G).mean().item())


def test_singular_or_indefinite_hessian_needs_damping():
    singular = torch.diag(torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"singular.*damping"):
        EigenCurvature(singular)
    EigenCurvature(singular, damping=1e-3)  # damping makes it invertible
    indefinite = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="not positive definite"):
        EigenCurvature(indefinite, damping=0.5)
    with pytest.raises(ValueError, match="damping"):
        EigenCurvature(singular, damping=-1.0)


def test_zero_feature_without_l2_gives_singular_hessian():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    X[:, 1] = 0.0  # a feature that never varies: its weights have no curvature
    y = torch.randint(0, 2, (20,), generator=gen)
    model, loss = linear_model(3, 2, "classification")
    task = Task(model.double(), loss, 0.0, mean_loss(X, y))
    with pytest.raises(ValueError, match="singular"):
        EigenCurvature(exact_hessian(task, task.theta(), X, y, 20))


def test_damping_settings_are_parsed_and_checked_once():
    assert parse_damping("0.25") == 0.25 and parse_damping("0") == 0.0
    assert parse_damping("heuristic") == "heuristic"
    assert resolve_damping("heuristic", 3.0) == pytest.approx(0.3)
    assert resolve_damping(0.5, 3.0) == 0.5
    for bad in ("-1", "nan", "inf", "lots", "Heuristic"):
        with pytest.raises(ValueError, match="damping must be a finite number >= 0 or 'heuristic'"):
            parse_damping(bad)
    for bad in (-0.1, float("nan"), "lots", True):
        with pytest.raises(ValueError, match="damping must be"):
            resolve_damping(bad, 1.0)


def test_curvature_by_name(mlp_task):
    task, theta, X, y = mlp_task
    V = torch.randn(3, theta.numel(), dtype=torch.float64)
    exact = fit_curvature("exact", task, theta, X, y, len(X), 1.0)
    torch.testing.assert_close(exact.solve(V), EigenCurvature(exact_hessian(task, theta, X, y, len(X)), 1.0).solve(V))
    ggn = fit_curvature("ggn", task, theta, X, y, 2 * len(X), "heuristic")
    torch.testing.assert_close(
        ggn.matvec(V), EigenCurvature(gauss_newton(task, theta, X, 2 * len(X)), "heuristic").matvec(V)
    )
    assert type(fit_curvature("kfac", task, theta, X, y, len(X), 0.1)) is KFACCurvature
    assert type(fit_curvature("ekfac", task, theta, X, y, len(X), 0.1)) is EKFACCurvature
    with pytest.raises(ValueError, match="pass all n training examples"):
        fit_curvature("ekfac", task, theta, X, y, 2 * len(X), 0.1)
    with pytest.raises(ValueError, match="curvature must be one of"):
        fit_curvature("lanczos", task, theta, X, y, len(X), 0.1)

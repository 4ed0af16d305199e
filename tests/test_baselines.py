"""TRAK and TracIn against brute-force formulas."""

import pytest
import torch

from groupinf.baselines import output_function, tracin_scores, trak_scores
from groupinf.losses import BinaryLogistic, CrossEntropy, SquaredError
from groupinf.models import linear_model
from groupinf.target import mean_loss
from groupinf.task import Task


def small_task(kind, num_classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    if kind == "regression":
        y = X[:, 0] + 0.1 * torch.randn(60, generator=gen, dtype=torch.float64)
    else:
        y = torch.randint(0, num_classes, (60,), generator=gen)
    torch.manual_seed(seed)
    model, loss = linear_model(4, num_classes, kind)
    task = Task(model.double(), loss, 0.01, mean_loss(X[45:], y[45:]))
    return task, X[:45], y[:45]


def per_example_grad(task, theta, x, y, fn):
    return torch.autograd.functional.jacobian(lambda th: fn(th, x, y), theta)


@pytest.mark.parametrize(
    ("kind", "classes", "loss"),
    [("classification", 3, CrossEntropy), ("classification", 2, BinaryLogistic), ("regression", 1, SquaredError)],
)
def test_loss_gradient_is_minus_q_times_output_function_gradient(kind, classes, loss):
    task, X, y = small_task(kind, classes)
    assert isinstance(task.loss, loss)
    theta = task.theta()
    for i in range(5):
        x, t = X[i : i + 1], y[i : i + 1]
        g = per_example_grad(task, theta, x, t, lambda th, x, t: task.losses(th, x, t)[0])
        dm = per_example_grad(task, theta, x, t, lambda th, x, t: output_function(task, task.outputs(th, x), t)[0][0])
        q = output_function(task, task.outputs(theta, x), t)[1][0]
        torch.testing.assert_close(g, -q * dm)


def test_trak_with_a_full_rank_projection_equals_the_closed_form():
    task, X, y = small_task("classification", 3)
    theta = task.theta()
    p = theta.numel()
    scores = trak_scores(task, [theta], X, y, proj_dim=p, ridge=1e-13)
    dm = torch.stack(
        [
            per_example_grad(
                task,
                theta,
                X[i : i + 1],
                y[i : i + 1],
                lambda th, x, t: output_function(task, task.outputs(th, x), t)[0][0],
            )
            for i in range(len(X))
        ]
    )
    q = output_function(task, task.outputs(theta, X), y)[1]
    M = dm.T @ dm
    grad_f = task.target.gradient(task, theta)
    expected = -q * (dm @ torch.linalg.solve(M, grad_f))
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-10)
    ensemble = trak_scores(task, [theta, theta], X, y, proj_dim=p, ridge=1e-13)
    torch.testing.assert_close(ensemble, expected, rtol=1e-6, atol=1e-10)
    with pytest.raises(ValueError, match="at least one"):
        trak_scores(task, [], X, y)


def test_tracin_equals_the_checkpoint_sum():
    task, X, y = small_task("classification", 3)
    theta0 = task.theta()
    theta1 = theta0 + 0.1 * torch.randn_like(theta0)
    scores = tracin_scores(task, [(theta0, 0.5), (theta1, 0.25)], X, y, batch_size=7)
    expected = torch.zeros(len(X), dtype=theta0.dtype)
    for theta, lr in [(theta0, 0.5), (theta1, 0.25)]:
        grad_f = task.target.gradient(task, theta)
        for i in range(len(X)):
            g = per_example_grad(task, theta, X[i : i + 1], y[i : i + 1], lambda th, x, t: task.losses(th, x, t)[0])
            expected[i] += lr * g @ grad_f
    torch.testing.assert_close(scores, expected)
    with pytest.raises(ValueError, match="checkpoint"):
        tracin_scores(task, [], X, y)

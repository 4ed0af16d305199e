import pytest
import torch

from groupinf.gradients import per_example_gradients, per_example_jacobians
from groupinf.params import ParamSpace


def loop_gradients(task, theta, X, y):
    rows = []
    for i in range(len(X)):
        th = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(task.losses(th, X[i : i + 1], y[i : i + 1]).sum(), th)
        rows.append(g)
    return torch.stack(rows)


def test_per_example_gradients_equal_autograd_loop(mlp_task):
    task, theta, X, y = mlp_task
    expected = loop_gradients(task, theta, X, y)
    for batch_size in (1, 7, 64):
        got = per_example_gradients(task, theta, X, y, batch_size=batch_size)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert expected.abs().max() > 1e-3  # not trivially zero


def test_gradients_over_a_parameter_subset(mlp_task):
    task, _, X, y = mlp_task
    full = per_example_gradients(task, task.theta(), X, y)
    task.space = ParamSpace.of(task.model, ["2.weight"])
    sub = per_example_gradients(task, task.theta(), X, y)
    # In the full flat layout, 2.weight follows 0.weight (30) and 0.bias (6).
    torch.testing.assert_close(sub, full[:, 36:54])


def test_jacobians_match_autograd(mlp_task):
    task, theta, X, _ = mlp_task
    jac = per_example_jacobians(task, theta, X[:4])
    for i in range(4):
        expected = torch.autograd.functional.jacobian(lambda th, i=i: task.outputs(th, X[i : i + 1])[0], theta)
        torch.testing.assert_close(jac[i], expected)


def test_bad_inputs_are_rejected(mlp_task):
    task, theta, X, y = mlp_task
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = X.clone()
        bad[3, 1] = float("nan")
        per_example_gradients(task, theta, bad, y)
    with pytest.raises(ValueError, match="dtype"):
        per_example_gradients(task, theta, X.float(), y)
    with pytest.raises(ValueError, match="unknown parameter names"):
        ParamSpace.of(task.model, ["nope.weight"])

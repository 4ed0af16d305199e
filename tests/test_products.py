import torch

from groupinf.gradients import per_example_jacobians
from groupinf.products import loss_ggn_vp, loss_hvp, per_example_ggn_vp, per_example_hvp


def test_summed_and_per_example_products_against_dense_matrices(mlp_task):
    task, theta, X, y = mlp_task
    X, y = X[:9], y[:9]
    hessians = torch.stack(
        [
            torch.autograd.functional.hessian(lambda th, i=i: task.losses(th, X[i : i + 1], y[i : i + 1])[0], theta)
            for i in range(len(X))
        ]
    )
    jac = per_example_jacobians(task, theta, X)
    lam = task.loss.output_hessian(task.outputs(theta, X))
    ggns = torch.einsum("bcp,bcd,bdq->bpq", jac, lam, jac)
    V = torch.randn(3, theta.numel(), dtype=theta.dtype)
    torch.testing.assert_close(loss_hvp(task, theta, X, y, V, batch_size=4), V @ hessians.sum(0))
    torch.testing.assert_close(loss_ggn_vp(task, theta, X, V, batch_size=4), V @ ggns.sum(0))
    torch.testing.assert_close(per_example_hvp(task, theta, X, y, V[0], batch_size=4), hessians @ V[0])
    torch.testing.assert_close(per_example_ggn_vp(task, theta, X, V[0], batch_size=4), ggns @ V[0])
    assert not torch.allclose(hessians.sum(0), ggns.sum(0))  # the two curvatures really differ here

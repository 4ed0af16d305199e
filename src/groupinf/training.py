"""Training to convergence for convex models (the exact minimiser influence functions assume)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from groupinf.task import Task, check_inputs


class ConvergenceError(RuntimeError):
    """The optimiser stopped before the gradient of the objective was small enough."""


def fit_convex(
    task: Task,
    theta0: Tensor,
    inputs: Tensor,
    targets: Tensor,
    n: int,
    weights: Tensor | None = None,
    gtol: float = 1e-9,
    max_iter: int = 20_000,
) -> Tensor:
    """Minimise ``(1/n) Σ_i w_i l_i(θ) + (λ/2)‖θ‖²`` with L-BFGS (scipy) from ``theta0``.

    Computes in ``theta0``'s dtype (use float64 for ground-truth retraining). Raises
    ``ConvergenceError`` unless the gradient's max-norm ends below ``gtol``.
    """
    check_inputs(theta0, inputs, what="training inputs")

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        theta = torch.as_tensor(x, dtype=theta0.dtype, device=theta0.device).requires_grad_(True)
        value = task.objective(theta, inputs, targets, n, weights)
        (g,) = torch.autograd.grad(value, theta)
        return value.item(), g.detach().cpu().double().numpy()

    result = minimize(
        value_and_grad,
        theta0.detach().cpu().double().numpy(),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": gtol, "ftol": 0.0, "maxiter": max_iter, "maxcor": 30},
    )
    grad_norm = float(np.abs(result.jac).max())
    if grad_norm > 10 * gtol:
        raise ConvergenceError(
            f"L-BFGS stopped after {result.nit} iterations with gradient max-norm {grad_norm:.2e} "
            f"(> {10 * gtol:.0e}): {result.message}. Increase max_iter or the L2 strength."
        )
    return torch.as_tensor(result.x, dtype=theta0.dtype, device=theta0.device)

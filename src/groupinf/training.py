"""Training: L-BFGS to convergence for convex models (the exact minimiser influence functions
assume), and seeded minibatch SGD for neural networks (the paper's Table 3 settings by default)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor, nn
from tqdm.auto import tqdm

from groupinf.checks import check_count, check_fields
from groupinf.losses import Loss
from groupinf.task import Task, check_inputs, check_lengths


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
    hessian: Tensor | None = None,
) -> Tensor:
    """Minimise ``(1/n) Σ_i w_i l_i(θ) + (λ/2)‖θ‖²`` with L-BFGS (scipy) from ``theta0``.

    Computes in ``theta0``'s dtype (use float64 for ground-truth retraining). ``hessian`` ``(p, p)``, a
    positive-definite Hessian of the objective near the solution (e.g. ``∇²R(θ*)`` when retraining from
    ``θ*``), preconditions the search: L-BFGS then runs on ``z = Lᵀ(θ − θ0)`` (``LLᵀ = hessian``), where
    the objective is nearly isotropic, and converges in tens of steps instead of hundreds. Raises
    ``ValueError`` for bad arguments before any work, and ``ConvergenceError`` unless the gradient's max-norm
    (in ``θ``) ends below ``gtol`` (a NaN gradient never does).
    """
    check_inputs(theta0, inputs, what="training inputs")
    check_count(n, "n (the training-set size)")
    check_count(max_iter, "max_iter")
    if isinstance(gtol, bool) or not isinstance(gtol, (int, float)) or not 0 < gtol < math.inf:
        raise ValueError(f"gtol must be a finite number > 0, got {gtol!r}")
    check_lengths(inputs, targets)
    if weights is not None:
        check_inputs(theta0, weights, what="weights")
        if weights.shape != (len(inputs),):
            raise ValueError(f"weights must have shape ({len(inputs)},), one per example, got {tuple(weights.shape)}")
    p = theta0.numel()
    chol = None if hessian is None else cholesky_factor(hessian, p)

    def to_theta(x: np.ndarray) -> Tensor:
        step = torch.as_tensor(x, dtype=torch.float64)
        if chol is not None:
            step = torch.linalg.solve_triangular(chol.mT, step[:, None], upper=True)[:, 0]
        return (theta0.detach().cpu().double() + step).to(theta0.dtype).to(theta0.device)

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, g = objective_and_gradient(task, to_theta(x), inputs, targets, n, weights)
        if chol is not None:
            g = torch.linalg.solve_triangular(chol, g[:, None], upper=False)[:, 0]
        return value, g.numpy()

    # |∇_θ|_max = |L ∇_z|_max ≤ ‖L‖_∞ |∇_z|_max: this stopping threshold on z guarantees gtol on θ.
    z_gtol = gtol if chol is None else gtol / chol.abs().sum(dim=1).max().item()
    result = minimize(
        value_and_grad,
        np.zeros(p),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": z_gtol, "ftol": 0.0, "maxiter": max_iter, "maxcor": 30},
    )
    theta = to_theta(result.x)
    grad_norm = objective_and_gradient(task, theta, inputs, targets, n, weights)[1].abs().max().item()
    if not grad_norm <= 10 * gtol:
        raise ConvergenceError(
            f"L-BFGS stopped after {result.nit} iterations with gradient max-norm {grad_norm:.2e} "
            f"(> {10 * gtol:.0e}): {result.message}. Increase max_iter or the L2 strength."
        )
    return theta


def is_positive_definite(matrix: Tensor) -> bool:
    """Whether a symmetric matrix has a Cholesky factor (in float64)."""
    return torch.linalg.cholesky_ex(matrix.detach().cpu().double()).info.item() == 0


def cholesky_factor(hessian: Tensor, p: int) -> Tensor:
    """The float64 CPU lower Cholesky factor of a ``(p, p)`` positive-definite ``hessian``."""
    if hessian.shape != (p, p):
        raise ValueError(
            f"the preconditioning Hessian must be ({p}, {p}) for {p} parameters, got {tuple(hessian.shape)}"
        )
    chol, info = torch.linalg.cholesky_ex(hessian.detach().cpu().double())
    if info.item() != 0:
        raise ValueError("the preconditioning Hessian is not positive definite; add L2 strength or pass hessian=None")
    return chol


def objective_and_gradient(
    task: Task, theta: Tensor, inputs: Tensor, targets: Tensor, n: int, weights: Tensor | None
) -> tuple[float, Tensor]:
    """The objective's value and its gradient (float64, CPU) at ``theta``."""
    theta = theta.detach().requires_grad_(True)
    value = task.objective(theta, inputs, targets, n, weights)
    (g,) = torch.autograd.grad(value, theta)
    return value.item(), g.detach().cpu().double()


@dataclass(frozen=True)
class SGDConfig:
    """Minibatch SGD; ``weight_decay`` is the λ of ``R`` (PyTorch adds ``λθ`` to the mean-loss gradient)."""

    epochs: int = 200
    lr: float = 0.01
    weight_decay: float = 0.01
    batch_size: int = 64
    momentum: float = 0.0
    cosine: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0 or self.momentum < 0:
            raise ValueError(f"invalid SGD settings: {self}")


def train_sgd(
    model: nn.Module,
    loss: Loss,
    inputs: Tensor,
    targets: Tensor,
    config: SGDConfig,
    seed: int = 0,
    progress: bool = False,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on the mean per-example loss; returns the mean training loss per epoch.

    The shuffling order is seeded by ``seed``; initialise the model under the same seed for a
    reproducible run. ``on_epoch_end(epoch, lr)`` is called after each epoch with the learning rate
    that epoch used (for TracIn checkpoints). The model is left in ``eval()`` mode.
    """
    check_inputs(next(model.parameters()).detach(), inputs, what="training inputs")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs) if config.cosine else None
    history = []
    model.train()
    for epoch in tqdm(range(config.epochs), desc="SGD epochs", disable=not progress, leave=False):
        order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
        total = 0.0
        for start in range(0, len(inputs), config.batch_size):
            idx = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            batch_loss = loss(model(inputs[idx]).reshape(len(idx), -1), targets[idx]).mean()
            batch_loss.backward()
            optimizer.step()
            total += batch_loss.item() * len(idx)
        if not torch.isfinite(torch.tensor(total)):
            raise ConvergenceError("SGD diverged (the training loss became NaN or inf); lower the learning rate")
        history.append(total / len(inputs))
        if on_epoch_end is not None:
            model.eval()
            on_epoch_end(epoch, optimizer.param_groups[0]["lr"])
            model.train()
        if scheduler is not None:
            scheduler.step()
    model.eval()
    return history

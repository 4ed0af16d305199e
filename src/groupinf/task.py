"""What the user describes: a model, its per-example training loss, the L2 strength and a target.

The task knows nothing about influence methods (dattri's separation of task from method). All
functions take the attributed parameters as a flat vector ``theta`` (see ``ParamSpace``). The ``Target``
interface lives here, beside the ``Task`` its methods take; the concrete targets are in ``target.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jvp, vmap

from groupinf.checks import check_type
from groupinf.losses import Loss
from groupinf.params import ParamSpace


def check_inputs(theta: Tensor, *tensors: Tensor, what: str = "inputs") -> None:
    """Raise ``TypeError`` unless every argument is a tensor, ``ValueError`` when a tensor is on another
    device, has NaN/inf, or a float dtype mismatch."""
    for t in (theta, *tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"expected torch tensors for the parameters and {what}, got {type(t).__name__}")
    for t in tensors:
        if t.device != theta.device:
            raise ValueError(f"{what} are on {t.device} but the parameters are on {theta.device}; move them with .to()")
        if t.is_floating_point():
            if t.dtype != theta.dtype:
                raise ValueError(
                    f"{what} have dtype {t.dtype} but the parameters have {theta.dtype}; convert one of them"
                )
            if not torch.isfinite(t).all():
                raise ValueError(f"{what} contain NaN or inf values; clean the data first")


def check_lengths(inputs: Tensor, targets: Tensor, what: str = "inputs") -> None:
    """Raise ``ValueError`` unless ``inputs`` and ``targets`` have one row per example each."""
    if len(inputs) != len(targets):
        raise ValueError(f"{what} have {len(inputs)} rows but targets have {len(targets)}")


class Target(ABC):
    """A scalar function of the attributed parameters, to be minimised."""

    @abstractmethod
    def value(self, task: Task, theta: Tensor) -> Tensor:
        """``f(θ)``, a scalar tensor."""

    def gradient(self, task: Task, theta: Tensor) -> Tensor:
        """``∇f(θ)`` ``(p,)``."""
        g = grad(lambda th: self.value(task, th))(theta)
        if not torch.isfinite(g).all():
            raise ValueError("the target gradient contains NaN or inf")
        return g

    def hvp(self, task: Task, theta: Tensor, V: Tensor) -> Tensor:
        """Exact ``∇²f(θ) Vᵀ`` for ``V`` ``(k, p)`` -> ``(k, p)``."""
        g = grad(lambda th: self.value(task, th))
        return vmap(lambda v: jvp(g, (theta,), (v,))[1])(V)

    def hessian(self, task: Task, theta: Tensor) -> Tensor:
        """Dense exact ``∇²f(θ)`` ``(p, p)`` (small models only)."""
        return hessian(lambda th: self.value(task, th))(theta)

    def ggn_vp(self, task: Task, theta: Tensor, V: Tensor) -> Tensor:
        """Gauss–Newton products; only defined for loss-type targets."""
        raise ValueError(f"{type(self).__name__} has no Gauss–Newton form; use the exact target Hessian (hvp) instead")


@dataclass
class Task:
    """Model + unscaled per-example loss + L2 strength + target function.

    The training objective is ``R(θ) = (1/n) Σ_i l_i(θ) + (λ/2)‖θ‖²`` with ``λ = l2`` applied to the
    attributed parameters; ``n`` is always passed explicitly by the caller.
    """

    model: nn.Module
    loss: Loss
    l2: float
    target: Target
    param_names: Iterable[str] | None = None
    space: ParamSpace = field(init=False)

    def __post_init__(self) -> None:
        check_type(float, "l2", self.l2)
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        self.space = ParamSpace.of(self.model, self.param_names)

    def theta(self) -> Tensor:
        """The model's current attributed parameters, flat ``(p,)``."""
        return self.space.current(self.model)

    def outputs(self, theta: Tensor, inputs: Tensor) -> Tensor:
        """Model outputs ``(B, C)`` at parameters ``theta`` (1-D outputs become ``(B, 1)``)."""
        out = functional_call(self.model, self.space.unflatten(theta), (inputs,))
        return out.reshape(out.shape[0], -1)

    def losses(self, theta: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        """Per-example training losses ``(B,)``, unscaled."""
        return self.loss(self.outputs(theta, inputs), targets)

    def objective(
        self, theta: Tensor, inputs: Tensor, targets: Tensor, n: int, weights: Tensor | None = None
    ) -> Tensor:
        """``(1/n) Σ_i w_i l_i(θ) + (λ/2)‖θ‖²`` (``w = 1`` by default); a scalar."""
        per_example = self.losses(theta, inputs, targets)
        if weights is not None:
            per_example = per_example * weights
        return per_example.sum() / n + 0.5 * self.l2 * theta.pow(2).sum()

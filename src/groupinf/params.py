"""A flat view of a chosen subset of a module's parameters.

All of groupinf works with flat parameter vectors ``theta`` of length ``p``; this module is the one
place that maps between such vectors and the named tensors ``torch.func.functional_call`` needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ParamSpace:
    """Names, shapes and offsets of the attributed parameters, in module order.

    ``flatten``/``unflatten`` convert between a dict of tensors and a flat vector of length
    ``numel`` (parameters concatenated in the order of ``names``, each flattened row-major).
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, model: nn.Module, names: Iterable[str] | None = None) -> ParamSpace:
        """The parameters ``names`` of ``model`` (default: every parameter that requires grad)."""
        available = dict(model.named_parameters())
        if names is None:
            chosen = [n for n, p in available.items() if p.requires_grad]
        else:
            chosen = in_model_order(names, list(available), "parameter")
        if not chosen:
            raise ValueError("no parameters selected: the model has no parameter that requires grad")
        return cls(tuple(chosen), tuple(available[n].shape for n in chosen))

    @property
    def numel(self) -> int:
        return sum(prod(s) for s in self.shapes)

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        """Dict of tensors -> flat vector ``(numel,)``."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Flat vector ``(numel,)`` -> dict of views with the parameters' shapes."""
        if theta.ndim != 1 or theta.shape[0] != self.numel:
            raise ValueError(f"expected a flat parameter vector of length {self.numel}, got {tuple(theta.shape)}")
        out: dict[str, Tensor] = {}
        offset = 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = prod(shape)
            out[name] = theta[offset : offset + size].view(shape)
            offset += size
        return out

    def slices(self) -> dict[str, slice]:
        """Where each parameter lives in the flat vector."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            out[name] = slice(offset, offset + prod(shape))
            offset += prod(shape)
        return out

    def current(self, model: nn.Module) -> Tensor:
        """The model's current values of these parameters as a flat (detached) vector."""
        named = dict(model.named_parameters())
        return self.flatten({n: named[n].detach() for n in self.names}).clone()

    def load_into(self, model: nn.Module, theta: Tensor) -> None:
        """Copy the flat vector ``theta`` into the model's parameters in place."""
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.unflatten(theta).items():
                named[name].copy_(value)


def in_model_order(requested: Iterable[str], available: list[str], what: str) -> list[str]:
    """``requested`` names sorted into their order in ``available`` (a model's parameter or module names);
    an unknown or repeated name is a ``ValueError`` naming ``what`` they are ("parameter", "module")."""
    chosen = list(requested)
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise ValueError(f"unknown {what} names {unknown}; the model has {[n for n in available if n]}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{what} names must be unique, got {chosen}")
    order = {n: i for i, n in enumerate(available)}
    return sorted(chosen, key=order.__getitem__)

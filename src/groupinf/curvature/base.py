"""The one interface every training-curvature approximation implements.

A curvature object is fitted once at ``θ*`` and then answers, for many row vectors ``V`` ``(k, p)``:
``solve(V) = V (H + ρI)⁻¹`` and ``matvec(V) = V (H + ρI)``, where ``H ≈ ∇²R(θ*)`` with
``R = (1/n) Σ l_i + (λ/2)‖θ‖²`` and ``ρ`` the damping it was fitted with.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import Any, Literal

from torch import Tensor

#: A fixed damping ``ρ >= 0``, or "heuristic" for ``ρ = 0.1 × mean eigenvalue``.
Damping = float | Literal["heuristic"]

HEURISTIC_FACTOR = 0.1


def check_damping(damping: Any) -> Damping:
    """``damping`` as given (a finite number ``>= 0`` or "heuristic"), else a ``ValueError``: the one check of a
    damping setting, used by the curvatures, the configs and the command line."""
    if damping == "heuristic":
        return "heuristic"
    number = isinstance(damping, numbers.Real) and not isinstance(damping, bool)
    if not number or not math.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number >= 0 or 'heuristic', got {damping!r}")
    return float(damping)


def resolve_damping(damping: Damping, mean_eigenvalue: float) -> float:
    """The numeric damping: ``damping`` itself, or ``0.1 × mean_eigenvalue`` for "heuristic"."""
    if check_damping(damping) == "heuristic":
        if not math.isfinite(mean_eigenvalue):
            raise ValueError(f"the curvature's mean eigenvalue is {mean_eigenvalue}: its inputs contain NaN or inf")
        return HEURISTIC_FACTOR * mean_eigenvalue
    return float(damping)


class Curvature(ABC):
    """A fitted, damped approximation of the training Hessian."""

    #: the numeric damping ρ actually used
    damping: float

    @abstractmethod
    def solve(self, V: Tensor) -> Tensor:
        """``V (H + ρI)⁻¹`` for row vectors ``V`` ``(k, p)`` -> ``(k, p)``, in ``V``'s dtype."""

    @abstractmethod
    def matvec(self, V: Tensor) -> Tensor:
        """``V (H + ρI)`` for row vectors ``V`` ``(k, p)`` -> ``(k, p)``."""


def parse_damping(text: str) -> Damping:
    """A damping written as text (a command-line option, a config value): ``check_damping`` of the number it
    spells, or of the text itself ("heuristic")."""
    try:
        value: Any = float(text)
    except ValueError:
        value = text
    return check_damping(value)

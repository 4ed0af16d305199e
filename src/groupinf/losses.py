"""Per-example losses with the output-space quantities influence functions need.

Every loss maps model outputs ``(B, C)`` and targets ``(B,)`` to per-example losses ``(B,)``,
unscaled (never averaged over the batch). ``output_hessian`` returns ``Λ = ∂²l/∂h²`` ``(B, C, C)``
used by the Gauss–Newton matrix; ``output_hessian_sqrt`` a factor ``L`` with ``Λ = L Lᵀ``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor


class Loss(ABC):
    """A per-example loss ``l(h, y)`` of the model output ``h``."""

    name: str
    #: "classification" (outputs are logits) or "regression" (outputs are predictions)
    kind: str

    @abstractmethod
    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-example losses ``(B,)`` of outputs ``(B, C)`` and targets ``(B,)``."""

    @abstractmethod
    def output_hessian_sqrt(self, outputs: Tensor) -> Tensor:
        """``L`` ``(B, C, C)`` with ``L Lᵀ = ∂²l/∂h²``; independent of the targets for these losses."""

    def output_hessian(self, outputs: Tensor) -> Tensor:
        """``Λ = ∂²l/∂h²`` ``(B, C, C)``."""
        root = self.output_hessian_sqrt(outputs)
        return root @ root.transpose(-1, -2)

    @abstractmethod
    def sample_targets(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Targets ``(B,)`` drawn from the model's predictive distribution (true Fisher)."""

    @abstractmethod
    def predictions(self, outputs: Tensor) -> Tensor:
        """The output-space embedding used to build groups ``(B, C)``: class probabilities or predictions."""


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits ``(B, C)`` with integer targets; ``Λ = diag(p) − ppᵀ``."""

    name = "cross_entropy"
    kind = "classification"

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def output_hessian_sqrt(self, outputs: Tensor) -> Tensor:
        p = torch.softmax(outputs, dim=-1)
        root_p = p.sqrt()
        # (diag(√p) − p √pᵀ)(diag(√p) − √p pᵀ) = diag(p) − ppᵀ because Σ p = 1.
        return torch.diag_embed(root_p) - p.unsqueeze(-1) * root_p.unsqueeze(-2)

    def sample_targets(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        p = torch.softmax(outputs.detach(), dim=-1)
        return torch.multinomial(p, 1, generator=generator).squeeze(-1)

    def predictions(self, outputs: Tensor) -> Tensor:
        return torch.softmax(outputs, dim=-1)


class BinaryLogistic(Loss):
    """Logistic loss on one logit ``(B, 1)`` with targets in {0, 1}: ``softplus(h) − y h``."""

    name = "binary_logistic"
    kind = "classification"

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        logits = outputs.reshape(outputs.shape[0])
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")

    def output_hessian_sqrt(self, outputs: Tensor) -> Tensor:
        s = torch.sigmoid(outputs.reshape(outputs.shape[0], 1))
        return (s * (1 - s)).sqrt().unsqueeze(-1)

    def sample_targets(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        s = torch.sigmoid(outputs.detach().reshape(outputs.shape[0]))
        return torch.bernoulli(s, generator=generator).long()

    def predictions(self, outputs: Tensor) -> Tensor:
        s = torch.sigmoid(outputs.reshape(outputs.shape[0], 1))
        return torch.cat([1 - s, s], dim=1)


class SquaredError(Loss):
    """``½‖h − y‖²`` per example, outputs ``(B, C)`` (C = 1 for scalar regression); ``Λ = I``."""

    name = "squared_error"
    kind = "regression"

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        diff = outputs.reshape(outputs.shape[0], -1) - targets.reshape(targets.shape[0], -1).to(outputs.dtype)
        return 0.5 * diff.pow(2).sum(dim=1)

    def output_hessian_sqrt(self, outputs: Tensor) -> Tensor:
        b, c = outputs.shape[0], outputs.reshape(outputs.shape[0], -1).shape[1]
        return torch.eye(c, dtype=outputs.dtype, device=outputs.device).expand(b, c, c)

    def sample_targets(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean = outputs.detach().reshape(outputs.shape[0], -1)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return (mean + noise).squeeze(-1)

    def predictions(self, outputs: Tensor) -> Tensor:
        return outputs.reshape(outputs.shape[0], -1)


LOSSES: dict[str, type[Loss]] = {c.name: c for c in (CrossEntropy, BinaryLogistic, SquaredError)}

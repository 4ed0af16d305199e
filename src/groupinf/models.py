"""Model constructors and the loss that goes with each kind of data."""

from __future__ import annotations

from torch import nn

from groupinf.losses import BinaryLogistic, CrossEntropy, Loss, SquaredError


def linear_model(num_features: int, num_classes: int, kind: str) -> tuple[nn.Module, Loss]:
    """Logistic regression (binary: one logit; multinomial: C logits) or linear regression.

    ``num_classes`` is 1 for regression. Returns the model and its per-example loss.
    """
    if kind == "regression":
        return nn.Linear(num_features, 1), SquaredError()
    if kind != "classification":
        raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")
    if num_classes < 2:
        raise ValueError(f"classification needs at least 2 classes, got {num_classes}")
    if num_classes == 2:
        return nn.Linear(num_features, 1), BinaryLogistic()
    return nn.Linear(num_features, num_classes), CrossEntropy()

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


def mlp(
    num_features: int,
    num_outputs: int,
    hidden: tuple[int, ...] = (128, 128),
    dropout: float = 0.0,
) -> nn.Sequential:
    """``Linear → ReLU [→ Dropout]`` per hidden width, then a ``Linear`` to ``num_outputs``.

    Dropout is only active in ``train()`` mode; influence computations run in ``eval()`` mode.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = num_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


def loss_for(kind: str, num_classes: int) -> Loss:
    """Cross-entropy for classification (``num_classes`` logits), squared error for regression."""
    if kind == "classification":
        return CrossEntropy()
    if kind == "regression":
        return SquaredError()
    raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")

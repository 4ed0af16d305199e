"""Model constructors and the loss that goes with each kind of data."""

from __future__ import annotations

from torch import Tensor, nn

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


def _conv_block(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``x + f(x)``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return x + self.inner(x)


class Scale(nn.Module):
    """Multiplies by a constant (ResNet-9's 0.125 on the logits)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def resnet9(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Sequential:
    """ResNet-9 in the DAWNBench layout (Page, 2018): prep, three stages with max-pooling and two
    residual blocks, global max-pool, a bias-free linear layer scaled by 0.125. Widths
    ``width·(1, 2, 4, 8)``; inputs ``(B, in_channels, H, W)`` with H, W divisible by 8."""
    w = width
    return nn.Sequential(
        _conv_block(in_channels, w),
        _conv_block(w, 2 * w, pool=True),
        Residual(nn.Sequential(_conv_block(2 * w, 2 * w), _conv_block(2 * w, 2 * w))),
        _conv_block(2 * w, 4 * w, pool=True),
        _conv_block(4 * w, 8 * w, pool=True),
        Residual(nn.Sequential(_conv_block(8 * w, 8 * w), _conv_block(8 * w, 8 * w))),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * w, num_classes, bias=False),
        Scale(0.125),
    )


def weight_parameters(model: nn.Module) -> list[str]:
    """Names of the Linear and Conv2d parameters (what K-FAC/EK-FAC cover); normalisation layers excluded."""
    return [
        f"{name}.{p}" if name else p
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
        for p, _ in module.named_parameters(recurse=False)
    ]

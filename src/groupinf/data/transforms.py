"""Feature preprocessing shared by the experiments."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from groupinf.data.dataset import Dataset


def _scale(train: np.ndarray, channels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (std 0 → 1) of the training features, broadcastable to ``(n, d)``.

    Tabular data (``channels`` None): one pair per feature. Pixel data: one pair per channel, shared by all
    pixels of that channel, as image pipelines normalise. Per-pixel statistics would turn a border pixel that
    is lit in a handful of images into a feature of tens of standard deviations (up to 35 σ in digits' training
    split, 86 σ in its test split), and those few images would then dominate any leave-group-out retraining.
    """
    if channels is None:
        mean, std = train.mean(axis=0), train.std(axis=0)
    else:
        by_channel = train.reshape(len(train), channels, -1)
        mean = np.repeat(by_channel.mean(axis=(0, 2)), by_channel.shape[2])
        std = np.repeat(by_channel.std(axis=(0, 2)), by_channel.shape[2])
    std[std == 0] = 1.0
    return mean, std


def standardize(data: Dataset, flatten: bool = True) -> Dataset:
    """Standardise features with training statistics (per feature, or per channel for pixel data, see
    ``Dataset.channels``), flattened to ``(n, d)`` unless ``flatten`` is False; regression targets are
    standardised the same way. A target split is transformed like the test split."""
    train = data.X_train.astype(np.float64).reshape(len(data.X_train), -1)
    mean, std = _scale(train, data.channels)
    shape = (-1,) if flatten else data.feature_shape
    y_mean, y_std = (data.y_train.mean(), data.y_train.std() or 1.0) if data.kind == "regression" else (0.0, 1.0)
    changed = {}
    for split, X, y in data.splits():
        flat = X.astype(np.float64).reshape(len(X), -1)
        changed[f"X_{split}"] = ((flat - mean) / std).astype(np.float32).reshape(len(X), *shape)
        if data.kind == "regression":
            changed[f"y_{split}"] = ((y - y_mean) / y_std).astype(np.float32)
    return replace(data, **changed)

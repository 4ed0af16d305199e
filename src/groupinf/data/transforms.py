"""Feature preprocessing shared by the experiments."""

from __future__ import annotations

import numpy as np

from groupinf.data.dataset import Dataset


def standardize(data: Dataset, flatten: bool = True) -> Dataset:
    """Standardise features with the training mean and std per feature (std 0 → 1), flattened to
    ``(n, d)`` unless ``flatten`` is False; regression targets are standardised the same way."""
    train = data.X_train.astype(np.float64)
    test = data.X_test.astype(np.float64)
    if flatten:
        train, test = train.reshape(len(train), -1), test.reshape(len(test), -1)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    y_train, y_test = data.y_train, data.y_test
    if data.kind == "regression":
        y_mean, y_std = y_train.mean(), y_train.std() or 1.0
        y_train = ((y_train - y_mean) / y_std).astype(np.float32)
        y_test = ((y_test - y_mean) / y_std).astype(np.float32)
    return Dataset(
        data.name,
        ((train - mean) / std).astype(np.float32),
        y_train,
        ((test - mean) / std).astype(np.float32),
        y_test,
        data.kind,
    )

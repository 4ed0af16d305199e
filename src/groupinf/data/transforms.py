"""Feature preprocessing shared by the experiments."""

from __future__ import annotations

import numpy as np

from groupinf.data.dataset import Dataset


def standardize(data: Dataset) -> Dataset:
    """Flatten features to ``(n, d)`` and standardise with the training mean and std (std 0 → 1)."""
    train = data.X_train.reshape(len(data.X_train), -1).astype(np.float64)
    test = data.X_test.reshape(len(data.X_test), -1).astype(np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    return Dataset(
        data.name,
        ((train - mean) / std).astype(np.float32),
        data.y_train,
        ((test - mean) / std).astype(np.float32),
        data.y_test,
        data.kind,
    )

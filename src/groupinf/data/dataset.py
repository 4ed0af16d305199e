"""The one in-memory data set type every loader returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from groupinf.digests import content_digest

TaskKind = Literal["classification", "regression"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split held as numpy arrays.

    Shapes: ``X_train`` (n, *feature_shape) float32, ``y_train`` (n,) int64 for classification
    (labels 0..num_classes-1) or float32 for regression; the same for the test arrays.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    kind: TaskKind
    channels: int | None = None

    def __post_init__(self) -> None:
        for split, X, y in (("train", self.X_train, self.y_train), ("test", self.X_test, self.y_test)):
            if len(X) != len(y):
                raise ValueError(f"{self.name}: X_{split} has {len(X)} rows but y_{split} has {len(y)}")
            if len(X) == 0:
                raise ValueError(f"{self.name}: the {split} split is empty")
            if not np.isfinite(X).all():
                raise ValueError(f"{self.name}: X_{split} contains NaN or inf; clean or impute it first")
            if self.kind == "regression" and not np.isfinite(y).all():
                raise ValueError(f"{self.name}: y_{split} contains NaN or inf")
        if self.X_train.shape[1:] != self.X_test.shape[1:]:
            raise ValueError(
                f"{self.name}: train features {self.X_train.shape[1:]} != test features {self.X_test.shape[1:]}"
            )
        if self.channels is not None and self.X_train[0].size % self.channels:
            raise ValueError(f"{self.name}: {self.X_train[0].size} features do not split into {self.channels} channels")
        if self.kind == "classification":
            for split, y in (("train", self.y_train), ("test", self.y_test)):
                if not np.issubdtype(y.dtype, np.integer):
                    raise ValueError(f"{self.name}: classification labels y_{split} must be integers")
                if y.min() < 0:
                    raise ValueError(f"{self.name}: labels must be 0..C-1, y_{split} has {y.min()}")

    @property
    def num_classes(self) -> int:
        """Number of classes (classification) or 1 (regression: one output)."""
        if self.kind == "regression":
            return 1
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def fingerprint(self) -> str:
        """A short SHA-256 of the four arrays (shapes, dtypes, bytes): caches keyed by it go stale with the data."""
        return content_digest(self.X_train, self.y_train, self.X_test, self.y_test)[:16]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.X_train.shape[1:])

"""The one in-memory data set type every loader returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from groupinf.digests import content_digest

TaskKind = Literal["classification", "regression"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split held as numpy arrays, optionally with a target split of its own.

    Shapes: ``X_train`` (n, *feature_shape) float32, ``y_train`` (n,) int64 for classification
    (labels 0..num_classes-1) or float32 for regression; the same for the test arrays and for
    ``X_target``/``y_target``, the examples that define a selection target (both or neither).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    kind: TaskKind
    channels: int | None = None
    X_target: np.ndarray | None = None
    y_target: np.ndarray | None = None

    def splits(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``(name, X, y)`` of every split present: train, test and, if given, target."""
        found = [("train", self.X_train, self.y_train), ("test", self.X_test, self.y_test)]
        if self.X_target is not None and self.y_target is not None:
            found.append(("target", self.X_target, self.y_target))
        return found

    def __post_init__(self) -> None:
        if (self.X_target is None) != (self.y_target is None):
            raise ValueError(f"{self.name}: give both X_target and y_target or neither")
        for split, X, y in self.splits():
            if len(X) != len(y):
                raise ValueError(f"{self.name}: X_{split} has {len(X)} rows but y_{split} has {len(y)}")
            if len(X) == 0:
                raise ValueError(f"{self.name}: the {split} split is empty")
            if not np.isfinite(X).all():
                raise ValueError(f"{self.name}: X_{split} contains NaN or inf; clean or impute it first")
            if self.kind == "regression" and not np.isfinite(y).all():
                raise ValueError(f"{self.name}: y_{split} contains NaN or inf")
        for split, X, _ in self.splits()[1:]:
            if X.shape[1:] != self.X_train.shape[1:]:
                raise ValueError(
                    f"{self.name}: train features {self.X_train.shape[1:]} != {split} features {X.shape[1:]}"
                )
        if self.channels is not None and self.X_train[0].size % self.channels:
            raise ValueError(f"{self.name}: {self.X_train[0].size} features do not split into {self.channels} channels")
        if self.kind == "classification":
            for split, _, y in self.splits():
                if not np.issubdtype(y.dtype, np.integer):
                    raise ValueError(f"{self.name}: classification labels y_{split} must be integers")
                if y.min() < 0:
                    raise ValueError(f"{self.name}: labels must be 0..C-1, y_{split} has {y.min()}")

    @property
    def num_classes(self) -> int:
        """Number of classes (classification) or 1 (regression: one output)."""
        if self.kind == "regression":
            return 1
        return int(max(y.max() for _, _, y in self.splits())) + 1

    @property
    def has_target(self) -> bool:
        """Whether the data set carries its own target split (``X_target``, ``y_target``)."""
        return self.X_target is not None

    def fingerprint(self) -> str:
        """A short SHA-256 of the arrays (shapes, dtypes, bytes): caches keyed by it go stale with the data."""
        return content_digest(*(array for _, X, y in self.splits() for array in (X, y)))[:16]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.X_train.shape[1:])

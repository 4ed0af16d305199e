"""Reading a CSV file with a header row into its column names and a table of strings."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from groupinf.files import utf8_lines


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Return the header names and the cells as a string array of shape (rows, columns).

    Blank lines are skipped; a row whose field count differs from the header's, or a line that is not UTF-8,
    raises ``ValueError``.
    """
    rows = [row for row in csv.reader(utf8_lines(path)) if row]
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    for number, row in enumerate(rows[1:], start=1):
        if len(row) != len(header):
            raise ValueError(f"{path}: data row {number} has {len(row)} fields, the header has {len(header)}")
    return header, np.array(rows[1:], dtype=str)


def to_float(cells: np.ndarray, path: Path) -> np.ndarray:
    """Parse a string array as float64, naming the file if a cell is not a number."""
    try:
        return cells.astype(np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: non-numeric value ({err})") from err

"""The error raised when a data file is missing, and the lookup that raises it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class MissingDataFileError(FileNotFoundError):
    """A data file is not where the loader looked; the message says how to get it."""


def find_file(candidates: Sequence[Path], remedy: str) -> Path:
    """Return the first existing path of ``candidates``, else raise naming every path tried."""
    for path in candidates:
        if path.is_file():
            return path
    tried = " or ".join(str(path) for path in candidates)
    raise MissingDataFileError(f"data file not found: {tried}. {remedy}")

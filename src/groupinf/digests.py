"""The keys that tie caches and stores to what they came from, one function per kind of key.

- content digests (SHA-256 of what the data hold): ``content_digest`` of arrays, ``file_digest`` of a file;
- ``settings_digest``: a short SHA-256 of JSON settings, the name of a cached result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from torch import Tensor


def content_digest(*arrays: np.ndarray | Tensor) -> str:
    """SHA-256 (hex) of each array's shape, dtype name and bytes, in order; numpy arrays or tensors (any device).

    The dtype's name is numpy's or torch's, so a tensor and its numpy copy have different digests."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{tuple(array.shape)}{array.dtype}".encode())
        values = array.detach().cpu().contiguous().numpy() if isinstance(array, Tensor) else np.ascontiguousarray(array)
        digest.update(values.tobytes())
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex, as ``sha256sum`` prints it), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def settings_digest(settings: object) -> str:
    """A short SHA-256 (16 hex digits) of ``settings``' JSON (keys sorted, other types by ``str``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

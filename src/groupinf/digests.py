"""Content hashes of arrays: the keys that tie caches and stores to the exact data they came from."""

from __future__ import annotations

import hashlib

import numpy as np
from torch import Tensor


def content_digest(*arrays: np.ndarray | Tensor) -> str:
    """SHA-256 (hex) of each array's shape, dtype and bytes, in order; numpy arrays or tensors (any device)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{tuple(array.shape)}{array.dtype}".encode())
        values = array.detach().cpu().contiguous().numpy() if isinstance(array, Tensor) else np.ascontiguousarray(array)
        digest.update(values.tobytes())
    return digest.hexdigest()

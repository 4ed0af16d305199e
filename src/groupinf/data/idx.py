"""Reader for IDX files, the format of MNIST and FashionMNIST, gzip-compressed or raw."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code (third magic byte) -> big-endian element type.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file into an array of shape (d0, d1, ...) in native byte order.

    Gzip compression is detected from the file's magic bytes, not its name. Raises ``ValueError``
    naming the file if the header is invalid or the size does not match the declared shape.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith(GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (the magic number must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions declared)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX shape {shape} of {dtype.name} needs {expected} bytes but the (decompressed) "
            f"file has {len(raw)}; it is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))

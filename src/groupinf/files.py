"""Files: crash-safe writing (a temporary file beside the target, then a rename), UTF-8 text read line by
line, and an exclusive lock on a directory."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor


def _create_beside(path: Path, create: Callable[[Path], None]) -> Path:
    """A new temporary name ``.<name>.<random>.tmp`` beside ``path``, made by ``create`` (which must fail if
    the name exists). Created with the full mode (0666 files, 0777 directories) less the umask, as any file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            create(tmp)
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, else removed.

    A reader therefore sees either the old file or the complete new one, never a partial file. The file's
    permissions follow the umask, as those of a file opened for writing (also when the writer replaced the
    temporary file by one of its own).
    """
    path = Path(path)
    tmp = _create_beside(path, lambda name: os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    permissions = tmp.stat().st_mode
    try:
        yield tmp
        os.chmod(tmp, permissions)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it replaces ``path`` (an existing
    directory is removed first), else it is removed. Its permissions follow the umask."""
    path = Path(path)
    tmp = _create_beside(path, lambda name: name.mkdir(0o777))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` either keeps its old content or holds all of ``data``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    buffer = BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def read_safetensors(path: str | Path, what: str, device: str = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors (on ``device``) and metadata of a safetensors file; a ``FileNotFoundError`` or ``ValueError``
    naming the file, ``what`` saying what it should be and how to get one.

    On the CPU the tensors are copied out of the file's memory map into memory of their own: a mapped tensor
    starts wherever the file's header ends, and BLAS kernels round differently at different alignments, so
    the same values read from two files with headers of other lengths could give different products (and a
    greedy selection that breaks a near-tie the other way)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}; {what}")
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            if torch.device(device).type == "cpu":
                tensors = {key: tensor.clone() for key, tensor in tensors.items()}
            return tensors, handle.metadata() or {}
    except (SafetensorError, ValueError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}); {what}") from None


def utf8_lines(path: str | Path) -> Iterator[str]:
    """The lines of a text file (line ends kept), read one at a time; a ``ValueError`` naming the file and the
    line when one is not UTF-8."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                    f"{error.start + 1}); save the file as UTF-8"
                ) from None


@contextmanager
def exclusive(directory: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (created if missing) while the block runs; a ``ValueError``
    when another process holds it. ``what`` names the work, for that message. The lock goes with the process,
    so a killed holder never leaves it behind."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    handle = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another process is {what} in {directory}; wait for it to finish, or use another directory"
            ) from None
        yield
    finally:
        os.close(handle)

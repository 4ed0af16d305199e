"""Image data sets from their standard offline file formats: MNIST, FashionMNIST, CIFAR-10.

Images come back float32 in [0, 1] with a channel axis: (n, 1, 28, 28) for the MNIST family,
(n, 3, 32, 32) for CIFAR-10; labels int64 0..9. The published train/test splits are kept.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from groupinf.data.dataset import Dataset
from groupinf.data.errors import find_file
from groupinf.data.idx import read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_REMEDY = (
    "Install Debian's copy with `apt-get install dataset-fashion-mnist` (it goes to "
    f"{FASHION_MNIST_DIR}) or pass --data-dir with the four FashionMNIST IDX files."
)
MNIST_REMEDY = (
    "Download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz from the MNIST site (http://yann.lecun.com/exdb/mnist/) into one "
    "directory and pass it with --data-dir."
)
CIFAR10_REMEDY = (
    'Download the "CIFAR-10 python version" tarball (cifar-10-python.tar.gz) from '
    "https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and pass the directory holding "
    "cifar-10-batches-py (or that folder itself) with --data-dir."
)
CIFAR10_SUBDIR = "cifar-10-batches-py"


def _idx_file(data_dir: Path, name: str, remedy: str) -> Path:
    return find_file([data_dir / name, data_dir / f"{name}.gz"], remedy)


def _load_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 1, h, w) float32 in [0, 1] and labels (n,) int64 from two IDX files."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images (n, h, w), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected labels of shape (n,), got {labels.shape}")
    return images[:, None].astype(np.float32) / 255, labels.astype(np.int64)


def _load_idx_dataset(name: str, data_dir: Path, remedy: str) -> Dataset:
    splits = []
    for prefix in ("train", "t10k"):
        images = _idx_file(data_dir, f"{prefix}-images-idx3-ubyte", remedy)
        labels = _idx_file(data_dir, f"{prefix}-labels-idx1-ubyte", remedy)
        splits.append(_load_idx_pair(images, labels))
    (X_train, y_train), (X_test, y_test) = splits
    return Dataset(name, X_train, y_train, X_test, y_test, "classification", channels=1)


def load_mnist(data_dir: str | Path) -> Dataset:
    """MNIST from its four IDX files (raw or ``.gz``) in ``data_dir``: 60000/10000 images (1, 28, 28)."""
    return _load_idx_dataset("mnist", Path(data_dir), MNIST_REMEDY)


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    """FashionMNIST from its four IDX files (raw or ``.gz``): 60000/10000 images (1, 28, 28).

    ``data_dir`` defaults to /usr/share/datasets/fashion-mnist, where Debian's
    ``dataset-fashion-mnist`` package installs the gzipped files.
    """
    return _load_idx_dataset("fashion-mnist", Path(data_dir or FASHION_MNIST_DIR), FASHION_MNIST_REMEDY)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, so a batch file cannot run arbitrary code."""

    ALLOWED = frozenset(
        {
            ("_codecs", "encode"),
            ("numpy", "dtype"),
            ("numpy", "ndarray"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) float32 in [0, 1] and labels (n,) int64 from one pickled batch."""
    with path.open("rb") as f:
        try:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: a CIFAR-10 batch is a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}")
    # Each row holds the 1024 red, then green, then blue values of a 32x32 image, row-major.
    images = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255
    return images, np.asarray(batch[b"labels"], dtype=np.int64)


def load_cifar10(data_dir: str | Path) -> Dataset:
    """CIFAR-10 from the python-version pickles (``data_batch_1..5``, ``test_batch``): 50000/10000 images.

    The batches may sit in ``data_dir`` itself or in ``data_dir/cifar-10-batches-py``.
    """
    data_dir = Path(data_dir)
    batch_dir = data_dir if (data_dir / "data_batch_1").is_file() else data_dir / CIFAR10_SUBDIR
    names = [f"data_batch_{i}" for i in range(1, 6)]
    train = [_load_cifar_batch(find_file([batch_dir / n], CIFAR10_REMEDY)) for n in names]
    X_test, y_test = _load_cifar_batch(find_file([batch_dir / "test_batch"], CIFAR10_REMEDY))
    X_train = np.concatenate([X for X, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return Dataset("cifar10", X_train, y_train, X_test, y_test, "classification", channels=3)

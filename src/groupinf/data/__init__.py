"""Offline data loaders; every loader returns a :class:`Dataset`."""

from groupinf.data.dataset import Dataset
from groupinf.data.errors import MissingDataFileError
from groupinf.data.files import load_csv, load_npz
from groupinf.data.idx import read_idx
from groupinf.data.images import load_cifar10, load_fashion_mnist, load_mnist
from groupinf.data.registry import load_dataset
from groupinf.data.tabular import load_concrete, load_digits, load_parkinsons

__all__ = [
    "Dataset",
    "MissingDataFileError",
    "load_cifar10",
    "load_concrete",
    "load_csv",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_npz",
    "load_parkinsons",
    "read_idx",
]

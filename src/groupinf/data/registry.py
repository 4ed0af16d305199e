"""One entry point that loads a data set by name or by file path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from groupinf.data.dataset import Dataset
from groupinf.data.files import load_csv, load_npz
from groupinf.data.images import load_cifar10, load_fashion_mnist, load_mnist
from groupinf.data.tabular import load_concrete, load_digits, load_parkinsons

# name -> loader taking the data directory (None where the user gave none).
LOADERS: dict[str, Callable[[str | None], Dataset]] = {
    "digits": lambda _: load_digits(),
    "fashion-mnist": load_fashion_mnist,
    "mnist": lambda data_dir: load_mnist(_required_dir("mnist", data_dir)),
    "cifar10": lambda data_dir: load_cifar10(_required_dir("cifar10", data_dir)),
    "concrete": lambda _: load_concrete(),
    "parkinsons": lambda data_dir: load_parkinsons(_required_dir("parkinsons", data_dir)),
}
ALIASES = {"fashionmnist": "fashion-mnist"}


def _required_dir(name: str, data_dir: str | None) -> str:
    if data_dir is None:
        raise ValueError(f"the {name} data set needs a data directory: pass data_dir (--data-dir)")
    return data_dir


def load_dataset(spec: str, data_dir: str | None = None) -> Dataset:
    """Load a data set by name (see ``LOADERS``; case-insensitive) or from a ``.npz``/``.csv`` path.

    ``data_dir`` is where ``mnist``, ``cifar10`` and ``parkinsons`` (required) and ``fashion-mnist``
    (optional) look for their files; ``digits``, ``concrete`` and file paths ignore it. A CSV path
    uses its last column as the target.
    """
    suffix = Path(spec).suffix.lower()
    if suffix == ".npz":
        return load_npz(spec)
    if suffix == ".csv":
        return load_csv(spec)
    name = ALIASES.get(spec.lower(), spec.lower())
    if name not in LOADERS:
        valid = ", ".join([*LOADERS, *ALIASES])
        raise ValueError(f"unknown data set {spec!r}; valid names: {valid}, or a path ending in .npz or .csv")
    return LOADERS[name](data_dir)

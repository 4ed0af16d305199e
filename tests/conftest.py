"""Shared small problems: float64 models on data the tests make themselves or that sklearn ships."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn

from groupinf.data.dataset import Dataset
from groupinf.data.transforms import standardize
from groupinf.losses import CrossEntropy
from groupinf.target import mean_loss
from groupinf.task import Task


@pytest.fixture
def mlp_task() -> tuple[Task, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 5-6-3 tanh MLP with cross-entropy on 40 random examples (float64), target: 15 held-out ones."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(55, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (55,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    task = Task(model, CrossEntropy(), 0.05, mean_loss(X[40:], y[40:]))
    return task, task.theta(), X[:40], y[:40]


@pytest.fixture(scope="session")
def breast_cancer() -> Dataset:
    """Binary breast-cancer data, standardised, stratified 70/30 split."""
    X, y = load_breast_cancer(return_X_y=True)
    a, b, c, d = train_test_split(X.astype(np.float32), y, test_size=0.3, stratify=y, random_state=0)
    return standardize(Dataset("breast_cancer", a, c, b, d, "classification"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny problems: on a shared 2-core machine intra-op threads only wait
    on each other (5-10x slower). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def private_datasets_cache(tmp_path, monkeypatch):
    """A per-test Hugging Face ``datasets`` cache, so no test reads what another one wrote."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")

"""Pieces the experiments share: tensors from a data set, class entropy."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import entropy
from torch import Tensor

from groupinf.data import Dataset


def as_tensors(data: Dataset, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """``X_train``, ``y_train``, ``X_test``, ``y_test`` as tensors (labels int64, or ``dtype`` for regression)."""
    label_dtype = torch.int64 if data.kind == "classification" else dtype
    return {
        "X_train": torch.as_tensor(data.X_train, dtype=dtype),
        "y_train": torch.as_tensor(data.y_train, dtype=label_dtype),
        "X_test": torch.as_tensor(data.X_test, dtype=dtype),
        "y_test": torch.as_tensor(data.y_test, dtype=label_dtype),
    }


def class_entropy(labels: np.ndarray, num_classes: int) -> float:
    """Shannon entropy ``−Σ_c p_c log p_c`` (nats) of the label distribution."""
    return float(entropy(np.bincount(labels, minlength=num_classes)))

"""Pieces the experiments share: tensors from a data set, curvature by name, class entropy, cache keys."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from scipy.stats import entropy
from torch import Tensor

from groupinf.curvature import (
    Curvature,
    Damping,
    EigenCurvature,
    EKFACCurvature,
    KFACCurvature,
    check_damping,
    exact_hessian,
    gauss_newton,
    tensor_batches,
)
from groupinf.data import Dataset
from groupinf.task import Task

CURVATURES = ("exact", "ggn", "kfac", "ekfac")


def digest(obj: object) -> str:
    """A short SHA-256 of ``obj``'s JSON (keys sorted, other types by ``str``): the key of a cached result."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def as_tensors(data: Dataset, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """``X_train``, ``y_train``, ``X_test``, ``y_test`` as tensors (labels int64, or ``dtype`` for regression)."""
    label_dtype = torch.int64 if data.kind == "classification" else dtype
    return {
        "X_train": torch.as_tensor(data.X_train, dtype=dtype),
        "y_train": torch.as_tensor(data.y_train, dtype=label_dtype),
        "X_test": torch.as_tensor(data.X_test, dtype=dtype),
        "y_test": torch.as_tensor(data.y_test, dtype=label_dtype),
    }


def fit_curvature(
    kind: str, task: Task, theta: Tensor, inputs: Tensor, targets: Tensor, n: int, damping: Damping
) -> Curvature:
    """The training curvature named ``kind`` fitted at ``theta`` on ``(inputs, targets)``.

    ``exact``: the Hessian of ``R``; ``ggn``: the dense Gauss–Newton matrix; ``kfac``/``ekfac``: their
    Kronecker-factored approximations of the Gauss–Newton matrix (exact output-Hessian expectation).
    """
    check_damping(damping)
    if kind == "exact":
        return EigenCurvature(exact_hessian(task, theta, inputs, targets, n), damping)
    if kind == "ggn":
        return EigenCurvature(gauss_newton(task, theta, inputs, n), damping)
    if kind in ("kfac", "ekfac"):
        if n != len(inputs):
            raise ValueError("K-FAC/EK-FAC average over the given examples: pass all n training examples")
        batches = tensor_batches(inputs, targets, 256)
        cls = KFACCurvature if kind == "kfac" else EKFACCurvature
        return cls.fit(task, theta, batches, damping=damping, fisher="ggn")
    raise ValueError(f"curvature must be one of {CURVATURES}, got {kind!r}")


def class_entropy(labels: np.ndarray, num_classes: int) -> float:
    """Shannon entropy ``−Σ_c p_c log p_c`` (nats) of the label distribution."""
    return float(entropy(np.bincount(labels, minlength=num_classes)))

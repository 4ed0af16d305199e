"""Class-pair structure of the pairwise interactions (paper Fig. 2, Proposition 1).

``J_ij = ½ δ_iᵀ H_f δ_j`` over all training pairs, averaged per class pair ``(a, b)`` over pairs
``i ≠ j`` with ``y_i = a``, ``y_j = b``. Proposition 1 predicts same-class pairs of similar examples
to be redundant (``J > 0``) and cross-class ones complementary (``J < 0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from groupinf.curvature_ops import TargetCurvature


@dataclass(frozen=True)
class ClassPairs:
    """``average`` ``(C, C)`` mean ``J`` per class pair; ``lowest``/``highest`` ``(i, j, J_ij)`` example pairs."""

    average: np.ndarray
    lowest: list[tuple[int, int, float]]
    highest: list[tuple[int, int, float]]


def class_pair_interactions(
    shifts: Tensor, hf: TargetCurvature, labels: Tensor, num_classes: int, extremes: int = 3
) -> ClassPairs:
    """Average pairwise interaction per class pair and the most extreme example pairs (``i < j``)."""
    if len(shifts) != len(labels):
        raise ValueError(f"{len(shifts)} shifts but {len(labels)} labels")
    J = 0.5 * shifts @ hf.matmul(shifts).T  # (n, n), symmetric
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(J.dtype)
    sums = onehot.T @ J @ onehot - torch.diag(onehot.T @ J.diagonal())
    counts = onehot.sum(0)
    pairs = torch.outer(counts, counts) - torch.diag(counts)
    average = torch.where(pairs > 0, sums / pairs.clamp(min=1), torch.nan)
    upper = torch.triu_indices(len(J), len(J), offset=1)
    values = J[upper[0], upper[1]]
    order = torch.argsort(values)

    def pick(idx: Tensor) -> list[tuple[int, int, float]]:
        return [(int(upper[0][k]), int(upper[1][k]), float(values[k])) for k in idx]

    return ClassPairs(average.numpy(), pick(order[:extremes]), pick(order.flip(0)[:extremes]))

import numpy as np
import pytest
import torch

from groupinf.curvature_ops import DenseCurvature
from groupinf.experiments.class_pairs import class_pair_interactions


def test_class_pair_averages_equal_brute_force():
    gen = torch.Generator().manual_seed(0)
    shifts = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    root = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    Hf = root @ root.T
    labels = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 1, 0, 1, 2])
    result = class_pair_interactions(shifts, DenseCurvature(Hf), labels, 4, extremes=2)
    J = 0.5 * shifts @ Hf @ shifts.T
    for a in range(3):
        for b in range(3):
            values = [J[i, j] for i in range(12) for j in range(12) if i != j and labels[i] == a and labels[j] == b]
            assert result.average[a, b] == pytest.approx(float(np.mean(values)))
    assert np.isnan(result.average[3]).all()  # class 3 has no examples
    flat = sorted((float(J[i, j]), i, j) for i in range(12) for j in range(i + 1, 12))
    assert [(i, j) for _, i, j in flat[:2]] == [(i, j) for i, j, _ in result.lowest]
    assert [(i, j) for _, i, j in flat[::-1][:2]] == [(i, j) for i, j, _ in result.highest]

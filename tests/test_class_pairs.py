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


def test_digits_class_pairs_follow_proposition_1():
    """Multinomial LR on digits: every same-class average J is positive, every cross-class one negative,
    so the lowest-average pair is cross-class and the highest same-class."""
    from groupinf.curvature import fit_curvature
    from groupinf.data import load_dataset
    from groupinf.data.transforms import standardize
    from groupinf.experiments.faithfulness import build_task
    from groupinf.influence import GroupInfluence
    from groupinf.training import fit_convex

    task, tensors = build_task(standardize(load_dataset("digits")), l2=0.01)
    X, y = tensors["X_train"], tensors["y_train"]
    theta = fit_convex(task, task.theta(), X, y, len(X))
    influence = GroupInfluence(task, theta, X, y, fit_curvature("exact", task, theta, X, y, len(X), 0.0))
    result = class_pair_interactions(influence.shifts, influence.hf, y, 10)
    same = np.eye(10, dtype=bool)
    assert (result.average[same] > 0).all()
    assert (result.average[~same] < 0).all()
    low, high = np.unravel_index(result.average.argmin(), (10, 10)), np.unravel_index(result.average.argmax(), (10, 10))
    assert low[0] != low[1] and high[0] == high[1]
    assert all(y[i] == y[j] for i, j, _ in result.highest)

"""GroupInfluence as the one entry point: fit by name, features per pool, selection by registered method."""

import pytest
import torch

from groupinf.coresets import similarity_select, stratified_select
from groupinf.curvature import fit_curvature
from groupinf.features import compute_features, select_from_features
from groupinf.gradients import per_example_gradients
from groupinf.influence import GroupInfluence
from groupinf.target import target_curvature

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def problem(mlp_task):
    """The MLP task, its GGN-curvature influence and a pool of 20 candidates from outside the training set."""
    task, theta, X, y = mlp_task
    gen = torch.Generator().manual_seed(1)
    X_pool, y_pool = torch.randn(20, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (20,), generator=gen)
    influence = GroupInfluence.fit(task, X, y, curvature="ggn", damping=0.1, hf="ggn")
    return task, theta, X, y, X_pool, y_pool, influence


def test_fit_equals_the_parts(problem):
    task, theta, X, y, _, _, influence = problem
    parts = GroupInfluence(
        task, theta, X, y, fit_curvature("ggn", task, theta, X, y, len(X), 0.1), hf="ggn", group_hessian="ggn"
    )
    assert influence.group_hessian == "ggn" and influence.n == len(X)
    torch.testing.assert_close(influence.theta, theta)
    torch.testing.assert_close(influence.shifts, parts.shifts)
    groups = [[0, 3, 7], [1, 2]]
    for name, value in parts.estimate(groups).items():
        torch.testing.assert_close(influence.estimate(groups)[name], value)
    exact = GroupInfluence.fit(task, X, y, curvature="exact", damping=1.0, n=2 * len(X), theta=theta + 0.01)
    assert exact.group_hessian == "exact" and exact.n == 2 * len(X)
    torch.testing.assert_close(exact.theta, theta + 0.01)
    with pytest.raises(ValueError, match="damping must be"):
        GroupInfluence.fit(task, X, y, curvature="ggn", damping=-1.0)


def test_features_are_computed_once_per_pool(problem):
    task, theta, X, _, X_pool, y_pool, influence = problem
    features = influence.features(X_pool, y_pool)
    assert influence.features(X_pool, y_pool) is features
    hf = target_curvature(task, theta, "ggn")
    expected = compute_features(task, theta, influence.curvature, X_pool, y_pool, len(X), hf)
    torch.testing.assert_close(features.first_order, expected.first_order)
    torch.testing.assert_close(features.interactions.left, expected.interactions.left)
    assert features.basu is None and influence.features(X_pool, y_pool, basu="ggn").basu is not None
    other = influence.features(X_pool[:10], y_pool[:10])
    assert other.num_candidates == 10 and influence.features(X_pool[:10], y_pool[:10]) is other


def test_select_runs_the_registered_methods(problem):
    task, theta, _, _, X_pool, y_pool, influence = problem
    k = 6
    features = influence.features(X_pool, y_pool, basu="ggn")
    for method, (rule, terms) in {"F+I": ("greedy", "F+I"), "F": ("topk", "F"), "F+I+B": ("greedy", "F+I+B")}.items():
        chosen = influence.select(X_pool, y_pool, k, method, interaction_scale=4.0)
        expected = select_from_features(features, k, rule, terms, interaction_scale=4.0)
        assert torch.equal(chosen.indices, expected.indices), method
        torch.testing.assert_close(chosen.scores, expected.scores)
    assert torch.equal(
        influence.select(X_pool, y_pool, k, "stratified", seed=3).indices, stratified_select(y_pool, k, 3).indices
    )
    target = task.target
    less = similarity_select(
        per_example_gradients(task, theta, X_pool, y_pool),
        per_example_gradients(task, theta, target.inputs, target.targets),
        k,
    )
    assert torch.equal(influence.select(X_pool, y_pool, k, "LESS").indices, less.indices)
    with pytest.raises(ValueError, match="needs embeddings"):
        influence.select(X_pool, y_pool, k, "k-center")
    with pytest.raises(ValueError, match=r"unknown selection method 'F\+J'"):
        influence.select(X_pool, y_pool, k, "F+J")

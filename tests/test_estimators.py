"""Group estimators against retraining, brute-force algebra and Proposition 1."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from groupinf import estimators
from groupinf.curvature import EigenCurvature, exact_hessian
from groupinf.curvature_ops import DenseCurvature
from groupinf.experiments.faithfulness import build_task, retraining_truth
from groupinf.groups import group_sums, nearest_neighbour_groups, validate_groups
from groupinf.influence import GroupInfluence
from groupinf.training import fit_convex


@pytest.fixture(scope="module")
def binary_lr(breast_cancer):
    """Binary logistic regression (L2 0.1) trained to convergence, with its exact-Hessian influence."""
    task, tensors = build_task(breast_cancer, l2=0.1)
    X, y = tensors["X_train"], tensors["y_train"]
    theta = fit_convex(task, task.theta(), X, y, len(X))
    curvature = EigenCurvature(exact_hessian(task, theta, X, y, len(X)))
    return task, tensors, theta, GroupInfluence(task, theta, X, y, curvature)


def test_shift_matches_retraining_for_removal_and_addition(binary_lr):
    task, tensors, theta, influence = binary_lr
    X, y = tensors["X_train"], tensors["y_train"]
    n = len(X)
    group = torch.arange(0, 60, 4)
    weights = torch.ones(n, dtype=X.dtype)
    weights[group] = 0
    removed = fit_convex(task, theta, X, y, n, weights=weights) - theta
    delta_g = influence.shifts[group].sum(0)
    assert (removed - delta_g).norm() < 0.1 * removed.norm()  # first order: Δθ ≈ +δ_G
    # Addition of test-set examples with the same 1/n weight: Δθ ≈ −δ_A.
    Xa, ya = tensors["X_test"][:15], tensors["y_test"][:15]
    added = fit_convex(task, theta, torch.cat([X, Xa]), torch.cat([y, ya]), n) - theta
    delta_a = influence.shifts_for(Xa, ya).sum(0)
    assert (added + delta_a).norm() < 0.1 * added.norm()


def test_second_order_beats_first_order_on_retraining(binary_lr):
    """Over several nearest-neighbour groups, |F+I − truth| < |F − truth| on average, in both settings."""
    task, tensors, theta, influence = binary_lr
    X, y = tensors["X_train"], tensors["y_train"]
    n = len(X)
    f0 = task.target.value(task, theta).item()
    embedding = task.loss.predictions(task.outputs(theta, X)).detach().numpy()
    groups = nearest_neighbour_groups(embedding, 8, 30, seed=3)
    est = influence.estimate(groups, basu=False)
    truth = []
    for g in groups:
        w = torch.ones(n, dtype=X.dtype)
        w[torch.as_tensor(g)] = 0
        truth.append(task.target.value(task, fit_convex(task, theta, X, y, n, weights=w)).item() - f0)
    truth = torch.tensor(truth, dtype=X.dtype)
    assert (est["F+I"] - truth).abs().mean() < (est["F"] - truth).abs().mean()

    candidates = torch.arange(0, 40)
    Xa, ya = tensors["X_test"][candidates], tensors["y_test"][candidates]
    delta = influence.shifts_for(Xa, ya)
    errors_f, errors_fi = [], []
    for chunk in torch.arange(40).reshape(4, 10):
        delta_a = delta[chunk].sum(0, keepdim=True)
        first = estimators.first_order(influence.grad_f, delta_a, "addition")
        fi = first + estimators.interaction(delta_a, influence.hf)
        theta_a = fit_convex(task, theta, torch.cat([X, Xa[chunk]]), torch.cat([y, ya[chunk]]), n)
        true_a = task.target.value(task, theta_a).item() - f0
        errors_f.append(abs(first.item() - true_a))
        errors_fi.append(abs(fi.item() - true_a))
    assert np.mean(errors_fi) < np.mean(errors_f)


def test_binary_lr_group_estimates_track_retraining(binary_lr, tmp_path):
    task, tensors, theta, influence = binary_lr
    X = tensors["X_train"]
    embedding = task.loss.predictions(task.outputs(theta, X)).detach().numpy()
    groups = nearest_neighbour_groups(embedding, 50, round(0.1 * len(X)), seed=0, distinct=True)
    truth = retraining_truth(task, theta, tensors, groups, tmp_path)
    est = influence.estimate(groups)
    rho = {k: spearmanr(v.numpy(), truth).statistic for k, v in est.items()}
    assert rho["F+I"] >= 0.95
    assert rho["F+I"] >= rho["F"]
    assert len(set(np.round(truth, 12))) == 50  # 50 distinct ground-truth values


def test_proposition_1_sign_of_pairwise_interactions(binary_lr):
    """Binary LR: J_ij = (r_i r_j / 2n²) x̃_iᵀ M x̃_j; for the 100 most similar pairs sign(J) = sign(r_i r_j)."""
    task, tensors, theta, influence = binary_lr
    X, y = tensors["X_train"], tensors["y_train"]
    n = len(X)
    x_tilde = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], dim=1)  # weight then bias, as in ParamSpace
    residual = torch.sigmoid(task.outputs(theta, X)[:, 0]) - y
    H = exact_hessian(task, theta, X, y, n)
    Hf = task.target.hessian(task, theta)
    M = torch.linalg.solve(H, torch.linalg.solve(H, Hf).T)
    similarity = x_tilde @ M @ x_tilde.T
    upper = torch.triu_indices(n, n, offset=1)
    top = similarity[upper[0], upper[1]].topk(100).indices
    i, j = upper[0][top], upper[1][top]
    J = estimators.pairwise_interactions(influence.shifts, DenseCurvature(Hf))
    closed_form = residual[:, None] * residual[None, :] / (2 * n**2) * similarity
    torch.testing.assert_close(J, closed_form)
    assert torch.equal(torch.sign(J[i, j]), torch.sign(residual[i] * residual[j]))
    same_label = y[i] == y[j]
    assert 0 < int(same_label.sum()) < 100  # both redundant and complementary pairs are checked
    assert (J[i, j][same_label] > 0).all() and (J[i, j][~same_label] < 0).all()


def test_group_algebra_against_brute_force(mlp_task):
    task, theta, X, y = mlp_task
    H = exact_hessian(task, theta, X, y, len(X))
    influence = GroupInfluence(task, theta, X, y, EigenCurvature(H, damping=1.0))
    Hf = task.target.hessian(task, theta)
    g = torch.autograd.functional.jacobian(lambda th: task.target.value(task, th), theta)
    groups = [[0, 5, 9], [3], torch.tensor([12, 1, 33, 7])]
    est = influence.estimate(groups)
    for m, group in enumerate(groups):
        idx = torch.as_tensor(group)
        grads = torch.stack(
            [
                torch.autograd.functional.jacobian(
                    lambda th, i=i: task.losses(th, X[i : i + 1], y[i : i + 1])[0], theta
                )
                for i in idx.tolist()
            ]
        )
        delta_g = torch.linalg.solve(H + torch.eye(len(H), dtype=H.dtype), grads.sum(0)) / len(X)
        first, inter = g @ delta_g, 0.5 * delta_g @ Hf @ delta_g
        torch.testing.assert_close(est["F"][m], first)
        torch.testing.assert_close(est["I"][m], inter)
        torch.testing.assert_close(est["F+I"][m], first + inter)
        # Basu et al.: Δθ_B = (1−2p)/(1−p)² δ_G + 1/(1−p)² (1/n) H⁻¹ (Σ_z H_z) δ_G, p = |G|/n.
        Hz = sum(
            torch.autograd.functional.hessian(lambda th, i=i: task.losses(th, X[i : i + 1], y[i : i + 1])[0], theta)
            for i in idx.tolist()
        )
        p = len(idx) / len(X)
        response = torch.linalg.solve(H + torch.eye(len(H), dtype=H.dtype), Hz @ delta_g) / len(X)
        basu = (1 - 2 * p) / (1 - p) ** 2 * delta_g + response / (1 - p) ** 2
        torch.testing.assert_close(est["F+B"][m], g @ basu)
        torch.testing.assert_close(est["F+I+B"][m], g @ basu + inter)
        # Pairwise decomposition: I = Σ_ij J_ij = self + cross.
        J = influence.pairwise(group)
        self_part, cross_part = estimators.split_pairwise(J)
        torch.testing.assert_close(J.sum(), inter)
        torch.testing.assert_close(self_part + cross_part, inter)
        deltas = influence.shifts[idx]
        brute_cross = sum(deltas[a] @ Hf @ deltas[b] for a in range(len(idx)) for b in range(a + 1, len(idx)))
        torch.testing.assert_close(cross_part, torch.as_tensor(brute_cross, dtype=H.dtype))
    addition = influence.estimate(groups, setting="addition", basu=False)
    torch.testing.assert_close(addition["F"], -est["F"])
    torch.testing.assert_close(addition["I"], est["I"])


def test_group_sums_are_vectorised_membership_sums():
    values = torch.arange(12.0).reshape(6, 2)
    groups = validate_groups([[0, 1], [5], [2, 3, 4]], 6)
    torch.testing.assert_close(group_sums(groups, values), torch.stack([values[g].sum(0) for g in groups]))


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([[0, 1], [2, 99]], "outside the training set"),
        ([[0, 1], [-1]], "outside the training set"),
        ([[0, 1], []], "empty"),
        ([[0, 1, 1]], "repeats"),
        ([], "no groups"),
        ([[0.5, 1.0]], "integer"),
    ],
)
def test_bad_groups_are_rejected(mlp_task, groups, message):
    task, theta, X, y = mlp_task
    influence = GroupInfluence(task, theta, X, y, EigenCurvature(exact_hessian(task, theta, X, y, 40), damping=1.0))
    with pytest.raises(ValueError, match=message):
        influence.estimate(groups)
    with pytest.raises(ValueError, match="setting"):
        influence.estimate([[0]], setting="deletion")
    with pytest.raises(ValueError, match="removal"):
        influence.estimate([[0]], setting="addition", basu=True)

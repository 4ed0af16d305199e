"""Greedy selection against brute-force marginal gains."""

import pytest
import torch

from groupinf.curvature_ops import DenseCurvature, LowRankCurvature
from groupinf.selection import (
    InteractionFactors,
    addition_objective,
    first_argmin,
    greedy_select,
    marginal_scores,
    random_select,
    topk_select,
)


def random_problem(C=30, p=12, seed=0, indefinite=True):
    gen = torch.Generator().manual_seed(seed)
    shifts = torch.randn(C, p, generator=gen, dtype=torch.float64)
    root = torch.randn(p, p, generator=gen, dtype=torch.float64)
    Hf = root @ root.T / p
    if indefinite:
        Hf = Hf - 0.3 * torch.eye(p, dtype=torch.float64)
    grad_f = torch.randn(p, generator=gen, dtype=torch.float64)
    return shifts, Hf, grad_f


def brute_objective(S, shifts, Hf, grad_f, alpha=1.0):
    """Î_add(S) = −∇fᵀδ_S + α·½ δ_Sᵀ H_f δ_S from scratch (0 for the empty set)."""
    if not S:
        return torch.tensor(0.0, dtype=torch.float64)
    delta_s = shifts[S].sum(0)
    return -grad_f @ delta_s + alpha * 0.5 * delta_s @ Hf @ delta_s


@pytest.mark.parametrize(("indefinite", "alpha"), [(False, 1.0), (True, 1.0), (False, 7.5), (True, 0.3)])
def test_greedy_steps_equal_brute_force_marginal_gains(indefinite, alpha):
    shifts, Hf, grad_f = random_problem(indefinite=indefinite)
    factors = InteractionFactors.dense(shifts, DenseCurvature(Hf))
    a = shifts @ grad_f
    k = 12
    sel = greedy_select(a, k, factors, interaction_scale=alpha)
    assert sel.interaction_scale == alpha
    chosen: list[int] = []
    for step in range(k):
        base = brute_objective(chosen, shifts, Hf, grad_f, alpha)
        gains = torch.stack(
            [
                brute_objective([*chosen, c], shifts, Hf, grad_f, alpha) - base
                if c not in chosen
                else torch.tensor(float("inf"))
                for c in range(len(shifts))
            ]
        )
        best = int(torch.argmin(gains))
        assert int(sel.indices[step]) == best
        torch.testing.assert_close(sel.scores[step], gains[best])
        chosen.append(best)
    torch.testing.assert_close(sel.scores.sum(), brute_objective(chosen, shifts, Hf, grad_f, alpha))
    torch.testing.assert_close(addition_objective(a, sel.indices, factors, interaction_scale=alpha), sel.scores.sum())
    torch.testing.assert_close(marginal_scores(a, sel.indices, factors, interaction_scale=alpha), sel.scores)
    assert len(set(sel.indices.tolist())) == k


def test_interaction_scale_changes_the_picks_and_equals_rescaled_first_order():
    """A larger α trades relevance for diversity: the picks differ from α = 1, and they are the picks of
    α = 1 with ``a_c / α`` (the objective divided by α)."""
    shifts, Hf, grad_f = random_problem(C=60, seed=3, indefinite=False)
    factors = InteractionFactors.dense(shifts, DenseCurvature(Hf))
    a = shifts @ grad_f
    plain, scaled = greedy_select(a, 15, factors), greedy_select(a, 15, factors, interaction_scale=20.0)
    assert not torch.equal(plain.indices, scaled.indices)
    rescaled = greedy_select(a / 20.0, 15, factors)
    assert torch.equal(scaled.indices, rescaled.indices)
    torch.testing.assert_close(scaled.scores, 20.0 * rescaled.scores)


def test_parse_interaction_scale():
    from groupinf.selection import parse_interaction_scale

    assert parse_interaction_scale("auto") == "auto"
    assert parse_interaction_scale("2.5") == 2.5 and parse_interaction_scale(4) == 4.0
    for bad in ("0", "-1", "nan", "inf", "big", True):
        with pytest.raises(ValueError, match="interaction scale"):
            parse_interaction_scale(bad)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf"), "auto", True])
def test_bad_interaction_scale_is_rejected(alpha):
    shifts, Hf, grad_f = random_problem()
    factors = InteractionFactors.dense(shifts, DenseCurvature(Hf))
    with pytest.raises(ValueError, match="interaction scale"):
        greedy_select(shifts @ grad_f, 3, factors, interaction_scale=alpha)
    with pytest.raises(ValueError, match="interaction scale"):
        topk_select(shifts @ grad_f, 3, factors, interaction_scale=alpha)


def test_interaction_changes_the_choice_away_from_topk():
    """Two near-duplicate top candidates: greedy F+I takes one, top-k takes both."""
    p = 4
    shifts = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.01, 0, 0], [0, 0.8, 0, 0], [0, 0, 0.1, 0]], dtype=torch.float64)
    grad_f = torch.tensor([1.0, 0.9, 0.5, 0.5], dtype=torch.float64)
    hf = DenseCurvature(2.0 * torch.eye(p, dtype=torch.float64))
    a = shifts @ grad_f
    greedy = greedy_select(a, 2, InteractionFactors.dense(shifts, hf))
    top = topk_select(a, 2)
    assert sorted(top.indices.tolist()) == [0, 1]
    assert 2 in greedy.indices.tolist() and not {0, 1} <= set(greedy.indices.tolist())


def test_low_rank_form_equals_dense_at_full_rank():
    shifts, Hf, grad_f = random_problem(C=40, p=10, seed=2)
    a = shifts @ grad_f
    dense = InteractionFactors.dense(shifts, DenseCurvature(Hf))
    low = InteractionFactors.low_rank(shifts, LowRankCurvature.from_matrix(Hf))
    assert low.left.shape == (40, 10)
    torch.testing.assert_close(low.left @ low.right.T, dense.left @ dense.right.T)
    torch.testing.assert_close(low.self_terms(), dense.self_terms())
    sel_dense, sel_low = greedy_select(a, 15, dense), greedy_select(a, 15, low)
    assert torch.equal(sel_dense.indices, sel_low.indices)
    torch.testing.assert_close(sel_dense.scores, sel_low.scores)


def test_gram_factors_give_the_same_interactions_and_picks():
    shifts, Hf, grad_f = random_problem(C=20, p=30, seed=5)
    dense = InteractionFactors.dense(shifts, DenseCurvature(Hf))
    gram = dense.gram()
    assert gram.left.shape == (20, 20)
    torch.testing.assert_close(gram.left @ gram.right.T, dense.left @ dense.right.T)
    torch.testing.assert_close(gram.self_terms(), dense.self_terms())
    a = shifts @ grad_f
    for alpha in (1.0, 6.0):
        by_dense, by_gram = (greedy_select(a, 12, f, interaction_scale=alpha) for f in (dense, gram))
        assert torch.equal(by_dense.indices, by_gram.indices)
        torch.testing.assert_close(by_dense.scores, by_gram.scores)


def test_topk_and_random():
    shifts, _, grad_f = random_problem()
    a = shifts @ grad_f
    top = topk_select(a, 5)
    assert top.indices.tolist() == torch.argsort(a, descending=True)[:5].tolist()
    torch.testing.assert_close(top.scores, -a[top.indices])
    r1, r2, r3 = random_select(a, 10, seed=1), random_select(a, 10, seed=1), random_select(a, 10, seed=2)
    assert torch.equal(r1.indices, r2.indices) and not torch.equal(r1.indices, r3.indices)
    assert len(set(r1.indices.tolist())) == 10


def test_bad_selection_input():
    shifts, Hf, grad_f = random_problem()
    a = shifts @ grad_f
    factors = InteractionFactors.dense(shifts, DenseCurvature(Hf))
    with pytest.raises(ValueError, match="k must be in"):
        greedy_select(a, 31, factors)
    with pytest.raises(ValueError, match="k must be in"):
        topk_select(a, 0)
    with pytest.raises(ValueError, match="empty"):
        topk_select(a[:0], 1)
    with pytest.raises(ValueError, match="candidates"):
        greedy_select(a[:10], 3, factors)
    with pytest.raises(ValueError, match="NaN"):
        bad = a.clone()
        bad[0] = float("nan")
        greedy_select(bad, 3, factors)
    with pytest.raises(ValueError, match=r"\(C, d\)"):
        InteractionFactors(shifts, shifts[:, :3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_greedy_on_cuda_matches_cpu():
    shifts, Hf, grad_f = random_problem(C=200, p=16)
    a = shifts @ grad_f
    cpu = greedy_select(a, 20, InteractionFactors.dense(shifts, DenseCurvature(Hf)))
    dev = torch.device("cuda")
    gpu = greedy_select(a.to(dev), 20, InteractionFactors.dense(shifts.to(dev), DenseCurvature(Hf.to(dev))))
    assert torch.equal(cpu.indices, gpu.indices.cpu())


def test_basu_terms_in_greedy_equal_brute_force(mlp_task):
    """F+B and F+I+B greedy: every step's score equals the from-scratch objective difference built
    from explicit per-example Hessians, and the pick is its argmin."""
    from groupinf.curvature import EigenCurvature, exact_hessian
    from groupinf.products import per_example_hvp
    from groupinf.selection import BasuFactors

    task, theta, X, y = mlp_task
    n = len(X)
    H = exact_hessian(task, theta, X, y, n) + torch.eye(theta.numel(), dtype=theta.dtype)
    curvature = EigenCurvature(H)
    grads = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda th, i=i: task.losses(th, X[i : i + 1], y[i : i + 1])[0], theta)
            for i in range(n)
        ]
    )
    shifts = curvature.solve(grads) / n
    grad_f = task.target.gradient(task, theta)
    q = curvature.solve(grad_f[None])[0] / n
    response = per_example_hvp(task, theta, X, y, q)
    hessians = [
        torch.autograd.functional.hessian(lambda th, i=i: task.losses(th, X[i : i + 1], y[i : i + 1])[0], theta)
        for i in range(n)
    ]
    torch.testing.assert_close(response, torch.stack([Hz @ q for Hz in hessians]))
    basu = BasuFactors(response, shifts, n)
    Hf = task.target.hessian(task, theta)
    a = shifts @ grad_f

    def objective(S, with_interaction):
        if not S:
            return torch.tensor(0.0, dtype=theta.dtype)
        frac = len(S) / n
        delta_s = shifts[S].sum(0)
        r = torch.linalg.solve(H, sum(hessians[z] for z in S) @ delta_s) / n
        value = grad_f @ (-(1 + 2 * frac) / (1 + frac) ** 2 * delta_s + r / (1 + frac) ** 2)
        return value + 0.5 * delta_s @ Hf @ delta_s if with_interaction else value

    for with_interaction in (False, True):
        inter = InteractionFactors.dense(shifts, DenseCurvature(Hf)) if with_interaction else None
        sel = greedy_select(a, 6, inter, basu)
        assert sel.terms == ("F+I+B" if with_interaction else "F+B")
        chosen: list[int] = []
        for step in range(6):
            base = objective(chosen, with_interaction)
            gains = torch.stack(
                [
                    objective([*chosen, c], with_interaction) - base if c not in chosen else torch.tensor(float("inf"))
                    for c in range(n)
                ]
            )
            best = int(torch.argmin(gains))
            assert int(sel.indices[step]) == best
            torch.testing.assert_close(sel.scores[step], gains[best])
            chosen.append(best)
        torch.testing.assert_close(marginal_scores(a, sel.indices, inter, basu), sel.scores)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_first_argmin_is_torch_argmin_with_ties_and_inf(dtype):
    """The CPU fast path (numpy's argmin) and torch.argmin agree: the first of tied minima, +inf never chosen."""
    values = torch.tensor([3.0, float("inf"), -2.0, 5.0, -2.0, float("inf")], dtype=dtype)
    assert int(first_argmin(values)) == int(torch.argmin(values)) == 2
    values[2] = float("inf")
    assert int(first_argmin(values)) == 4
    noise = torch.randn(50_000, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert int(first_argmin(noise)) == int(torch.argmin(noise))

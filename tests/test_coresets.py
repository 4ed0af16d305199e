"""Coreset and similarity selection baselines against brute force on tiny pools."""

import numpy as np
import pytest
import torch

from groupinf.coresets import facility_location_select, k_center_select, similarity_select, stratified_select


def points(C=24, d=5, seed=0):
    return torch.randn(C, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_facility_location_is_craigs_greedy():
    g = points()
    distances = torch.cdist(g, g)
    similarity = distances.max() - distances

    def coverage(S):
        return similarity[:, S].max(dim=1).values.sum() if S else torch.tensor(0.0, dtype=torch.float64)

    sel = facility_location_select(g, 7)
    chosen: list[int] = []
    for step in range(7):
        gains = [coverage([*chosen, c]) - coverage(chosen) if c not in chosen else -np.inf for c in range(len(g))]
        pick = int(sel.indices[step])
        # the pick attains the largest gain (ties, which this pool has at step 7, may go either way)
        assert float(gains[pick]) == pytest.approx(float(max(gains)), rel=1e-6)
        assert float(sel.scores[step]) == pytest.approx(float(max(gains)), rel=1e-6)
        chosen.append(pick)


def test_k_center_is_farthest_first_and_skips_duplicates():
    g = points(C=20)
    g = torch.cat([g, g[:5]])  # exact duplicates of five candidates
    sel = k_center_select(g, 21, seed=3)
    picks = sel.indices.tolist()
    assert len(set(picks)) == 21
    first = int(np.random.default_rng(3).integers(len(g)))
    assert picks[0] == first
    for step in range(1, 20):
        nearest = torch.cdist(g, g[picks[:step]]).min(dim=1).values
        nearest[picks[:step]] = -1
        assert nearest[picks[step]] == nearest.max()
        assert float(sel.scores[step]) == pytest.approx(float(nearest.max()))
    # the 21st pick can only be a duplicate of a chosen point: distance 0
    assert float(sel.scores[20]) == 0.0


def test_similarity_select_is_top_k_mean_cosine():
    pool, targets = points(C=30), points(C=6, seed=1)
    sel = similarity_select(pool, targets, 5)
    brute = torch.tensor(
        [np.mean([float(torch.dot(p, t) / (p.norm() * t.norm())) for t in targets]) for p in pool],
        dtype=torch.float64,
    )
    assert sel.indices.tolist() == torch.argsort(brute, descending=True)[:5].tolist()
    torch.testing.assert_close(sel.scores, brute[sel.indices])


def test_stratified_is_balanced_at_every_prefix():
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 2 + [3] * 12)
    sel = stratified_select(labels, 30, seed=1)
    assert sorted(sel.indices.tolist()) == list(range(30))
    for k in range(1, 31):
        counts = np.bincount(labels[sel.indices[:k]].numpy(), minlength=4)
        available = np.bincount(labels.numpy(), minlength=4)
        # classes not yet exhausted differ by at most one pick, and none has more than they have plus one
        open_classes = counts < available
        if open_classes.any():
            assert counts[open_classes].max() - counts[open_classes].min() <= 1
            assert counts.max() <= counts[open_classes].max() + 1
    other = stratified_select(labels, 30, seed=2)
    assert not torch.equal(sel.indices, other.indices)


def test_coreset_budgets_are_checked():
    with pytest.raises(ValueError, match="k must be in"):
        k_center_select(points(), 0)
    with pytest.raises(ValueError, match="k must be in"):
        facility_location_select(points(), 25)
    with pytest.raises(ValueError, match="empty"):
        similarity_select(points(), points()[:0], 3)

"""The selection baselines data-selection users know, on the same inputs as the influence methods.

Each returns a ``Selection`` whose ``indices`` are an ordered list of ``k`` candidates; every prefix of
the order is the method's pick at that smaller budget.

- ``stratified_select``: class-balanced random (classes take turns, each in a seeded random order);
- ``facility_location_select``: CRAIG (Mirzasoleiman et al. 2020): greedy maximisation of the facility
  location ``F(S) = Σ_i max_{j∈S} s_ij`` with ``s_ij = max_{a,b} d_ab − d_ij``, ``d`` the Euclidean distance
  of per-example gradients (submodlib's greedy); the weights CRAIG attaches to its picks are not used,
  as every method's subset is retrained unweighted;
- ``k_center_select``: greedy k-center (Sener & Savarese 2018) on representations, e.g. a network's
  penultimate layer: from a seeded random first centre, repeatedly the candidate farthest from its
  nearest centre;
- ``similarity_select``: top-k by the mean cosine similarity with the target examples (LESS's score on
  plain gradients, or RDS+-style on representations).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from groupinf.selection import Selection, check_budget


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``(N, M)`` cosine similarities of the rows of ``a`` ``(N, d)`` and ``b`` ``(M, d)`` (0 for zero rows)."""
    return F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T


def mean_similarity(pool: Tensor, targets: Tensor) -> Tensor:
    """``(N,)`` mean over target rows of the cosine similarity with each pool row."""
    if len(targets) == 0:
        raise ValueError("the target set is empty")
    return cosine_matrix(pool, targets).mean(dim=1)


def similarity_select(pool: Tensor, targets: Tensor, k: int) -> Selection:
    """The ``k`` candidates most similar on average to the target rows; scores are the similarities."""
    check_budget(k, len(pool))
    values, indices = torch.topk(mean_similarity(pool, targets), k)
    return Selection(indices, values, "topk", "cosine")


def stratified_select(labels: Tensor, k: int, seed: int = 0) -> Selection:
    """``k`` candidates, as many of each class as the pool allows (±1): round robin over the classes in a
    seeded order, each class's candidates in a seeded random order. Scores are the class labels."""
    check_budget(k, len(labels))
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    classes = labels.unique()
    classes = classes[torch.randperm(len(classes), generator=generator)]
    queues = []
    for c in classes:
        members = torch.nonzero(labels == c)[:, 0]
        queues.append(members[torch.randperm(len(members), generator=generator)].tolist())
    order: list[int] = []
    for turn in range(max(len(q) for q in queues)):
        order.extend(q[turn] for q in queues if turn < len(q))
    indices = torch.tensor(order[:k])
    return Selection(indices, labels[indices].double(), "stratified", "class balance")


def facility_location_select(gradients: Tensor, k: int) -> Selection:
    """CRAIG's greedy facility location on per-example gradients ``(C, p)``; scores are the marginal gains."""
    check_budget(k, len(gradients))
    try:
        from submodlib import FacilityLocationFunction
    except ImportError:
        raise ImportError(
            "the CRAIG baseline needs submodlib: pip install 'groupinf[coresets]' (or submodlib-py)"
        ) from None
    g = gradients.detach().double().cpu()
    squared = (g * g).sum(dim=1)
    distances = (squared[:, None] + squared[None, :] - 2 * g @ g.T).clamp_min_(0).sqrt_()
    similarity = (distances.max() - distances).numpy()
    function = FacilityLocationFunction(n=len(g), mode="dense", sijs=similarity, separate_rep=False)
    picks = function.maximize(
        budget=k,
        optimizer="LazyGreedy",
        stopIfZeroGain=False,
        stopIfNegativeGain=False,
        verbose=False,
        show_progress=False,
    )
    indices = torch.tensor([int(i) for i, _ in picks])
    return Selection(indices, torch.tensor([float(gain) for _, gain in picks]), "greedy", "facility location")


def k_center_select(embeddings: Tensor, k: int, seed: int = 0) -> Selection:
    """Greedy k-center on representations ``(C, e)``; scores are each pick's distance to the centres
    chosen before it (``inf`` for the seeded random first centre)."""
    check_budget(k, len(embeddings))
    points = embeddings.detach().double().cpu()
    first = int(np.random.default_rng(seed).integers(len(points)))
    indices, scores = [first], [float("inf")]
    nearest = (points - points[first]).norm(dim=1)
    nearest[first] = -1.0  # chosen centres are never picked again, even among exact duplicates
    for _ in range(k - 1):
        best = int(torch.argmax(nearest))
        indices.append(best)
        scores.append(float(nearest[best]))
        nearest = torch.minimum(nearest, (points - points[best]).norm(dim=1))
        nearest[indices] = -1.0
    return Selection(torch.tensor(indices), torch.tensor(scores, dtype=torch.float64), "greedy", "k-center")

"""Groups of training examples: validation, membership sums, nearest-neighbour construction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

GroupLike = Sequence[int] | np.ndarray | Tensor


def validate_groups(groups: Sequence[GroupLike], n: int) -> list[Tensor]:
    """Check every group is a non-empty set of distinct indices in ``[0, n)``; return int64 tensors."""
    if len(groups) == 0:
        raise ValueError("no groups given: pass at least one group of training indices")
    out = []
    for g, group in enumerate(groups):
        idx = torch.as_tensor(np.asarray(group.cpu() if isinstance(group, Tensor) else group))
        if idx.ndim != 1:
            raise ValueError(f"group {g} must be a 1-D list of indices, got shape {tuple(idx.shape)}")
        if idx.numel() == 0:
            raise ValueError(f"group {g} is empty: every group needs at least one training index")
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise ValueError(f"group {g} must hold integer indices, got dtype {idx.dtype}")
        idx = idx.long()
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.numel():
            raise ValueError(f"group {g} has indices {bad[:5].tolist()} outside the training set [0, {n})")
        unique, counts = torch.unique(idx, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"group {g} repeats indices {unique[counts > 1][:5].tolist()}; groups are sets")
        out.append(idx)
    return out


def membership(groups: Sequence[Tensor], n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Sparse indicator matrix ``W`` ``(M, n)`` with ``W[m, i] = 1`` iff ``i ∈ G_m``."""
    rows = torch.cat([torch.full_like(g, m) for m, g in enumerate(groups)])
    cols = torch.cat(list(groups))
    values = torch.ones(len(cols), dtype=dtype)
    indices = torch.stack([rows, cols])
    return torch.sparse_coo_tensor(indices, values, (len(groups), n), check_invariants=True).to(device)


def group_sums(groups: Sequence[Tensor], values: Tensor) -> Tensor:
    """``Σ_{i∈G_m} values[i]`` for every group: ``values`` ``(n, ...)`` -> ``(M, ...)``."""
    flat = values.reshape(len(values), -1)
    summed = torch.sparse.mm(membership(groups, len(values), flat.dtype, flat.device), flat)
    return summed.reshape(len(groups), *values.shape[1:])


def check_group_settings(num_groups: int, group_size: int, n: int) -> None:
    """A ``ValueError`` unless ``num_groups`` groups of ``group_size`` can be drawn from ``n`` examples."""
    if not 1 <= group_size <= n:
        raise ValueError(f"group_size must be in [1, {n}], got {group_size}")
    if not 1 <= num_groups <= n:
        raise ValueError(f"num_groups must be in [1, {n}] (one distinct anchor each), got {num_groups}")


def nearest_neighbour_groups(
    embedding: np.ndarray, num_groups: int, group_size: int, seed: int = 0, distinct: bool = False
) -> list[np.ndarray]:
    """Groups of an anchor plus its ``group_size − 1`` nearest neighbours (anchor first).

    Anchors are drawn uniformly without replacement (the paper's protocol). Two anchors can yield
    the same group, common among confidently classified examples; with ``distinct`` an anchor
    whose group equals an earlier one as a set is skipped and the next anchor drawn instead.
    Distances are L2 in ``embedding`` ``(n, c)`` (softmax outputs, or predictions for regression).
    """
    from sklearn.neighbors import NearestNeighbors  # sklearn costs seconds at import; only the experiments group

    n = len(embedding)
    check_group_settings(num_groups, group_size, n)
    index = NearestNeighbors(n_neighbors=min(group_size + 1, n)).fit(embedding)
    groups: list[np.ndarray] = []
    seen: set[frozenset[int]] = set()
    for anchor in np.random.default_rng(seed).permutation(n):
        _, row = index.kneighbors(embedding[anchor : anchor + 1])
        others = [int(j) for j in row[0] if j != anchor][: group_size - 1]
        members = frozenset([int(anchor), *others])
        if distinct and members in seen:
            continue
        seen.add(members)
        groups.append(np.array([int(anchor), *others], dtype=np.int64))
        if len(groups) == num_groups:
            return groups
    raise ValueError(f"only {len(groups)} distinct groups of size {group_size} exist; ask for fewer groups")

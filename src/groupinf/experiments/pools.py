"""Selection problems: a candidate pool, a target set and a test set, in four regimes.

- clean: pool and target are disjoint uniform draws from the training set (paper §5.1);
- targeted (``target_classes``): the target and test sets hold only those classes, the pool every class;
- redundant (``duplicates``): that fraction of the pool's candidates are near-duplicates (Gaussian noise of
  std ``duplicate_noise`` in standardised units) of ``duplicate_sources`` pool examples;
- noisy (``label_noise``): that fraction of the pool's candidates has a wrong label (uniform over the
  other classes).

Regimes combine. A data set with its own target split (``X_target``, ``y_target`` in an ``.npz``) defines
the problem itself: the pool is drawn from ``X``, the target is ``X_target``, the test set ``X_test``.
Every draw is seeded, so a regime is reproduced by its flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from groupinf.data import Dataset


@dataclass(frozen=True)
class PoolRegime:
    """How the pool and the target depart from a clean draw (module docstring); the defaults are clean."""

    target_classes: tuple[int, ...] | None = None
    duplicates: float = 0.0
    duplicate_sources: int = 10
    duplicate_noise: float = 0.1
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        for name in ("duplicates", "label_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise ValueError(f"{name.replace('_', '-')} must be a fraction in [0, 1), got {value}")
        if not (math.isfinite(self.duplicate_noise) and self.duplicate_noise >= 0):
            raise ValueError(f"duplicate-noise must be a finite std >= 0, got {self.duplicate_noise}")
        if self.duplicate_sources < 1:
            raise ValueError(f"duplicate-sources must be >= 1, got {self.duplicate_sources}")
        if self.target_classes is not None:
            if not self.target_classes or len(set(self.target_classes)) != len(self.target_classes):
                raise ValueError(f"target classes must be distinct and not empty, got {self.target_classes}")
            if min(self.target_classes) < 0:
                raise ValueError(f"target classes are labels 0..C-1, got {self.target_classes}")

    @property
    def name(self) -> str:
        """``clean``, or the departures joined by ``+`` (``targeted``, ``redundant``, ``noisy``)."""
        parts = [
            label
            for label, active in (
                ("targeted", self.target_classes is not None),
                ("redundant", self.duplicates > 0),
                ("noisy", self.label_noise > 0),
            )
            if active
        ]
        return "+".join(parts) or "clean"


@dataclass(frozen=True)
class SelectionProblem:
    """Standardised tensors of one selection problem and what each candidate is.

    ``X_pool`` ``(C, d)``, ``y_pool`` ``(C,)`` (labels as trained on, noise included), ``clean_labels``
    ``(C,)``, ``duplicate_of`` ``(C,)`` (pool position of a near-duplicate's source, −1 otherwise),
    ``mislabelled`` ``(C,)`` bool, ``train_indices`` ``(C,)`` (training-set index of each candidate, the
    source's for a near-duplicate); target and test sets ``(m, d)``/``(m,)``.
    """

    X_pool: Tensor
    y_pool: Tensor
    clean_labels: np.ndarray
    duplicate_of: np.ndarray
    mislabelled: np.ndarray
    train_indices: np.ndarray
    X_target: Tensor
    y_target: Tensor
    X_test: Tensor
    y_test: Tensor
    num_classes: int
    regime: PoolRegime

    def purity(self, picks: np.ndarray) -> dict[str, float]:
        """The regime's purity of a selection (pool positions): on-target, near-duplicate and mislabelled
        fractions, those that apply."""
        out = {}
        if self.regime.target_classes is not None:
            out["on_target"] = float(np.isin(self.clean_labels[picks], self.regime.target_classes).mean())
        if self.regime.duplicates > 0:
            out["duplicate_fraction"] = float((self.duplicate_of[picks] >= 0).mean())
        if self.regime.label_noise > 0:
            out["mislabelled_fraction"] = float(self.mislabelled[picks].mean())
        return out


def build_problem(
    data: Dataset, regime: PoolRegime, pool_size: int, target_size: int, seed: int = 0
) -> SelectionProblem:
    """The selection problem of ``regime`` on standardised classification ``data`` (module docstring).

    Without a target split of its own, a seeded permutation of the training set gives the pool's
    originals (its first ``pool_size − #duplicates``) and the target set (the next ``target_size`` of the
    target classes, after position ``pool_size``): the target set is the same in the clean, redundant and
    noisy regimes.
    """
    if data.kind != "classification":
        raise ValueError(f"selection needs a classification data set; {data.name} is {data.kind}")
    num_classes = data.num_classes
    if regime.target_classes is not None and max(regime.target_classes) >= num_classes:
        raise ValueError(f"target classes must be labels 0..{num_classes - 1}, got {regime.target_classes}")
    rng = np.random.default_rng(seed)
    num_duplicates = round(regime.duplicates * pool_size)
    originals = pool_size - num_duplicates
    if originals < (regime.duplicate_sources if num_duplicates else 1):
        raise ValueError(
            f"a pool of {pool_size} with {num_duplicates} near-duplicates leaves {originals} originals, fewer than "
            f"the {regime.duplicate_sources} duplicate sources"
        )
    order = rng.permutation(len(data.X_train))
    if data.X_target is not None and data.y_target is not None:
        if pool_size > len(order):
            raise ValueError(f"the pool ({pool_size}) exceeds the {len(order)} examples of X")
        target = np.arange(len(data.X_target))
        if regime.target_classes is not None:
            target = target[np.isin(data.y_target, regime.target_classes)]
        X_target, y_target = data.X_target[target], data.y_target[target]
    else:
        if pool_size + target_size > len(order):
            raise ValueError(
                f"pool ({pool_size}) + target set ({target_size}) exceed the {len(order)} training examples"
            )
        held = order[pool_size:]
        if regime.target_classes is not None:
            held = held[np.isin(data.y_train[held], regime.target_classes)]
        if len(held) < target_size:
            raise ValueError(
                f"only {len(held)} training examples outside the pool are of the target classes "
                f"{regime.target_classes}; lower --target-size or --pool-size"
            )
        X_target, y_target = data.X_train[held[:target_size]], data.y_train[held[:target_size]]
    if len(X_target) == 0:
        raise ValueError("the target set is empty: no target example has one of the target classes")

    pool = order[:originals]
    sources = rng.choice(originals, size=regime.duplicate_sources, replace=False) if num_duplicates else []
    copy_of = rng.choice(sources, size=num_duplicates) if num_duplicates else np.zeros(0, dtype=np.int64)
    noise = rng.normal(0.0, regime.duplicate_noise, size=(num_duplicates, *data.X_train.shape[1:]))
    X_pool = np.concatenate([data.X_train[pool], data.X_train[pool[copy_of]] + noise.astype(np.float32)])
    clean = np.concatenate([data.y_train[pool], data.y_train[pool[copy_of]]])
    duplicate_of = np.concatenate([np.full(originals, -1), copy_of]).astype(np.int64)
    mislabelled = np.zeros(pool_size, dtype=bool)
    mislabelled[rng.choice(pool_size, size=round(regime.label_noise * pool_size), replace=False)] = True
    y_pool = clean.copy()
    y_pool[mislabelled] = (clean[mislabelled] + rng.integers(1, num_classes, size=mislabelled.sum())) % num_classes

    X_test, y_test = data.X_test, data.y_test
    if regime.target_classes is not None:
        keep = np.isin(y_test, regime.target_classes)
        X_test, y_test = X_test[keep], y_test[keep]
    return SelectionProblem(
        X_pool=torch.as_tensor(X_pool),
        y_pool=torch.as_tensor(y_pool),
        clean_labels=clean,
        duplicate_of=duplicate_of,
        mislabelled=mislabelled,
        train_indices=np.concatenate([pool, pool[copy_of]]),
        X_target=torch.as_tensor(X_target),
        y_target=torch.as_tensor(y_target),
        X_test=torch.as_tensor(X_test),
        y_test=torch.as_tensor(y_test),
        num_classes=num_classes,
        regime=regime,
    )

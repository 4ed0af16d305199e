"""One registry of selection methods: influence-based (F+I, F, F+B, F+I+B), LESS-style similarity, random,
stratified random and the coreset baselines (CRAIG, k-center), each over the inputs it names.

Every method returns a ``Selection`` of ``k`` candidates in pick order. Deterministic methods' orders are
nested (each prefix is the pick at the smaller budget) unless ``α`` changes with the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TypeVar

from torch import Tensor

from groupinf.coresets import facility_location_select, k_center_select, similarity_select, stratified_select
from groupinf.features import SelectionFeatures, select_from_features
from groupinf.selection import Selection


@dataclass(frozen=True)
class PoolInputs:
    """What selection methods read about a pool of ``C`` candidates; each method needs only some.

    ``features``: influence features (``a_c``, interaction and Basu factors); ``labels`` ``(C,)``;
    ``gradients`` ``(C, p)``: per-example training-loss gradients at ``θ*``; ``target_gradients``
    ``(m, p)``: those of the target examples; ``embeddings`` ``(C, e)``: representations (e.g. a
    network's penultimate layer).
    """

    features: SelectionFeatures | None = None
    labels: Tensor | None = None
    gradients: Tensor | None = None
    target_gradients: Tensor | None = None
    embeddings: Tensor | None = None


T = TypeVar("T")

#: (inputs, k, seed, α) -> Selection
Runner = Callable[[PoolInputs, int, int, float], Selection]


@dataclass(frozen=True)
class Method:
    """A selection method: what it is, which ``PoolInputs`` it reads, whether its pick depends on the seed
    and whether it has an interaction term (and so an interaction scale ``α``)."""

    summary: str
    needs: tuple[str, ...]
    randomised: bool
    interaction: bool
    run: Runner


def _influence(method: str, terms: str) -> Runner:
    def run(inputs: PoolInputs, k: int, seed: int, alpha: float) -> Selection:
        return select_from_features(_given(inputs.features), k, method, terms, seed, interaction_scale=alpha)

    return run


def _less(inputs: PoolInputs, k: int, seed: int, alpha: float) -> Selection:
    return similarity_select(_given(inputs.gradients), _given(inputs.target_gradients), k)


def _stratified(inputs: PoolInputs, k: int, seed: int, alpha: float) -> Selection:
    return stratified_select(_given(inputs.labels), k, seed)


def _craig(inputs: PoolInputs, k: int, seed: int, alpha: float) -> Selection:
    return facility_location_select(_given(inputs.gradients), k)


def _k_center(inputs: PoolInputs, k: int, seed: int, alpha: float) -> Selection:
    return k_center_select(_given(inputs.embeddings), k, seed)


def _given(value: T | None) -> T:
    if value is None:  # run_method checks a method's needs first; this guards direct calls
        raise ValueError("a selection method was run without an input it needs")
    return value


METHODS: dict[str, Method] = {
    "F+I": Method("greedy Algorithm 1 on F + α·I (the paper)", ("features",), False, True, _influence("greedy", "F+I")),
    "F": Method("top-k first-order influence (Additive IF)", ("features",), False, False, _influence("topk", "F")),
    "F+B": Method("greedy on Basu et al.'s response", ("features",), False, False, _influence("greedy", "F+B")),
    "F+I+B": Method("greedy on Basu's response + α·I", ("features",), False, True, _influence("greedy", "F+I+B")),
    "LESS": Method("top-k mean gradient cosine to the target", ("gradients", "target_gradients"), False, False, _less),
    "random": Method("uniform without replacement", ("features",), True, False, _influence("random", "F")),
    "stratified": Method("class-balanced random", ("labels",), True, False, _stratified),
    "CRAIG": Method("facility location on gradients (CRAIG)", ("gradients",), False, False, _craig),
    "k-center": Method("greedy k-center on penultimate-layer features", ("embeddings",), True, False, _k_center),
}
INPUTS = tuple(f.name for f in fields(PoolInputs))


def run_method(name: str, inputs: PoolInputs, k: int, seed: int = 0, interaction_scale: float = 1.0) -> Selection:
    """``k`` candidates by the registered method ``name``; ``interaction_scale`` is ``α`` for methods with
    an interaction term and ignored otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown selection method {name!r}; choose from {list(METHODS)}")
    method = METHODS[name]
    missing = [need for need in method.needs if getattr(inputs, need) is None]
    if missing:
        raise ValueError(f"method {name!r} needs {', '.join(missing)}, which the pool inputs lack")
    return method.run(inputs, k, seed, interaction_scale if method.interaction else 1.0)

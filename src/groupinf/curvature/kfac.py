"""Kronecker-factored curvature: K-FAC and EK-FAC for ``nn.Linear`` and ``nn.Conv2d`` layers.

Per covered layer (see ``curvature.hooks`` for ``a``, ``s`` and tokens), over ``N`` examples with ``T``
tokens each (``M = N·T`` tokens in all):

- ``A = (1/M) Σ_{i,t} ā_{i,t} ā_{i,t}ᵀ`` ``(d_in[+1], d_in[+1])`` — averaged over tokens;
- ``S = (1/N) Σ_{i,t} s_{i,t} s_{i,t}ᵀ`` ``(d_out, d_out)`` — summed over tokens, averaged over examples;

so that ``A ⊗ S`` approximates the layer block ``G = (1/N) Σ_i vec(∇W_i) vec(∇W_i)ᵀ`` with
``∇W_i = Σ_t s_{i,t} ā_{i,t}ᵀ``. With ``T = 1`` this is ordinary K-FAC. With ``T > 1`` it is the
"K-FAC-expand" approximation (Eschenhagen et al., 2023; KFC of Grosse & Martens for convolutions): the
cross-token terms ``t ≠ t'`` of ``G`` are dropped and tokens are treated as independent, which
over- or under-estimates ``G`` by how correlated the tokens' gradients are. Kronfluence divides ``S`` by
the number of tokens instead, which makes its K-FAC ``T`` times smaller for sequence layers; EK-FAC
does not depend on this choice, because its eigenvalues are refitted from the exact per-example
gradients ``∇W_i`` (which include the cross-token terms).

``s`` is the gradient of the per-example loss with respect to the layer output, taken from the SUM of the
unscaled per-example losses of a batch, so the factors do not depend on the batch size. Three kinds of
back-propagated vectors (``fisher``) give three matrices ``G``:

- ``"empirical"``: the real labels, ``G = (1/N) Σ g_i g_iᵀ`` (empirical Fisher);
- ``"true"``: labels drawn from the model (``loss.sample_targets``, seeded generator, ``samples`` draws
  averaged), an unbiased estimate of the true Fisher;
- ``"ggn"``: the columns of ``L_i`` with ``L_i L_iᵀ = ∂²l_i/∂h²`` (one backward pass per output), the exact
  expectation of the true Fisher: ``G`` is then the layer block of the Gauss–Newton matrix.

Curvature: ``H_ℓ ≈ G_ℓ + λI`` (``λ`` = the task's L2 strength, as in ``dense.gauss_newton``), damped by
``ρ_ℓ``: a ``KroneckerCurvature`` (``curvature.kronecker``) over the covered layers laid out as in the
parameter vector (``hooks.parameter_layout``), with ``Q_A``, ``Q_S`` the eigenvectors of ``A`` and ``S``
(float64) and ``Λ`` either ``λ_S λ_Aᵀ`` (K-FAC) or the corrected eigenvalues
``Λ = (1/N) Σ_i (Q_Sᵀ ∇W_i Q_A)^{∘2}`` (EK-FAC), computed from the captured ``a`` and ``s`` without forming
the per-example gradients of one-token layers. The heuristic damping is ``ρ_ℓ = 0.1 · mean(Λ + λ)`` per
layer, the mean eigenvalue of ``H_ℓ`` (like ``EigenCurvature`` on ``G + λI``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Literal, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from groupinf.curvature.base import Damping, check_damping
from groupinf.curvature.hooks import (
    KroneckerLayer,
    LayerBatch,
    backpropagate,
    find_layers,
    parameter_layout,
    recording,
)
from groupinf.curvature.kronecker import CHUNK_ELEMENTS, KroneckerCurvature, symmetric_eigh
from groupinf.curvature.layout import BlockLayout
from groupinf.gradients import batches
from groupinf.params import ParamSpace
from groupinf.task import Task, check_inputs, check_lengths

Fisher = Literal["empirical", "true", "ggn"]
FISHERS = ("empirical", "true", "ggn")

Batch = Tensor | Sequence[Tensor]
K = TypeVar("K", bound="_HookedKronecker")


def tensor_batches(inputs: Tensor, targets: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Consecutive ``(inputs, targets)`` batches (views), a re-iterable input for ``fit_factors``."""
    check_lengths(inputs, targets)
    return [(inputs[sl], targets[sl]) for sl in batches(len(inputs), batch_size)]


def _unpack(batch: Batch, fisher: str) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        if fisher == "empirical":
            raise ValueError("the empirical Fisher needs labels: batches must be (inputs, targets)")
        return batch, None
    if len(batch) < 1:
        raise ValueError("empty batch")
    return batch[0], (batch[1] if len(batch) > 1 else None)


def _vectors(
    task: Task, outputs: Tensor, targets: Tensor | None, fisher: str, samples: int, generator: torch.Generator
) -> tuple[list[Tensor], list[float]]:
    """Vectors ``e`` ``(B, C)`` to back-propagate from the outputs, and the weight of each."""
    h = outputs.detach()
    if fisher == "ggn":
        root = task.loss.output_hessian_sqrt(h)  # (B, C, C')
        return [root[:, :, c] for c in range(root.shape[-1])], [1.0] * root.shape[-1]
    labels = [targets] if fisher == "empirical" else [task.loss.sample_targets(h, generator) for _ in range(samples)]
    vectors = []
    for y in labels:
        if y is None:
            raise ValueError("the empirical Fisher needs labels: batches must be (inputs, targets)")
        leaf = h.clone().requires_grad_(True)
        vectors.append(torch.autograd.grad(task.loss(leaf, y).sum(), leaf)[0])
    return vectors, [1.0 / len(labels)] * len(labels)


def captured_batches(
    task: Task,
    theta: Tensor,
    data: Iterable[Batch],
    layers: Sequence[KroneckerLayer],
    fisher: str,
    samples: int,
    generator: torch.Generator,
    desc: str,
    progress: bool,
) -> Iterator[tuple[int, dict[str, LayerBatch], list[float]]]:
    """For each batch: its size, what each layer saw, and the weight of each back-propagated vector."""
    theta_g = theta.detach().requires_grad_(True)
    with recording(layers) as recorder:
        for batch in tqdm(data, desc=desc, disable=not progress, leave=False):
            x, y = _unpack(batch, fisher)
            check_inputs(theta, x, what="inputs")
            recorder.clear()
            with torch.enable_grad():
                outputs = task.outputs(theta_g, x)
                vectors, weights = _vectors(task, outputs, y, fisher, samples, generator)
                captured = backpropagate(recorder, outputs, vectors, len(x))
            recorder.clear()
            yield len(x), captured, weights


def _check_options(fisher: str, samples: int) -> None:
    if fisher not in FISHERS:
        raise ValueError(f"fisher must be one of {FISHERS}, got {fisher!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")


def _check_reiterable(data: Iterable[Batch]) -> None:
    if isinstance(data, Iterator):
        raise ValueError(
            "EK-FAC makes two passes over the data: pass a re-iterable (a DataLoader, a list of batches, "
            "tensor_batches(…)), not an iterator"
        )


@dataclass
class KroneckerFactors:
    """Fitted K-FAC factors per covered layer: ``A`` ``(columns, columns)`` and ``S`` ``(d_out, d_out)``."""

    space: ParamSpace
    layers: list[KroneckerLayer]
    A: dict[str, Tensor]
    S: dict[str, Tensor]
    num_examples: int
    num_tokens: dict[str, int]
    fisher: str

    @cached_property
    def eigenbases(self) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per layer ``(λ_A, Q_A, λ_S, Q_S)`` in float64, eigenvalues clamped at 0 (round-off); computed once."""
        return {
            layer.name: (*symmetric_eigh(self.A[layer.name]), *symmetric_eigh(self.S[layer.name]))
            for layer in self.layers
        }

    @cached_property
    def layout(self) -> BlockLayout:
        """The covered layers as blocks of the parameter vector (``hooks.parameter_layout``)."""
        return parameter_layout(self.layers, self.space)


def fit_factors(
    task: Task,
    theta: Tensor,
    data: Iterable[Batch],
    *,
    fisher: Fisher = "empirical",
    samples: int = 1,
    seed: int = 0,
    modules: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> KroneckerFactors:
    """K-FAC factors ``A`` and ``S`` of every covered layer over the batches of ``data`` (see module docstring).

    ``data`` yields ``(inputs, targets)`` batches (targets may be left out for "true" and "ggn"); ``theta``
    are the attributed parameters ``(p,)`` at which to fit; ``modules`` names the layers to cover (default:
    every module owning an attributed parameter); sums are accumulated in ``dtype``. Put the model in
    ``eval()`` mode first (dropout would make the factors random).
    """
    _check_options(fisher, samples)
    layers = find_layers(task.model, task.space, modules)
    generator = torch.Generator(device=theta.device).manual_seed(seed)
    A = {la.name: torch.zeros(la.columns, la.columns, dtype=dtype, device=theta.device) for la in layers}
    S = {la.name: torch.zeros(la.out_features, la.out_features, dtype=dtype, device=theta.device) for la in layers}
    tokens = {la.name: 0 for la in layers}
    examples = 0
    for size, captured, weights in captured_batches(
        task, theta, data, layers, fisher, samples, generator, "K-FAC factors", progress
    ):
        examples += size
        for layer in layers:
            seen = captured[layer.name]
            a = seen.a.reshape(-1, layer.columns).to(dtype)
            A[layer.name] += a.T @ a
            tokens[layer.name] += a.shape[0]
            for s, w in zip(seen.s, weights, strict=True):
                s = s.reshape(-1, layer.out_features).to(dtype)
                S[layer.name] += (s.T @ s) * w if w != 1.0 else s.T @ s
    if examples == 0:
        raise ValueError("data yielded no examples")
    for layer in layers:
        A[layer.name] /= tokens[layer.name]
        S[layer.name] /= examples
    return KroneckerFactors(task.space, layers, A, S, examples, tokens, fisher)


def kfac_eigenvalues(factors: KroneckerFactors) -> dict[str, Tensor]:
    """K-FAC eigenvalues ``Λ = λ_S λ_Aᵀ`` ``(d_out, columns)`` per layer."""
    return {name: torch.outer(lam_s, lam_a) for name, (lam_a, _, lam_s, _) in factors.eigenbases.items()}


def corrected_eigenvalues(
    task: Task,
    theta: Tensor,
    data: Iterable[Batch],
    factors: KroneckerFactors,
    *,
    samples: int = 1,
    seed: int = 1,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> dict[str, Tensor]:
    """EK-FAC eigenvalues ``Λ = (1/N) Σ_i (Q_Sᵀ ∇W_i Q_A)^{∘2}`` ``(d_out, columns)`` per layer.

    Uses the same kind of Fisher as ``factors``. A layer with one token per example needs no per-example
    gradient: ``Q_Sᵀ ∇W_i Q_A = (Q_Sᵀ s_i)(Q_Aᵀ ā_i)ᵀ``, so ``Λ·N = ((S Q_S)^{∘2})ᵀ (Ā Q_A)^{∘2}`` is one
    matrix product over the batch (rows ``s_i``, ``ā_i``). Otherwise ``(Q_Sᵀ S_iᵀ)(Ā_i Q_A)`` is formed
    for chunks of examples with a batched matrix product (``S_i`` ``(T, d_out)``, ``Ā_i`` ``(T, columns)``).
    """
    fisher = factors.fisher
    _check_options(fisher, samples)
    bases = factors.eigenbases
    layers = factors.layers
    generator = torch.Generator(device=theta.device).manual_seed(seed)
    lam = {la.name: torch.zeros(la.out_features, la.columns, dtype=dtype, device=theta.device) for la in layers}
    q = {name: (qa.to(dtype), qs.to(dtype)) for name, (_, qa, _, qs) in bases.items()}
    examples = 0
    for size, captured, weights in captured_batches(
        task, theta, data, layers, fisher, samples, generator, "EK-FAC eigenvalues", progress
    ):
        examples += size
        for layer in layers:
            q_a, q_s = q[layer.name]
            seen = captured[layer.name]
            a = seen.a.to(dtype) @ q_a  # (B, T, columns)
            tokens = a.shape[1]
            for s, w in zip(seen.s, weights, strict=True):
                s = s.to(dtype) @ q_s  # (B, T, d_out)
                if tokens == 1:
                    lam[layer.name].addmm_(s[:, 0].square().T, a[:, 0].square(), alpha=w)
                else:
                    chunk = max(1, CHUNK_ELEMENTS // layer.numel)
                    for start in range(0, size, chunk):
                        rotated = s[start : start + chunk].transpose(1, 2) @ a[start : start + chunk]
                        lam[layer.name].add_(rotated.square().sum(0), alpha=w)
    if examples == 0:
        raise ValueError("data yielded no examples")
    return {name: values / examples for name, values in lam.items()}


class _HookedKronecker(KroneckerCurvature):
    """A ``KroneckerCurvature`` over the covered layers of a task (``parameter_layout``), fitted with hooks:
    ``fit`` over the data, or ``from_eigenvalues`` for fitted factors. Call them on ``KFACCurvature`` or
    ``EKFACCurvature``."""

    #: passes over the data that ``fit`` makes (more than one needs a re-iterable ``data``)
    passes: ClassVar[int] = 1

    @classmethod
    def from_eigenvalues(
        cls: type[K],
        factors: KroneckerFactors,
        eigenvalues: dict[str, Tensor],
        l2: float,
        damping: Damping = 0.0,
        compute_dtype: torch.dtype = torch.float64,
    ) -> K:
        """The curvature with the eigenbases of ``factors`` and the eigenvalues ``Λ`` ``(d_out, columns)`` of each
        layer (by name), ``l2`` = ``λ``; solves in ``compute_dtype``."""
        bases = [(q_s, q_a) for _, q_a, _, q_s in factors.eigenbases.values()]
        values = [eigenvalues[layer.name] for layer in factors.layers]
        return cls(factors.layout, bases, values, l2, damping, compute_dtype)

    @classmethod
    def fit(
        cls: type[K],
        task: Task,
        theta: Tensor,
        data: Iterable[Batch],
        *,
        damping: Damping = 0.0,
        fisher: Fisher = "empirical",
        samples: int = 1,
        seed: int = 0,
        modules: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float64,
        compute_dtype: torch.dtype = torch.float64,
        progress: bool = False,
    ) -> K:
        """Fit the damped curvature of ``task`` at ``theta`` ``(p,)`` over the batches of ``data``.

        ``data`` yields ``(inputs, targets)`` batches (see ``fit_factors``; re-iterable for EK-FAC). First the
        factors (``fit_factors`` with ``fisher``, ``samples``, ``seed``, ``modules``; sums in ``dtype``), then
        the eigenvalues ``Λ``: K-FAC's ``λ_S λ_Aᵀ``, or EK-FAC's second pass over ``data``
        (``corrected_eigenvalues``, seed ``seed + 1``). ``damping`` is ``ρ`` or "heuristic" (per layer);
        solves run in ``compute_dtype``.
        """
        check_damping(damping)
        if cls.passes > 1:
            _check_reiterable(data)
        options = {"samples": samples, "dtype": dtype, "progress": progress}
        factors = fit_factors(task, theta, data, fisher=fisher, seed=seed, modules=modules, **options)
        values = cls._eigenvalues(task, theta, data, factors, seed=seed + 1, **options)
        return cls.from_eigenvalues(factors, values, task.l2, damping, compute_dtype)

    @staticmethod
    def _eigenvalues(
        task: Task, theta: Tensor, data: Iterable[Batch], factors: KroneckerFactors, **options: object
    ) -> dict[str, Tensor]:
        """Eigenvalues ``Λ`` ``(d_out, columns)`` of each layer's ``G`` (``options``: ``samples``, ``seed``,
        ``dtype``, ``progress``), with the signature of ``corrected_eigenvalues``."""
        raise NotImplementedError("fit a KFACCurvature or an EKFACCurvature")


class KFACCurvature(_HookedKronecker):
    """K-FAC: ``G_ℓ ≈ A ⊗ S``, eigenvalues ``Λ = λ_S λ_Aᵀ``."""

    @classmethod
    def from_factors(
        cls, factors: KroneckerFactors, l2: float, damping: Damping = 0.0, compute_dtype: torch.dtype = torch.float64
    ) -> KFACCurvature:
        return cls.from_eigenvalues(factors, kfac_eigenvalues(factors), l2, damping, compute_dtype)

    @staticmethod
    def _eigenvalues(
        task: Task, theta: Tensor, data: Iterable[Batch], factors: KroneckerFactors, **options: object
    ) -> dict[str, Tensor]:
        return kfac_eigenvalues(factors)


class EKFACCurvature(_HookedKronecker):
    """EK-FAC: the K-FAC eigenbases with eigenvalues refitted to the per-example gradients (a second pass)."""

    passes = 2
    _eigenvalues = staticmethod(corrected_eigenvalues)

    @classmethod
    def from_factors(
        cls,
        factors: KroneckerFactors,
        task: Task,
        theta: Tensor,
        data: Iterable[Batch],
        *,
        damping: Damping = 0.0,
        samples: int = 1,
        seed: int = 1,
        dtype: torch.dtype = torch.float64,
        compute_dtype: torch.dtype = torch.float64,
        progress: bool = False,
    ) -> EKFACCurvature:
        """A second pass over ``data`` for the corrected eigenvalues (see ``corrected_eigenvalues``)."""
        check_damping(damping)
        values = corrected_eigenvalues(
            task, theta, data, factors, samples=samples, seed=seed, dtype=dtype, progress=progress
        )
        return cls.from_eigenvalues(factors, values, task.l2, damping, compute_dtype)

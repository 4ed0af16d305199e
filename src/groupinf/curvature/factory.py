"""The training curvature by name: the one factory the library, the experiments, the LLM pipeline and the command
line use.

A curvature is fitted from one of two sources: a ``Task`` at ``θ`` with its training examples (the kinds
``CURVATURES``), or per-example gradients already computed in a block layout, such as an LLM gradient store
(a ``GradientSource``; the kinds ``GRADIENT_CURVATURES``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol, get_args, overload

import torch
from torch import Tensor

from groupinf.curvature.base import Curvature, Damping, check_damping
from groupinf.curvature.dense import EigenCurvature, exact_hessian, gauss_newton, second_moment
from groupinf.curvature.kfac import EKFACCurvature, KFACCurvature, tensor_batches
from groupinf.curvature.kronecker import KroneckerCurvature, kronecker_eigenbases, refit_eigenvalues
from groupinf.curvature.layout import BlockLayout
from groupinf.task import Task

#: "exact" Hessian of R, dense Gauss–Newton "ggn", or their Kronecker-factored "kfac"/"ekfac" (docs/math.md §6)
CurvatureKind = Literal["exact", "ggn", "kfac", "ekfac"]
CURVATURES: tuple[str, ...] = get_args(CurvatureKind)
#: from per-example gradients: their second moment "dense" (a Fisher) or its Kronecker-factored "kfac"/"ekfac"
GradientCurvatureKind = Literal["ekfac", "kfac", "dense"]
GRADIENT_CURVATURES: tuple[str, ...] = get_args(GradientCurvatureKind)
#: the largest gradient dimension for which the dense d×d Fisher is formed (float64: 2 GiB at 16384)
MAX_DENSE_DIM = 16384


class GradientSource(Protocol):
    """Per-example gradients in a block layout, with each block's K-FAC factors: what a curvature is fitted from
    without a model (an LLM gradient store, through ``groupinf.llm.curvature.StoredGradients``)."""

    @property
    def layout(self) -> BlockLayout: ...

    def kronecker_factors(self) -> list[tuple[Tensor, Tensor]]:
        """Per block of ``layout``, its K-FAC factors ``(S, A)``: ``(out, out)`` and ``(in, in)``."""
        ...

    def row_batches(self) -> Iterable[Tensor]:
        """The per-example gradients the curvature is fitted on, in row batches ``(rows, d)`` in ``layout``, on the
        device to compute on."""
        ...


@overload
def fit_curvature(
    kind: CurvatureKind, source: Task, theta: Tensor, inputs: Tensor, targets: Tensor, n: int, damping: Damping
) -> Curvature: ...


@overload
def fit_curvature(
    kind: GradientCurvatureKind, source: GradientSource, damping: Damping, l2: float = 0.0
) -> Curvature: ...


def fit_curvature(kind: str, source: Task | GradientSource, *args: Any, **options: Any) -> Curvature:
    """The training curvature named ``kind``, fitted on ``source`` and damped by ``damping``.

    ``fit_curvature(kind, task, theta, inputs, targets, n, damping)``: at ``theta`` on ``(inputs, targets)``:
    ``exact``, the Hessian of ``R`` (``n`` scales its loss term); ``ggn``, the dense Gauss–Newton matrix;
    ``kfac``/``ekfac``, their Kronecker-factored approximations of the Gauss–Newton matrix (exact
    output-Hessian expectation), which average over the given examples and so need all ``n`` of them.

    ``fit_curvature(kind, source, damping, l2=0.0)``: from a ``GradientSource``, ``H = G + λI`` (``λ`` = ``l2``)
    with ``G`` the second moment of its gradients (``dense``, at most ``MAX_DENSE_DIM`` dimensions) or its
    Kronecker-factored approximations over the blocks (``kfac``: the factors' eigenvalues; ``ekfac``: refitted to
    the gradients).
    """
    if isinstance(source, Task):
        return _from_task(kind, source, *args, **options)
    return _from_gradients(kind, source, *args, **options)


def _from_task(
    kind: str, task: Task, theta: Tensor, inputs: Tensor, targets: Tensor, n: int, damping: Damping
) -> Curvature:
    check_damping(damping)
    if kind == "exact":
        return EigenCurvature(exact_hessian(task, theta, inputs, targets, n), damping)
    if kind == "ggn":
        return EigenCurvature(gauss_newton(task, theta, inputs, n), damping)
    if kind in ("kfac", "ekfac"):
        if n != len(inputs):
            raise ValueError("K-FAC/EK-FAC average over the given examples: pass all n training examples")
        batches = tensor_batches(inputs, targets, 256)
        cls = KFACCurvature if kind == "kfac" else EKFACCurvature
        return cls.fit(task, theta, batches, damping=damping, fisher="ggn")
    raise ValueError(f"curvature must be one of {CURVATURES}, got {kind!r}")


def _from_gradients(kind: str, source: GradientSource, damping: Damping, l2: float = 0.0) -> Curvature:
    check_damping(damping)
    if kind == "dense":
        dim = source.layout.dim
        if dim > MAX_DENSE_DIM:
            raise ValueError(
                f"the gradients' dimension d = {dim} is too large for the dense Fisher (at most {MAX_DENSE_DIM}); "
                "use curvature 'ekfac' or 'kfac', or a smaller projection"
            )
        fisher = second_moment(source.row_batches())
        return EigenCurvature(fisher + l2 * torch.eye(len(fisher), dtype=fisher.dtype, device=fisher.device), damping)
    if kind not in ("kfac", "ekfac"):
        raise ValueError(f"curvature must be one of {GRADIENT_CURVATURES}, got {kind!r}")
    bases, values = kronecker_eigenbases(source.kronecker_factors())
    if kind == "ekfac":
        values = refit_eigenvalues(source.layout, bases, source.row_batches())
    return KroneckerCurvature(source.layout, bases, values, l2, damping)

"""The training curvature by name: the one factory the library, the experiments and the command line use."""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor

from groupinf.curvature.base import Curvature, Damping, check_damping
from groupinf.curvature.dense import EigenCurvature, exact_hessian, gauss_newton
from groupinf.curvature.kfac import EKFACCurvature, KFACCurvature, tensor_batches
from groupinf.task import Task

#: "exact" Hessian of R, dense Gauss–Newton "ggn", or their Kronecker-factored "kfac"/"ekfac" (docs/math.md §6)
CurvatureKind = Literal["exact", "ggn", "kfac", "ekfac"]
CURVATURES: tuple[str, ...] = get_args(CurvatureKind)


def fit_curvature(
    kind: CurvatureKind,
    task: Task,
    theta: Tensor,
    inputs: Tensor,
    targets: Tensor,
    n: int,
    damping: Damping,
) -> Curvature:
    """The training curvature named ``kind`` fitted at ``theta`` on ``(inputs, targets)``, damped by ``damping``.

    ``exact``: the Hessian of ``R`` (``n`` scales its loss term); ``ggn``: the dense Gauss–Newton matrix;
    ``kfac``/``ekfac``: their Kronecker-factored approximations of the Gauss–Newton matrix (exact
    output-Hessian expectation), which average over the given examples and so need all ``n`` of them.
    """
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

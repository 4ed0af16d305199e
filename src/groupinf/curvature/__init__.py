"""Training-curvature approximations behind one interface (``Curvature``)."""

from groupinf.curvature.base import Curvature, Damping, check_damping, parse_damping, resolve_damping
from groupinf.curvature.dense import EigenCurvature, exact_hessian, gauss_newton
from groupinf.curvature.factored import gradient_products, hooked_gradients, influence_scores
from groupinf.curvature.factory import CURVATURES, CurvatureKind, fit_curvature
from groupinf.curvature.kfac import (
    EKFACCurvature,
    KFACCurvature,
    KroneckerCurvature,
    KroneckerFactors,
    corrected_eigenvalues,
    fit_factors,
    tensor_batches,
)

__all__ = [
    "CURVATURES",
    "Curvature",
    "CurvatureKind",
    "Damping",
    "EKFACCurvature",
    "EigenCurvature",
    "KFACCurvature",
    "KroneckerCurvature",
    "KroneckerFactors",
    "check_damping",
    "corrected_eigenvalues",
    "exact_hessian",
    "fit_curvature",
    "fit_factors",
    "gauss_newton",
    "gradient_products",
    "hooked_gradients",
    "influence_scores",
    "parse_damping",
    "resolve_damping",
    "tensor_batches",
]

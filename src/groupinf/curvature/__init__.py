"""Training-curvature approximations behind one interface (``Curvature``)."""

from groupinf.curvature.base import Curvature, Damping, check_damping, parse_damping, resolve_damping
from groupinf.curvature.dense import EigenCurvature, exact_hessian, gauss_newton, second_moment
from groupinf.curvature.factored import gradient_products, hooked_gradients, influence_scores
from groupinf.curvature.factory import (
    CURVATURES,
    GRADIENT_CURVATURES,
    CurvatureKind,
    GradientCurvatureKind,
    GradientSource,
    fit_curvature,
)
from groupinf.curvature.kfac import (
    EKFACCurvature,
    KFACCurvature,
    KroneckerFactors,
    corrected_eigenvalues,
    fit_factors,
    tensor_batches,
)
from groupinf.curvature.kronecker import KroneckerCurvature, kronecker_eigenbases, refit_eigenvalues
from groupinf.curvature.layout import Block, BlockLayout

__all__ = [
    "CURVATURES",
    "GRADIENT_CURVATURES",
    "Block",
    "BlockLayout",
    "Curvature",
    "CurvatureKind",
    "Damping",
    "EKFACCurvature",
    "EigenCurvature",
    "GradientCurvatureKind",
    "GradientSource",
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
    "kronecker_eigenbases",
    "parse_damping",
    "refit_eigenvalues",
    "resolve_damping",
    "second_moment",
    "tensor_batches",
]

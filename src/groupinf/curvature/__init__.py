"""Training-curvature approximations behind one interface (``Curvature``)."""

from groupinf.curvature.base import Curvature, Damping, resolve_damping
from groupinf.curvature.dense import EigenCurvature, exact_hessian, gauss_newton

__all__ = ["Curvature", "Damping", "EigenCurvature", "exact_hessian", "gauss_newton", "resolve_damping"]

"""groupinf: interaction-aware influence functions for group attribution and data selection (PyTorch).

The names a user of the library needs; docs/math.md states every formula and convention. Describe the
problem with a ``Task`` (model, per-example loss, L2, target), then ``GroupInfluence.fit`` fits the training
curvature once and answers ``estimate`` (F, I, F+I, F+B, F+I+B of groups), ``pairwise`` (``J``),
``features`` and ``select`` (greedy Algorithm 1 and the other registered methods).
"""

from groupinf.curvature import CURVATURES, Curvature, fit_curvature
from groupinf.curvature_ops import LowRankCurvature, TargetCurvature
from groupinf.features import SelectionFeatures, compute_features
from groupinf.influence import GroupInfluence
from groupinf.losses import BinaryLogistic, CrossEntropy, Loss, SquaredError
from groupinf.methods import METHODS, PoolInputs, run_method
from groupinf.selection import InteractionFactors, Selection, greedy_select
from groupinf.target import TARGET_KINDS, CallableTarget, LossTarget, example_loss, mean_loss, target_curvature
from groupinf.task import Target, Task
from groupinf.training import fit_convex

__all__ = [
    "CURVATURES",
    "METHODS",
    "TARGET_KINDS",
    "BinaryLogistic",
    "CallableTarget",
    "CrossEntropy",
    "Curvature",
    "GroupInfluence",
    "InteractionFactors",
    "Loss",
    "LossTarget",
    "LowRankCurvature",
    "PoolInputs",
    "Selection",
    "SelectionFeatures",
    "SquaredError",
    "Target",
    "TargetCurvature",
    "Task",
    "compute_features",
    "example_loss",
    "fit_convex",
    "fit_curvature",
    "greedy_select",
    "mean_loss",
    "run_method",
    "target_curvature",
]

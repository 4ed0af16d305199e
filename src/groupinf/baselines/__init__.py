"""Attribution baselines compared in the paper: TRAK and TracIn (per-example scores)."""

from groupinf.baselines.tracin import tracin_scores
from groupinf.baselines.trak import output_function, trak_scores

__all__ = ["output_function", "tracin_scores", "trak_scores"]

"""Probability paths: how a point moves from noise (t = 0) to data (t = 1)."""

from flowmatch.paths.affine import AffinePath, CondOTPath
from flowmatch.paths.base import PathSample, ProbPath
from flowmatch.paths.schedulers import (
    CondOTScheduler,
    ConvexScheduler,
    CosineScheduler,
    LinearVPScheduler,
    PolynomialScheduler,
    Scheduler,
    SchedulerOutput,
    VPScheduler,
)

__all__ = [
    "AffinePath", "CondOTPath", "PathSample", "ProbPath", "Scheduler", "SchedulerOutput",
    "ConvexScheduler", "CondOTScheduler", "PolynomialScheduler", "CosineScheduler",
    "LinearVPScheduler", "VPScheduler",
]

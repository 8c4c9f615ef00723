"""Probability paths: how a point moves from noise (t = 0) to data (t = 1)."""

from flowmatch.paths.affine import AffinePath, CondOTPath
from flowmatch.paths.base import PathSample, ProbPath
from flowmatch.paths.coupling import OTCoupling, independent_coupling
from flowmatch.paths.product import ProductPath
from flowmatch.paths.schedule_transform import ScheduleTransformedField
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
    "AffinePath", "CondOTPath", "PathSample", "ProbPath", "ScheduleTransformedField",
    "ProductPath",
    "Scheduler", "SchedulerOutput",
    "ConvexScheduler", "CondOTScheduler", "PolynomialScheduler", "CosineScheduler",
    "LinearVPScheduler", "VPScheduler",
]
__all__ += ["OTCoupling", "independent_coupling"]
from flowmatch.paths.mixture import MixtureDiscretePath  # noqa: E402
from flowmatch.paths.schedulers import CosineConvexScheduler  # noqa: E402

__all__ += ["MixtureDiscretePath", "CosineConvexScheduler"]

from flowmatch.paths.geodesic import GeodesicPath  # noqa: E402

__all__ += ["GeodesicPath"]

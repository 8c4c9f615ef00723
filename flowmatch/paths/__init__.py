"""Probability paths: how a point moves from noise (t = 0) to data (t = 1)."""

from flowmatch.paths.affine import AffinePath, CondOTPath
from flowmatch.paths.base import PathSample, ProbPath
from flowmatch.paths.coupling import OTCoupling, independent_coupling
from flowmatch.paths.geodesic import GeodesicPath
from flowmatch.paths.marginal import marginal_velocity
from flowmatch.paths.metric_induced import (
    BetaScheduler,
    LikelihoodOffset,
    MetricInducedPath,
    PowerBetaScheduler,
    ordinal_distance,
)
from flowmatch.paths.mixture import MixtureDiscretePath
from flowmatch.paths.product import ProductPath, ProductPathSample
from flowmatch.paths.schedule_transform import ScheduleTransformedField
from flowmatch.paths.schedulers import (
    CondOTScheduler,
    ConvexScheduler,
    CosineConvexScheduler,
    CosineScheduler,
    LinearVPScheduler,
    PolynomialScheduler,
    Scheduler,
    SchedulerOutput,
    VPScheduler,
)

__all__ = [
    # paths
    "ProbPath", "PathSample", "AffinePath", "CondOTPath", "GeodesicPath", "MixtureDiscretePath",
    "ProductPath", "ProductPathSample", "ScheduleTransformedField",
    # schedulers
    "Scheduler", "SchedulerOutput", "ConvexScheduler", "CondOTScheduler", "PolynomialScheduler",
    "CosineConvexScheduler", "CosineScheduler", "LinearVPScheduler", "VPScheduler",
    # metric-induced discrete paths (kinetic-optimal rates)
    "MetricInducedPath", "BetaScheduler", "PowerBetaScheduler", "LikelihoodOffset",
    "ordinal_distance",
    # couplings
    "OTCoupling", "independent_coupling",
    # low-variance targets
    "marginal_velocity",
]

"""Geodesic conditional probability paths on a Riemannian manifold (Riemannian flow matching).

Given a source point x0 (noise, t = 0), a target point x1 (data, t = 1) and a convex scheduler
κ_t (κ_0 = 0, κ_1 = 1), the conditional path runs along the minimising geodesic from x0 to x1:

    x_t = exp_{x1}(κ̄_t v),     v = log_{x1}(x0),     κ̄_t = 1 − κ_t,

so x_0 = exp_{x1}(v) = x0 and x_1 = x1. With γ(s) = exp_{x1}(s v) the velocity is
dx_t/dt = −κ̇_t γ'(κ̄_t), a tangent vector at x_t.

Closed-form velocity (any geometry with expmap and logmap). A minimising geodesic restricted to
a sub-interval is still minimising, so for 0 < s ≤ 1 the curve γ on [0, s] is the geodesic from
x1 to γ(s) travelled in unit time *after rescaling by s*; hence

    γ'(s) = −log_{γ(s)}(x1) / s            (s > 0)
          =  log_{γ(s)}(x0) / (1 − s)      (s < 1).

We use the first form for s ≥ ½ and the second for s < ½, so the logarithm is always taken of a
point at least half the geodesic away: its relative rounding error stays O(ε) and we never
divide by a small number. This costs one extra logmap per sample and is exact wherever the
logarithm is (inside the injectivity radius, i.e. x0 not in the cut locus of x1 — a null set
for the uniform base distributions used here).

Forward-mode velocity (``velocity="jvp"``): dγ/ds by ``torch.func.jvp`` through
s ↦ exp_{x1}(s v). Slower; kept as an independent check and for geometries whose logmap is
less accurate than their expmap.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from flowmatch._validation import (
    check_same_shape,
    check_time,
    expand_time_like,
    trusted_points,
)
from flowmatch.geometry.base import Geometry
from flowmatch.paths.base import PathSample, ProbPath
from flowmatch.paths.schedulers import CondOTScheduler, ConvexScheduler

VelocityMode = Literal["logmap", "jvp"]


class GeodesicPath(ProbPath):
    """x_t = exp_{x1}((1 − κ_t) log_{x1} x0) on ``geometry`` with a convex scheduler κ.

    Points ``x0``, ``x1`` have shape [B, *point_shape]; ``t`` has shape [B] (or is a scalar /
    shape [1], broadcast to the batch). ``sample`` returns ``x_t`` (a point) and ``dx_t`` (a
    tangent vector at ``x_t``, the flow-matching regression target).

    Args:
        scheduler: a :class:`ConvexScheduler` (default: CondOT, κ_t = t, constant speed).
        geometry: the space; needs ``expmap`` and ``logmap``.
        velocity: ``"logmap"`` (closed form, default) or ``"jvp"`` (forward-mode autodiff).
    """

    def __init__(
        self,
        geometry: Geometry,
        scheduler: ConvexScheduler | None = None,
        *,
        velocity: VelocityMode = "logmap",
    ) -> None:
        if not isinstance(geometry, Geometry):
            raise TypeError(
                f"geometry must be a flowmatch Geometry (wrap geoopt manifolds with "
                f"flowmatch.geometry.as_geometry), got {type(geometry).__name__}"
            )
        if geometry.is_discrete:
            raise ValueError(f"geometry must be continuous for a geodesic path, got {geometry}")
        scheduler = CondOTScheduler() if scheduler is None else scheduler
        if not isinstance(scheduler, ConvexScheduler):
            raise TypeError(
                "a geodesic path needs a ConvexScheduler (κ_0 = 0, κ_1 = 1), got "
                f"{type(scheduler).__name__}"
            )
        if velocity not in ("logmap", "jvp"):
            raise ValueError(f"velocity must be 'logmap' or 'jvp', got {velocity!r}")
        self.geometry = geometry
        self.scheduler = scheduler
        self.velocity = velocity

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        g = self.geometry
        check_same_shape("x0", x0, "x1", x1)
        g.validate(x0, "x0")
        g.validate(x1, "x1")
        check_time("t", t, batch_size=x1.shape[0])
        if t.dim() == 0 or t.shape[0] != x1.shape[0]:
            t = t.reshape(-1).expand(x1.shape[0])
        t = t.to(dtype=x1.dtype)
        tt = expand_time_like(t, x1)
        s = 1 - self.scheduler.kappa(tt)          # κ̄_t: 1 at noise, 0 at data
        ds_dt = -self.scheduler.d_kappa(tt)
        with trusted_points():  # x0 and x1 were checked above; x_t comes from expmap
            v = g.logmap(x1, x0)
            if self.velocity == "logmap":
                x_t = g.expmap(x1, s * v)
                # γ'(s) from whichever endpoint is farther from x_t (see module docstring)
                near_noise = s >= 0.5
                from_x1 = -g.logmap(x_t, x1) / torch.where(near_noise, s, torch.ones_like(s))
                from_x0 = g.logmap(x_t, x0) / torch.where(near_noise, torch.ones_like(s), 1 - s)
                dgamma = torch.where(near_noise, from_x1, from_x0)
            else:
                x_t, dgamma = torch.func.jvp(lambda s_: g.expmap(x1, s_ * v), (s,),
                                             (torch.ones_like(s),))
            dx_t = g.proju(x_t, ds_dt * dgamma)  # removes rounding-level normal components
        return PathSample(x0=x0, x1=x1, t=t, x_t=x_t, dx_t=dx_t)

    # -- conditional density and velocity given x1 (for marginal targets) ------------------
    def conditional_log_prob(self, x_t: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """log p_t(x_t | x1) with the geometry's base distribution as the source, shape [...].

        ``x_t`` and ``x1`` ([..., *point_shape]) and ``t`` ([...]) broadcast together, so
        ``x_t[:, None]``, ``x1[None]`` and ``t[:, None]`` give the [B, M] table of every pair.
        The law of x_t given x1 is the base contracted towards x1 by κ̄_t = 1 − κ_t
        (:meth:`~flowmatch.geometry.base.Geometry.contracted_base_log_prob`).
        """
        s = 1 - self.scheduler.kappa(t.to(x_t.dtype))
        return self.geometry.contracted_base_log_prob(x_t, x1, s)

    def conditional_velocity(self, x_t: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """u_t(x_t | x1) = (κ̇_t / κ̄_t) log_{x_t}(x1), the conditional field at any x_t.

        Shapes as in :meth:`conditional_log_prob`; the result has the broadcast point shape.
        """
        return self._contraction_rate(t, x_t) * self.geometry.logmap(x_t, x1)

    def posterior_velocity(self, x_t: Tensor, t: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ_j w_ij u_t(x_t,i | x1_j), supported) with posterior weights w_ij ∝ p_t(x_t,i | x1_j).

        x_t [B, *point_shape], t [B], x1 [M, *point_shape]: the marginal velocity of the
        reference set (:func:`flowmatch.paths.marginal.marginal_velocity`), through the
        geometry's :meth:`~flowmatch.geometry.base.Geometry.posterior_logmap`.
        """
        t = t.to(x_t.dtype)
        mean_log, supported = self.geometry.posterior_logmap(x_t, x1, 1 - self.scheduler.kappa(t))
        return self._contraction_rate(t, x_t) * mean_log, supported

    def _contraction_rate(self, t: Tensor, x_t: Tensor) -> Tensor:
        """κ̇_t / κ̄_t, shaped to broadcast over the point dimensions of x_t (t: its batch dims)."""
        t = t.to(x_t.dtype)
        tt = t.reshape(*t.shape, *([1] * len(self.geometry.point_shape)))
        return self.scheduler.d_kappa(tt) / (1 - self.scheduler.kappa(tt))

    def __repr__(self) -> str:
        return f"GeodesicPath({self.geometry!r}, {self.scheduler!r}, velocity={self.velocity!r})"

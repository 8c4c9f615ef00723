"""The flat torus (R / pZ)ᵈ: periodic coordinates such as angles or fractional coordinates."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowmatch.geometry._numerics import safe_norm
from flowmatch.geometry.base import Geometry, _as_shape, _checked


class FlatTorus(Geometry):
    """Flat torus Tᵈ = (R / pZ)ᵈ with period p (2π for angles, 1 for fractional coordinates).

    A point is a tensor of shape ``[..., d]`` whose entries are representatives in [0, p). A
    tangent vector is any real tensor of the same shape (the tangent space is Rᵈ everywhere);
    the metric is the flat one inherited from Rᵈ, so ``inner`` is the dot product,
    ``metric_logdet`` is 0 and ``proju`` is the identity.

    * expmap(x, u) = wrap(x + u), wrap(z) = z − p ⌊z/p⌋ ∈ [0, p);
    * logmap(x, y) = the representative of y − x in [−p/2, p/2) (the shortest displacement;
      at exactly half a period both ±p/2 are shortest and the map returns −p/2). It is computed
      as Δ − p ⌊Δ/p + ½⌋ with Δ = y − x, which is *exact* whenever |Δ| < p/2, unlike forms such
      as ((Δ + p/2) mod p) − p/2 that round small differences to multiples of ε·p;
    * dist = ‖logmap(x, y)‖, with finite (zero) gradient at y = x.

    ``check_point`` requires every coordinate in [0, p] up to the tolerance (p itself is the same
    point as 0 and is accepted); ``projx`` wraps arbitrary reals into [0, p). The maps are
    periodic, so any finite real is a representative they handle correctly (angles in [−π, π)
    need no wrapping first): with validation on they check shape and finiteness only
    (``maps_check_membership = False``).
    The base distribution is uniform w.r.t. the Riemannian volume: log p = −d log p.
    """

    atol = 1e-5
    maps_check_membership = False

    def __init__(self, d: int, period: float = 2 * math.pi) -> None:
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ValueError(f"d (the number of periodic coordinates) must be an int ≥ 1, "
                             f"got {d!r}")
        period = float(period)
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"period must be a positive finite number, got {period!r}")
        self.d = d
        self.period = period
        self.point_shape = (d,)
        self.dim = d

    def wrap(self, z: Tensor) -> Tensor:
        """Representative of z in [0, p)."""
        p = self.period
        # remainder is computed from fmod, which is exact, so r is the true remainder up to
        # one rounding (z − p⌊z/p⌋ written out loses ulp(z) in p⌊z/p⌋: 30× the error at
        # |z| < 1000 in float32, and leaves [0, p) for |z| ~ 1e12). Only a tiny negative z
        # can round up to r == p; that point is 0 (r − p keeps the unit gradient).
        r = torch.remainder(z, p)
        return torch.where(r >= p, r - p, r)

    @_checked("x", vectors=("u",))
    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        return self.wrap(x + u)

    @_checked("x", "y")
    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        p = self.period
        delta = y - x
        # floor has zero gradient, so d logmap / d y = I exactly (also across the seam).
        return delta - p * torch.floor(delta / p + 0.5)

    def projx(self, x: Tensor) -> Tensor:
        return self.wrap(x)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return u

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        return (u * (u if v is None else v)).sum(-1)

    def norm(self, x: Tensor, u: Tensor) -> Tensor:
        return safe_norm(u)

    @_checked("x", "y")
    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        return safe_norm(self.logmap(x, y))

    # -- base distribution -------------------------------------------------------------
    def sample_base(self, shape, *, generator=None, dtype=None, device=None) -> Tensor:
        u = torch.rand((*_as_shape(shape), self.d), generator=generator, dtype=dtype,
                       device=device)
        # (1 − 2⁻²⁴)·p can round up to p in float32; wrap sends it to 0.
        return self.wrap(u * self.period)

    def base_log_prob(self, x: Tensor) -> Tensor:
        return torch.full(x.shape[:-1], -self.d * math.log(self.period), dtype=x.dtype,
                          device=x.device)

    def posterior_logmap(self, x: Tensor, y: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior-mean logarithm (see Geometry) with one [B, M, d] table of logarithms.

        The contracted densities are equal on their boxes, so the posterior is uniform over the
        y_j whose box |log_{y_j} x|∞ < s p/2 holds x: the mean of those log_x(y_j) = −log_{y_j} x.
        """
        if x.dim() != 2 or y.dim() != 2 or s.shape != x.shape[:1]:
            return super().posterior_logmap(x, y, s)
        logs = self.logmap(x.unsqueeze(1), y.unsqueeze(0))        # [B, M, d]
        half = (s.to(x.dtype) * (self.period / 2)).reshape(-1, 1, 1)
        inside = (logs.abs() < half).all(-1) | (s >= 1).unsqueeze(1)
        count = inside.sum(1, keepdim=True)
        w = inside.to(x.dtype) / count.clamp_min(1).to(x.dtype)
        return torch.einsum("bm,bmd->bd", w, logs), count[:, 0] > 0

    def contracted_base_log_prob(self, x: Tensor, y: Tensor, s: Tensor) -> Tensor:
        """log p(x) of exp_y(s log_y X0), X0 uniform: −d log(s p) on the box |log_y x|∞ < s p/2.

        log_y X0 is uniform on the cube [−p/2, p/2)^d, so the contracted point is uniform on
        the cube of side s p about y (−inf outside).
        """
        delta = self.logmap(y, x)
        s = torch.as_tensor(s, dtype=delta.dtype, device=delta.device)
        half = s.unsqueeze(-1) * (self.period / 2)
        inside = (delta.abs() < half).all(-1)
        inside = inside | (s >= 1)
        log_p = -self.d * torch.log(s * self.period)
        log_p, inside = torch.broadcast_tensors(log_p, inside)
        return torch.where(inside, log_p, -math.inf)

    # -- validation --------------------------------------------------------------------
    def point_error(self, x: Tensor) -> Tensor:
        """How far the coordinates stray outside [0, p] (0 inside), max over coordinates."""
        return torch.maximum(-x, x - self.period).clamp_min(0).amax(-1)

    @property
    def point_rule(self) -> str:
        return f"every coordinate in [0, {self.period:g})"

    def __repr__(self) -> str:
        extra = "" if self.period == 2 * math.pi else f", period={self.period:g}"
        return f"FlatTorus({self.d}{extra})"

"""Hyperbolic space Hⁿ in the Lorentz (hyperboloid) model.

Written here rather than wrapping ``geoopt.Lorentz``, whose logmap goes through
arccosh(−⟨x, y⟩_L): its round trip logmap(x, expmap(x, u)) is off by ≈ 100 % at |u| = 1e-6 in
float64 (this module: ~1e-8) — see ``pytest -s tests/test_geometry_hyperbolic.py -k table``.
The two agree to 1e-9 at moderate distances (tested).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowmatch._validation import check_finite, validation_enabled
from flowmatch.geometry._numerics import safe_norm, sinhc
from flowmatch.geometry.base import Geometry, _as_shape, _checked


def minkowski(u: Tensor, v: Tensor, keepdim: bool = False) -> Tensor:
    """Minkowski form ⟨u, v⟩_L = −u₀v₀ + Σᵢ uᵢvᵢ over the last dimension."""
    prod = u * v
    out = prod[..., 1:].sum(-1, keepdim=keepdim) - prod[..., :1].sum(-1, keepdim=keepdim)
    return out


def log_sinhc(r: Tensor) -> Tensor:
    """log(sinh r / r) for r ≥ 0 without overflow (≈ r − log 2r for large r)."""
    small = r < 1.0
    r_small = torch.where(small, r, torch.zeros_like(r))
    r_big = torch.where(small, torch.ones_like(r), r)
    big = r_big + torch.log1p(-torch.exp(-2 * r_big)) - torch.log(2 * r_big)
    return torch.where(small, torch.log(sinhc(r_small)), big)


def _asinh_ratio(n: Tensor) -> Tensor:
    """asinh(n)/n for n ≥ 0, 1 with finite gradients at n = 0."""
    small = n < 1e-2
    s2 = n * n
    series = 1 - s2 * (1 / 6 - s2 * (3 / 40 - s2 * 5 / 112))
    n_safe = torch.where(small, torch.ones_like(n), n)
    return torch.where(small, series, torch.asinh(n_safe) / n_safe)


class Hyperbolic(Geometry):
    """Hyperbolic space Hⁿ of curvature −1 as the upper sheet of a hyperboloid in R^{n+1}.

    A point is x = (x₀, x₁, …, xₙ), shape ``[..., n + 1]``, with ⟨x, x⟩_L = −1 and x₀ > 0, where
    ⟨u, v⟩_L = −u₀v₀ + Σ uᵢvᵢ is the Minkowski form. A tangent vector at x is a u of the same
    shape with ⟨x, u⟩_L = 0; the metric is ⟨u, v⟩_x = ⟨u, v⟩_L (positive on tangent vectors).

    * expmap(x, u) = cosh|u| x + sinh|u| u/|u|, then x₀ is recomputed from the spatial part
      (x₀ = sqrt(1 + ‖x_s‖²)) so that rounding never leaves the hyperboloid;
    * logmap(x, y) = d w/|w| with w = P_x(y − x) the tangent part of the displacement (formed from
      the small difference y − x, exact when y ≈ x) and d = asinh|w| (|w| = sinh d), which is
      accurate at small distances where arccosh(−⟨x, y⟩_L) loses half the digits; for |w| ≥ 1
      d = arccosh(−⟨x, y⟩_L), accurate at large distances;
    * proju(x, u) = u + ⟨x, u⟩_L x is the projection that is orthogonal for the
      *Minkowski* form — an oblique projection in Euclidean terms, not the Euclidean one.
    * projx keeps the spatial coordinates and sets x₀ = sqrt(1 + ‖x_s‖²) (a retraction onto the
      hyperboloid along the x₀ axis, not the Euclidean nearest point).

    Divergence and likelihood. The Levi-Civita connection of the hyperboloid is the
    Minkowski-orthogonal projection of the ambient derivative, so the Riemannian divergence of a
    tangent field v is tr(P J) with J the ambient Jacobian of v and P = ``proju`` (an oblique
    matrix). Its Hutchinson estimate must be zᵀ J (P z) — not (P z)ᵀ J (P z), which estimates
    tr(Pᵀ J P) ≠ tr(J P) for oblique P. ``metric_logdet`` is 0: no chart correction is needed
    because the divergence is taken intrinsically, and ``base_log_prob`` is a density w.r.t. the
    Riemannian volume.

    Large norms. Coordinates grow like e^r/2 at distance r from the origin, so the model
    overflows once x₀² does: at r ≈ 44 in float32 and r ≈ 354 in float64. ``expmap`` raises a
    ``ValueError`` when its result is not finite (with validation on). Long before that, float32
    loses accuracy, because the Minkowski form cancels terms of size x₀²: measured,
    ``logmap(x, expmap(x, u))`` recovers u to relative error ≲ 20 ε (cosh² r + cosh² (r + |u|))/|u|
    at distance r from the origin (ε = 6e-8 in float32, 1.1e-16 in float64), i.e. the distance
    between nearby points at r ≈ 5 is resolved to ~1e-3 in float32. Use float64 for data far
    from the origin. Norms are computed with a scaled Minkowski form, so they stay finite for all
    representable points.

    Base distribution: the wrapped normal at the origin o = (1, 0, …, 0): v ~ N(0, σ² Iₙ) in
    T_oHⁿ pushed through exp_o. With r = |v|, its density w.r.t. the Riemannian volume is
    N(v; 0, σ² I) · (r / sinh r)^{n−1}, the second factor being the inverse volume change of exp_o.
    """

    point_rule = "x₀ = sqrt(1 + ‖x_s‖²) > 0, relative"

    atol = 1e-5

    def __init__(self, n: int, base_scale: float = 1.0) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n (the dimension of hyperbolic space) must be an int ≥ 1, got {n!r}")
        base_scale = float(base_scale)
        if not (math.isfinite(base_scale) and base_scale > 0):
            raise ValueError(f"base_scale must be a positive finite number, got {base_scale!r}")
        self.n = n
        self.point_shape = (n + 1,)
        self.dim = n
        self.base_scale = base_scale

    def origin(self, *batch: int, dtype=None, device=None) -> Tensor:
        """The point (1, 0, …, 0), shape ``[*batch, n + 1]``."""
        o = torch.zeros((*batch, self.n + 1), dtype=dtype, device=device)
        o[..., 0] = 1.0
        return o

    # -- maps --------------------------------------------------------------------------
    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        return minkowski(u, u if v is None else v)

    def norm(self, x: Tensor, u: Tensor) -> Tensor:
        # ⟨u, u⟩_L ≥ 0 on tangent vectors; rounding can make it −0-ish, so clamp that at zero
        return safe_norm_minkowski(u)

    @_checked("x", vectors=("u",))
    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        # ⟨x, x⟩_L = −1 is used, not recomputed: far out it would be −x₀² + ‖x_s‖², a difference
        # of two numbers ~ e^{2r} whose rounding error exceeds 1 beyond r ≈ 18 (float64).
        return u + minkowski(x, u, keepdim=True) * x

    def projx(self, x: Tensor) -> Tensor:
        spatial = x[..., 1:]
        x0 = torch.sqrt(1 + spatial.pow(2).sum(-1, keepdim=True))
        return torch.cat([x0, spatial], dim=-1)

    @_checked("x", vectors=("u",))
    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        n = safe_norm_minkowski(u, keepdim=True)
        y = self.projx(torch.cosh(n) * x + sinhc(n) * u)
        if validation_enabled() and not bool(torch.isfinite(y).all()):
            check_finite("x", x)
            check_finite("u", u)
            raise ValueError(
                f"expmap on {self} overflowed in {x.dtype}: |u| up to {float(n.max()):.4g} "
                f"from points with x₀ up to {float(x[..., 0].max()):.4g}; the Lorentz model "
                f"represents points only up to distance ≈ {self.max_radius(x.dtype):.0f} from "
                "the origin in this dtype (use float64 or shorter steps)"
            )
        return y

    @staticmethod
    def max_radius(dtype: torch.dtype) -> float:
        """Distance from the origin beyond which x₀² overflows in ``dtype``."""
        return 0.5 * math.log(torch.finfo(dtype).max) - 1.0

    def _tangent_part(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(w/s, |w|, c) with w = P_x(y − x), c = −⟨x, y⟩_L = cosh d and a scale s.

        The entries of w are ~ sinh(d) e^{r_x}, which overflows float32 for two points at
        r ≈ 40 although the logmap itself is small, so far apart points are handled as
        P_x((y − x)/c) (s = c); nearby ones (c < 2) are not scaled, keeping y − x exact.
        """
        c = -minkowski(x, y, keepdim=True)
        s = torch.where(c > 2, c, torch.ones_like(c))
        w_scaled = self.proju(x, (y - x) / s)
        n = s * safe_norm_minkowski(w_scaled, keepdim=True)
        return w_scaled, n, c

    @staticmethod
    def _distance(n: Tensor, c: Tensor) -> Tensor:
        # asinh|w| where |w| = sinh d is small, arccosh(−⟨x, y⟩_L) where it is large; the
        # arccosh argument is made safe on the branch not taken (its gradient is infinite at 1)
        large = n >= 1.0
        c_safe = torch.where(large, c.clamp_min(1.0), torch.full_like(c, 2.0))
        return torch.where(large, torch.arccosh(c_safe), torch.asinh(n))

    @_checked("x", "y")
    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        w_scaled, n, c = self._tangent_part(x, y)
        d = self._distance(n, c)
        small = n < 1.0
        # ratio = d/|w|; w = s w_scaled with s = 1 on the small branch, so the large branch
        # needs d/|w_scaled| = d/(n/s), computed as d s / n
        s = torch.where(c > 2, c, torch.ones_like(c))
        n_safe = torch.where(small, torch.ones_like(n), n)
        ratio = torch.where(small, _asinh_ratio(torch.where(small, n, torch.zeros_like(n))),
                            d / (n_safe / s))
        return ratio * w_scaled

    @_checked("x", "y")
    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        _, n, c = self._tangent_part(x, y)
        return self._distance(n, c).squeeze(-1)

    # -- base distribution -------------------------------------------------------------
    def expmap_origin(self, v: Tensor) -> Tensor:
        """exp_o of the tangent vector (0, v) at the origin, for v of shape ``[..., n]``."""
        r = safe_norm(v, keepdim=True)
        return self.projx(torch.cat([torch.cosh(r), sinhc(r) * v], dim=-1))

    def logmap_origin(self, y: Tensor) -> Tensor:
        """The v ∈ Rⁿ with exp_o((0, v)) = y: v = asinh‖y_s‖ · y_s/‖y_s‖ (uses only y_s)."""
        spatial = y[..., 1:]
        return _asinh_ratio(safe_norm(spatial, keepdim=True)) * spatial

    def sample_base(self, shape, *, generator=None, dtype=None, device=None) -> Tensor:
        v = self.base_scale * torch.randn((*_as_shape(shape), self.n), generator=generator,
                                          dtype=dtype, device=device)
        return self.expmap_origin(v)

    def base_log_prob(self, x: Tensor) -> Tensor:
        v = self.logmap_origin(x)
        r = safe_norm(v)
        s = self.base_scale
        gauss = -0.5 * r.pow(2) / s**2 - self.n * (math.log(s) + 0.5 * math.log(2 * math.pi))
        return gauss - (self.n - 1) * log_sinhc(r)

    # -- validation --------------------------------------------------------------------
    def point_error(self, x: Tensor) -> Tensor:
        """|x₀ − sqrt(1 + ‖x_s‖²)| / x₀-scale: relative, since float rounding of x is relative."""
        target = torch.sqrt(1 + x[..., 1:].pow(2).sum(-1))
        return (x[..., 0] - target).abs() / target

    def __repr__(self) -> str:
        extra = "" if self.base_scale == 1.0 else f", base_scale={self.base_scale:g}"
        return f"Hyperbolic({self.n}{extra})"


def safe_norm_minkowski(u: Tensor, keepdim: bool = False) -> Tensor:
    """sqrt(max(⟨u, u⟩_L, 0)), with zero gradient where it vanishes.

    u is scaled by its largest entry first: far from the origin the entries of a tangent vector
    are ~ e^r times its norm, and their squares would overflow long before the norm does. The
    scale is detached, which leaves the gradient exact because the norm is 1-homogeneous.
    """
    m = u.detach().abs().amax(-1, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    sq = minkowski(u / m, u / m, keepdim=True)
    positive = sq > 0
    out = m * torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(),
                          torch.zeros_like(sq))
    return out if keepdim else out.squeeze(-1)

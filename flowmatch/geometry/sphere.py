"""The unit sphere S^{n−1} ⊂ Rⁿ with the induced (round) metric.

Numerics are the point of this module. In float32, ``logmap(x, expmap(x, u))`` recovers ``u`` to
within max(1e-3, 20 ε/|u|) relative error for |u| from 1e-6 to π − 1e-3 (ε ≈ 6e-8; the ε/|u| term
is the rounding of the point y itself, which no formula can undo), ``dist(x, x)`` is exactly 0,
and the gradients of ``logmap`` and ``dist`` are finite at coincident and antipodal points.
The recipe:

* the angle is θ = atan2(|w|, ⟨x, y⟩) with w = (y − x) − ⟨x, y − x⟩ x the component of y
  orthogonal to x. ``acos(⟨x, y⟩)`` loses half the digits near θ = 0 and returns NaN when
  rounding pushes ⟨x, y⟩ past 1; forming w from the small difference y − x (exact by Sterbenz's
  lemma when y is near x) instead of y − ⟨x, y⟩ x avoids cancelling two numbers of size 1;
* θ/|w| and sin|u|/|u| are evaluated by their Taylor series near 0 and every singular branch is
  guarded on its *argument*, so no NaN reaches a gradient.

The maps are written here rather than inherited from ``geoopt.Sphere``: in float32 its
logmap(x, expmap(x, u)) is off by more than 100 % at |u| = 1e-4, and flow_matching's sphere by
≈ 4 × at |u| ≤ 1e-4 and NaN in dist(x, x) for a few % of points (printed side by side by
``pytest -s tests/test_geometry_sphere.py -k table``).

The numerical helpers live in :mod:`flowmatch.geometry._numerics`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowmatch.geometry._numerics import atan_ratio, safe_norm, sinc
from flowmatch.geometry.base import Geometry, _as_shape, _checked

# Longest last axis for which _dot sums by a matrix product (see there).
_MATMUL_DOT_MAX = 16


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ over the last axis, kept: [..., n] × [..., n] → [..., 1].

    On CPU, ``sum(-1)`` over a short last axis is a slow reduction: for 4096 × 3 float32 at one
    thread it took 52 µs against 18 µs for the product with a ones vector, and ``proju`` needs
    two of them per call, several calls per solver step. For n ≤ 4 the two sums were
    bit-identical (10⁵ random rows, float32 and float64); up to n = 16 the product's error was
    no larger; beyond that torch's cascade summation is more accurate, so long axes keep
    ``sum``. GPUs, other dtypes and reduced-precision float32 matmul (TF32/bf16 modes) keep it
    too.
    """
    p = a * b
    n = p.shape[-1]
    if (n <= _MATMUL_DOT_MAX and p.device.type == "cpu"
            and (p.dtype == torch.float64 or (p.dtype == torch.float32
                                               and torch.get_float32_matmul_precision()
                                               == "highest"))):
        return p @ p.new_ones(n, 1)
    return p.sum(-1, keepdim=True)


class Sphere(Geometry):
    """Unit sphere S^{n−1} = {x ∈ Rⁿ : ‖x‖ = 1}, of dimension n − 1, with the round metric.

    A point is a unit vector of shape ``[..., n]``. A tangent vector at x is a vector u of the
    same shape with ⟨x, u⟩ = 0; the metric is the one induced by Rⁿ, so ``inner`` is the
    Euclidean dot product and ``metric_logdet`` is 0 (the divergence of a tangent field is the
    trace of its projected ambient Jacobian).

    Geodesics are great circles: expmap(x, u) = cos|u| x + sin|u| u/|u|; dist is the angle in
    [0, π]. The cut locus of x is its antipode −x: there every direction is a shortest geodesic,
    and ``logmap(x, −x)`` returns the tangent vector of length π pointing towards the coordinate
    axis eᵢ on which |xᵢ| is smallest (the first such i), i.e. π (eᵢ − xᵢ x)/‖eᵢ − xᵢ x‖. Points
    within ~32 ε of the antipode (where w is pure rounding noise) take that branch too.

    The base distribution is uniform w.r.t. the Riemannian volume: log p = −log vol(S^{n−1}),
    vol(S^{n−1}) = 2 π^{n/2} / Γ(n/2) (4π for S² in R³).

    With validation on, ``expmap``, ``logmap`` and ``dist`` raise a ``ValueError`` for point
    arguments off the sphere (| ‖x‖ − 1 | above ``tolerance(dtype)``); ``proju`` accepts any
    nonzero x, since it projects orthogonally to x whatever its length.
    """

    point_rule = "‖x‖ = 1"

    atol = 1e-5

    def __init__(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ValueError(f"n (the ambient dimension of the sphere) must be an int ≥ 2, "
                             f"got {n!r}")
        self.n = n
        self.point_shape = (n,)
        self.dim = n - 1

    @property
    def log_volume(self) -> float:
        """log vol(S^{n−1}) = log 2 + (n/2) log π − log Γ(n/2)."""
        n = self.n
        return math.log(2.0) + 0.5 * n * math.log(math.pi) - math.lgamma(0.5 * n)

    # -- maps --------------------------------------------------------------------------
    @_checked("x", vectors=("u",))
    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """cos|u| x + sinc|u| u, renormalised so rounding never walks off the sphere."""
        n = safe_norm(u, keepdim=True)
        y = torch.cos(n) * x + sinc(n) * u
        return y / safe_norm(y, keepdim=True)

    def _orthogonal_part(self, x: Tensor, y: Tensor) -> Tensor:
        # w = y − (⟨x, y⟩/⟨x, x⟩) x written through d = y − x, which is exact when y ≈ x.
        d = y - x
        return d - ((x * d).sum(-1, keepdim=True) / (x * x).sum(-1, keepdim=True)) * x

    @_checked("x", "y")
    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """θ w/|w| with θ = atan2(|w|, ⟨x, y⟩); a fixed direction of length π at the antipode."""
        w = self._orthogonal_part(x, y)
        n = safe_norm(w, keepdim=True)
        c = (x * y).sum(-1, keepdim=True)
        tiny = 32 * torch.finfo(x.dtype).eps if x.is_floating_point() else 0.0
        antipodal = (c < 0) & (n <= tiny)
        ratio = atan_ratio(torch.where(antipodal, torch.ones_like(n), n), c)
        return torch.where(antipodal, self._antipodal_direction(x), ratio * w)

    def _antipodal_direction(self, x: Tensor) -> Tensor:
        # e_i − x_i x / ⟨x, x⟩ for the axis with the smallest |x_i|: its norm² is
        # 1 − x_i² ≥ 1 − 1/n > 0, so the direction is well defined and depends only on x.
        i = x.abs().argmin(dim=-1, keepdim=True)
        e = torch.zeros_like(x).scatter_(-1, i, 1.0)
        v = e - (x.gather(-1, i) / (x * x).sum(-1, keepdim=True)) * x
        return math.pi * v / safe_norm(v, keepdim=True)

    def projx(self, x: Tensor) -> Tensor:
        """x/‖x‖. The zero vector has no nearest point and maps to NaN (check_point rejects it)."""
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """u − (⟨x, u⟩/⟨x, x⟩) x: an orthogonal projection even for x a hair off the sphere."""
        # dividing by ⟨x, x⟩ (not assuming 1) costs one more dot product; _dot makes both cheap
        return u - (_dot(x, u) / _dot(x, x)) * x

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        return (u * (u if v is None else v)).sum(-1)

    def norm(self, x: Tensor, u: Tensor) -> Tensor:
        return safe_norm(u)

    @_checked("x", "y")
    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """Angle atan2(|w|, ⟨x, y⟩) ∈ [0, π]; exactly 0 at y = x with zero (finite) gradient."""
        w = self._orthogonal_part(x, y)
        return torch.atan2(safe_norm(w), (x * y).sum(-1))

    # -- base distribution -------------------------------------------------------------
    def sample_base(self, shape, *, generator=None, dtype=None, device=None) -> Tensor:
        """Uniform points: normalised standard Gaussians (rotation invariant, hence uniform)."""
        z = torch.randn((*_as_shape(shape), self.n), generator=generator, dtype=dtype,
                        device=device)
        return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)

    def base_log_prob(self, x: Tensor) -> Tensor:
        return torch.full(x.shape[:-1], -self.log_volume, dtype=x.dtype, device=x.device)

    def posterior_logmap(self, x: Tensor, y: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior-mean logarithm (see Geometry) in one pass over the [B, M] table.

        With the chord c = |x − y| (from the differences, so close pairs keep their digits),
        r = 2 asin(c/2), sin r = c √(1 − c²/4) and cos r = 1 − c²/2:
        w ∝ (sin(r/s) / sin r)^{m−1} on r < sπ, and log_x(y) = (r / sin r)(y − cos r x), so the
        sum is a y − (Σ_j a_j cos r_j) x with a = w r / sin r — two matrix products, no
        [B, M, n] table. The rounding left is absolute, O(ε), and proju keeps the result
        tangent. At the antipode (r → π, only inside the support when s ≈ 1) r / sin r is
        capped, so those pairs contribute less than length π.
        """
        if x.dim() != 2 or y.dim() != 2 or s.shape != x.shape[:1]:
            return super().posterior_logmap(x, y, s)
        tiny = torch.finfo(x.dtype).tiny
        chord = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
        chord = chord.clamp(min=tiny ** 0.5, max=2.0)
        r = 2 * torch.asin(chord / 2)
        cos_r = 1 - chord * chord / 2
        sin_r = chord * torch.sqrt((cos_r + 1) / 2)
        # capped near the antipode only; near r = 0 the chord's floor keeps sin r > 0
        sin_r = torch.where(r > 1, sin_r.clamp_min(torch.finfo(x.dtype).eps), sin_r)
        s = s.to(x.dtype).unsqueeze(1)
        rho = r / s
        inside = (rho < math.pi) | (s >= 1)
        m = self.dim
        if m == 1:
            weight = inside.to(x.dtype)
        elif m == 2:
            # the ratio is at most 1/s: no overflow, so no logarithms
            weight = torch.where(inside, torch.sin(rho) / sin_r, 0.0)
        else:
            log_w = (m - 1) * torch.log(torch.sin(torch.where(inside, rho, 1.0)) / sin_r)
            log_w = torch.where(inside, log_w, -math.inf)
            weight = torch.exp(log_w - log_w.amax(1, keepdim=True).clamp_min(-1e30))
            weight = torch.where(inside, weight, 0.0)
        total = weight.sum(1, keepdim=True)
        supported = total[:, 0] > 0
        a = weight * (r / sin_r)
        u = (a @ y - (a * cos_r).sum(1, keepdim=True) * x) / total.clamp_min(tiny)
        u = torch.where(supported[:, None], u, 0.0)
        return self.proju(x, u), supported

    def contracted_base_log_prob(self, x: Tensor, y: Tensor, s: Tensor) -> Tensor:
        """log p(x) of exp_y(s log_y X0), X0 uniform: sin^{m−1}(r/s) / (vol · s · sin^{m−1} r).

        r = dist(x, y) < sπ (else −inf), m = n − 1. In geodesic polar coordinates about y the
        uniform law has radial density ∝ sin^{m−1} ρ on [0, π]; the contraction ρ ↦ sρ keeps
        the direction, and dividing by the volume element sin^{m−1} r gives the formula. At r = 0
        it is the limit s^{−m}/vol; at s = 1 it is the uniform density.
        """
        # the chord |x − y| from the difference is accurate for close points, where the
        # support boundary r < sπ is decided when s is small
        if x.dim() == 3 and y.dim() == 3 and x.shape[1] == 1 and y.shape[0] == 1:
            # the [B, M] table of pairs: cdist forms it without the [B, M, n] differences
            chord = torch.cdist(x[:, 0], y[0], compute_mode="donot_use_mm_for_euclid_dist")
        else:
            chord = torch.linalg.vector_norm(x - y, dim=-1)
        r = 2 * torch.asin((chord / 2).clamp(max=1.0))
        s = torch.as_tensor(s, dtype=r.dtype, device=r.device)
        rho = r / s
        inside = (rho < math.pi) | (s >= 1)
        log_p = -self.log_volume - torch.log(s)
        if self.dim > 1:
            # sin ρ / sin r → 1/s as r → 0: a floor on r keeps that limit (sin is exact there)
            # where both would be 0; torch.sinc would do it at 7× the cost of sin on CPU
            r = r.clamp_min(1e-20)
            log_p = log_p + (self.dim - 1) * (torch.log(torch.sin(torch.where(inside, r / s, 1.0)))
                                              - torch.log(torch.sin(r)))
        return torch.where(inside, log_p, -math.inf)

    # -- validation --------------------------------------------------------------------
    def point_error(self, x: Tensor) -> Tensor:
        return (torch.linalg.vector_norm(x, dim=-1) - 1).abs()

    def __repr__(self) -> str:
        return f"Sphere({self.n})"

"""The rotation group SO(3) as 3×3 matrices, with the bi-invariant metric."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowmatch.geometry._numerics import atan_ratio, safe_norm, sinc
from flowmatch.geometry.base import Geometry, _as_shape, _checked


def hat(w: Tensor) -> Tensor:
    """The skew matrix [w]ₓ with [w]ₓ v = w × v, for w of shape [..., 3]."""
    z = torch.zeros_like(w[..., 0])
    wx, wy, wz = w.unbind(-1)
    return torch.stack([
        torch.stack([z, -wz, wy], -1),
        torch.stack([wz, z, -wx], -1),
        torch.stack([-wy, wx, z], -1),
    ], -2)


def vee(m: Tensor) -> Tensor:
    """Inverse of ``hat`` on the skew part: (m₃₂ − m₂₃, m₁₃ − m₃₁, m₂₁ − m₁₂)/2."""
    return 0.5 * torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                              m[..., 1, 0] - m[..., 0, 1]], -1)


def _skew(m: Tensor) -> Tensor:
    return 0.5 * (m - m.transpose(-1, -2))


def _half_cos_ratio(theta: Tensor) -> Tensor:
    """(1 − cos θ)/θ² = ½ sinc²(θ/2), free of the cancellation in 1 − cos θ."""
    return 0.5 * sinc(0.5 * theta).pow(2)


class SO3(Geometry):
    """Rotations SO(3) = {R ∈ R^{3×3} : RᵀR = I, det R = 1}, of dimension 3.

    A point is a rotation matrix of shape ``[..., 3, 3]``. A tangent vector at R is written in
    ambient form U = R Ω with Ω skew (RᵀU + UᵀR = 0), same shape as the point; ``hat``/``vee``
    convert Ω ↔ ω ∈ R³.

    Metric: ⟨U, V⟩_R = ½ tr(UᵀV), so |R [ω]ₓ| = |ω| and the geodesic distance is the rotation
    angle of RᵀQ, in [0, π]. This is half the metric induced by the Frobenius inner product of
    R^{3×3}; a constant factor changes neither the Levi-Civita connection nor the divergence
    (div v = tr(J P) with P = ``proju``, the Frobenius-orthogonal projection), and only shifts the
    volume by a constant, which ``base_log_prob`` accounts for. ``metric_logdet`` is 0.

    * expmap(R, RΩ) = R exp(Ω) by Rodrigues, R + R (sinc θ Ω + ½ sinc²(θ/2) Ω²), θ = |ω|, with
      the series near θ = 0 and no cancellation in 1 − cos θ;
    * logmap(R, Q) from D = Rᵀ(Q − R) (small when Q ≈ R, so the angle is not lost in the
      rounding of entries of size 1): θ = atan2(|vee D|, 1 + tr D/2). For θ ≤ π/2 the axis is
      vee(D)/|vee D| scaled by θ (series at 0); for θ > π/2 the axis comes from the symmetric
      part (RᵀQ + QᵀR)/2 − cos θ I = (1 − cos θ) a aᵀ, which stays accurate up to θ = π, with
      the sign of a taken from vee D. At θ = π exactly (cut locus: ±a both reach Q) the sign
      makes the largest |aᵢ| positive;
    * projx is the polar projection (nearest rotation in Frobenius norm) via SVD, with the sign
      of the smallest singular direction flipped when det < 0. Its gradient is undefined where
      singular values repeat — in particular *on* SO(3) — so do not differentiate through it.

    Base distribution: the uniform (Haar) measure, sampled from normalised Gaussian quaternions;
    vol(SO(3)) = 8π² in this metric (SO(3) is the 3-sphere of radius 2 modulo ±1), so
    log p = −log 8π².
    """

    point_rule = "RᵀR = I and det R = +1"

    atol = 1e-5
    point_shape = (3, 3)
    dim = 3

    # -- maps --------------------------------------------------------------------------
    @_checked("x", vectors=("u",))
    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return x @ _skew(x.transpose(-1, -2) @ u)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        return 0.5 * (u * (u if v is None else v)).sum((-1, -2))

    def norm(self, x: Tensor, u: Tensor) -> Tensor:
        return safe_norm(u, dim=(-1, -2)) / math.sqrt(2.0)

    @_checked("x", vectors=("u",))
    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        omega = _skew(x.transpose(-1, -2) @ u)
        theta = safe_norm(vee(omega))[..., None, None]
        delta = sinc(theta) * omega + _half_cos_ratio(theta) * (omega @ omega)
        return x + x @ delta

    def _angle_parts(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d = x.transpose(-1, -2) @ (y - x)
        v = vee(d)  # sin θ · axis
        c = 1 + 0.5 * d.diagonal(dim1=-2, dim2=-1).sum(-1)  # cos θ
        return d, v, c

    @_checked("x", "y")
    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        d, v, c = self._angle_parts(x, y)
        n = safe_norm(v)
        theta = torch.atan2(n, c)
        wide = c < 0
        # θ ≤ π/2: ω = (θ / sin θ) vee(D); the argument is made safe on the other branch so
        # that atan_ratio's large values near θ = π never reach a gradient
        ratio = atan_ratio(torch.where(wide, torch.ones_like(n), n),
                           torch.where(wide, torch.ones_like(c), c))
        omega_near = ratio[..., None] * v
        omega_wide = theta[..., None] * self._wide_axis(d, v, c, wide)
        omega = torch.where(wide[..., None], omega_wide, omega_near)
        return x @ hat(omega)

    @staticmethod
    def _wide_axis(d: Tensor, v: Tensor, c: Tensor, wide: Tensor) -> Tensor:
        # (M + Mᵀ)/2 − cos θ I = (1 − cos θ) a aᵀ with M = RᵀQ = I + D
        eye = torch.eye(3, dtype=d.dtype, device=d.device)
        sym = 0.5 * (d + d.transpose(-1, -2)) + (1 - c)[..., None, None] * eye
        denom = torch.where(wide, 1 - c, torch.ones_like(c))[..., None, None]
        aat = sym / denom
        i = aat.diagonal(dim1=-2, dim2=-1).argmax(-1)
        col = torch.gather(aat, -1, i[..., None, None].expand(*aat.shape[:-1], 1)).squeeze(-1)
        # on the wide branch |col| = |aᵢ| ≥ 1/√3; elsewhere substitute a unit vector so that the
        # unused value and its gradient stay finite
        col = torch.where(wide[..., None], col, eye[0].expand_as(col))
        a = col / safe_norm(col, keepdim=True)
        # sign: a·vee(D) = sin θ ≥ 0; where that is 0 (θ = π) make the largest entry positive
        s = (a * v).sum(-1)
        lead = torch.gather(a, -1, a.abs().argmax(-1, keepdim=True)).squeeze(-1)
        sign = torch.where(s != 0, torch.sign(s), torch.sign(lead))
        return sign[..., None] * a

    @_checked("x", "y")
    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        _, v, c = self._angle_parts(x, y)
        return torch.atan2(safe_norm(v), c)

    def projx(self, x: Tensor) -> Tensor:
        u, _, vh = torch.linalg.svd(x)
        det = torch.linalg.det(u @ vh)
        flip = torch.ones_like(x[..., 0, :])
        flip[..., 2] = torch.sign(det) + (det == 0).to(x.dtype)
        return (u * flip[..., None, :]) @ vh

    # -- base distribution -------------------------------------------------------------
    log_volume = math.log(8 * math.pi**2)

    def sample_base(self, shape, *, generator=None, dtype=None, device=None) -> Tensor:
        """Haar-uniform rotations from uniform unit quaternions (a normalised Gaussian in R⁴)."""
        q = torch.randn((*_as_shape(shape), 4), generator=generator, dtype=dtype, device=device)
        return quaternion_to_matrix(q / torch.linalg.vector_norm(q, dim=-1, keepdim=True))

    def base_log_prob(self, x: Tensor) -> Tensor:
        return torch.full(x.shape[:-2], -self.log_volume, dtype=x.dtype, device=x.device)

    # -- validation --------------------------------------------------------------------
    def point_error(self, x: Tensor) -> Tensor:
        eye = torch.eye(3, dtype=x.dtype, device=x.device)
        orth = (x.transpose(-1, -2) @ x - eye).abs().amax((-1, -2))
        return torch.maximum(orth, (torch.linalg.det(x) - 1).abs())

    def __repr__(self) -> str:
        return "SO3()"


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrix of the unit quaternion q = (w, x, y, z), shape [..., 4] → [..., 3, 3]."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)

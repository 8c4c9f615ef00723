"""Schedulers: the coefficients of an affine probability path x_t = α_t x1 + σ_t x0.

Time runs from t = 0 (noise, x0) to t = 1 (data, x1). A scheduler maps t (any shape) to α_t,
σ_t and their time derivatives. Convex schedulers (α_t = κ_t, σ_t = 1 − κ_t) also drive
geodesic paths (x_t = exp_{x1}((1 − κ_t) log_{x1} x0)) and discrete mixture paths
(p_t = κ_t δ_{x1} + (1 − κ_t) δ_{x0}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SchedulerOutput:
    """α_t, σ_t and their derivatives dα_t/dt, dσ_t/dt (all of the shape of t)."""

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor


class Scheduler:
    """Base class: subclasses implement ``__call__`` and ``snr_inverse``."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        raise NotImplementedError

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio α_t / σ_t (increasing in t)."""
        out = self(t)
        return out.alpha_t / out.sigma_t

    def snr_inverse(self, snr: Tensor) -> Tensor:
        """The time t whose α_t / σ_t equals ``snr`` (used to change schedulers at sampling)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form SNR inverse")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ConvexScheduler(Scheduler):
    """α_t = κ_t and σ_t = 1 − κ_t for an increasing κ with κ_0 = 0, κ_1 = 1."""

    def kappa(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_kappa(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def kappa_inverse(self, kappa: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form κ inverse")

    def jump_step(self, space, options=None, *, generator=None, checked=True, factor=None):
        """The τ-leaping step of the mixture path with this κ (a bare scheduler stands for
        ``MixtureDiscretePath(self)``; see :meth:`MixtureDiscretePath.jump_step`)."""
        from flowmatch.paths.mixture import MixtureDiscretePath

        return MixtureDiscretePath(self).jump_step(space, options, generator=generator,
                                                   checked=checked, factor=factor)

    def __call__(self, t: Tensor) -> SchedulerOutput:
        k, dk = self.kappa(t), self.d_kappa(t)
        return SchedulerOutput(alpha_t=k, sigma_t=1 - k, d_alpha_t=dk, d_sigma_t=-dk)

    def snr_inverse(self, snr: Tensor) -> Tensor:
        return self.kappa_inverse(snr / (1 + snr))


class CondOTScheduler(ConvexScheduler):
    """Straight lines (conditional optimal transport): κ_t = t."""

    def kappa(self, t):
        return t

    def d_kappa(self, t):
        return torch.ones_like(t)

    def kappa_inverse(self, kappa):
        return kappa


class PolynomialScheduler(ConvexScheduler):
    """κ_t = tⁿ for n > 0 (n = 1 is CondOT)."""

    def __init__(self, n: float) -> None:
        if not n > 0:
            raise ValueError(f"the polynomial exponent n must be positive, got {n}")
        self.n = float(n)

    def kappa(self, t):
        return t.pow(self.n)

    def d_kappa(self, t):
        return self.n * t.pow(self.n - 1) if self.n != 1 else torch.ones_like(t)

    def kappa_inverse(self, kappa):
        return kappa.pow(1 / self.n)

    def __repr__(self):
        return f"PolynomialScheduler(n={self.n:g})"


class CosineConvexScheduler(ConvexScheduler):
    """κ_t = sin²(πt/2) = (1 − cos πt)/2: slow at both ends (a convex cosine schedule).

    Unlike :class:`CosineScheduler` (α² + σ² = 1), this one is convex (α + σ = 1), so it drives
    mixture (discrete) and geodesic paths.
    """

    def kappa(self, t):
        return torch.sin(0.5 * math.pi * t).pow(2)

    def d_kappa(self, t):
        return 0.5 * math.pi * torch.sin(math.pi * t)

    def kappa_inverse(self, kappa):
        return torch.asin(kappa.clamp(0, 1).sqrt()) * (2 / math.pi)


class CosineScheduler(Scheduler):
    """α_t = sin(πt/2), σ_t = cos(πt/2) (variance preserving: α² + σ² = 1)."""

    def __call__(self, t):
        a = 0.5 * math.pi
        return SchedulerOutput(
            alpha_t=torch.sin(a * t), sigma_t=torch.cos(a * t),
            d_alpha_t=a * torch.cos(a * t), d_sigma_t=-a * torch.sin(a * t),
        )

    def snr_inverse(self, snr):
        return torch.atan(snr) * (2 / math.pi)


class LinearVPScheduler(Scheduler):
    """α_t = t, σ_t = √(1 − t²)."""

    def __call__(self, t):
        s = (1 - t.pow(2)).clamp_min(0).sqrt()
        return SchedulerOutput(alpha_t=t, sigma_t=s, d_alpha_t=torch.ones_like(t),
                               d_sigma_t=-t / s)

    def snr_inverse(self, snr):
        return snr / (1 + snr.pow(2)).sqrt()


class VPScheduler(Scheduler):
    """Variance-preserving SDE schedule of score-based models (Song et al. 2021) on t ∈ [0, 1].

    With s = 1 − t and T(t) = ½ s² (β_max − β_min) + s β_min: α_t = exp(−T/2), σ_t = √(1 − α_t²).
    σ̇ diverges at t = 1 (σ = 0); samplers never evaluate the field there.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 ≤ beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _T(self, t):
        s = 1 - t
        return 0.5 * s.pow(2) * (self.beta_max - self.beta_min) + s * self.beta_min

    def __call__(self, t):
        s = 1 - t
        T = self._T(t)
        dT = -(s * (self.beta_max - self.beta_min) + self.beta_min)
        alpha = torch.exp(-0.5 * T)
        sigma = (-torch.expm1(-T)).clamp_min(0).sqrt()
        d_alpha = -0.5 * dT * alpha
        d_sigma = 0.5 * dT * alpha.pow(2) / sigma
        return SchedulerOutput(alpha_t=alpha, sigma_t=sigma, d_alpha_t=d_alpha,
                               d_sigma_t=d_sigma)

    def snr_inverse(self, snr):
        T = torch.log1p(snr.pow(-2))  # α² = snr²/(1+snr²) → T = −log α²
        a, b = self.beta_max - self.beta_min, self.beta_min
        s = (2 * T) / (b + (b * b + 2 * a * T).sqrt())  # root of ½ a s² + b s − T = 0, stable form
        return 1 - s

    def __repr__(self):
        return f"VPScheduler(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"

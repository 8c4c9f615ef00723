"""Affine (Gaussian) probability paths x_t = α_t x1 + σ_t x0 and prediction conversions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowmatch._validation import check_finite, check_same_shape, check_time, expand_time_like
from flowmatch.paths.base import PathSample, ProbPath
from flowmatch.paths.schedulers import CondOTScheduler, Scheduler


class AffinePath(ProbPath):
    """x_t = α_t x1 + σ_t x0 with velocity dx_t = α̇_t x1 + σ̇_t x0.

    ``t`` has shape [B] (one time per sample) and is aligned with the leading dimension of the
    data, whatever the data's shape ([B, D], [B, C, H, W], [B, C, T, H, W], …).

    The conversions below turn a prediction of one kind into another at (x_t, t); they are exact
    algebra on the affine relation and follow from
        u = (σ̇/σ) x_t + (α̇ − σ̇ α/σ) x̂1 = (α̇/α) x_t + (σ̇ − α̇ σ/α) x̂0.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        if not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a Scheduler, got {type(scheduler).__name__}")
        self.scheduler = scheduler

    def _coeffs(self, t: Tensor, x: Tensor):
        s = self.scheduler(expand_time_like(t, x))
        return s.alpha_t, s.sigma_t, s.d_alpha_t, s.d_sigma_t

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        check_same_shape("x0", x0, "x1", x1)
        check_finite("x0", x0)
        check_finite("x1", x1)
        check_time("t", t, batch_size=x1.shape[0])
        if t.dim() == 0 or t.shape[0] != x1.shape[0]:
            t = t.reshape(-1).expand(x1.shape[0])
        a, s, da, ds = self._coeffs(t, x1)
        return PathSample(x0=x0, x1=x1, t=t, x_t=a * x1 + s * x0, dx_t=da * x1 + ds * x0)

    # -- conversions between parametrisations -------------------------------------------
    def x1_to_velocity(self, x1: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, da, ds = self._coeffs(t, x_t)
        return (ds / s) * x_t + (da - ds * a / s) * x1

    def x0_to_velocity(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, da, ds = self._coeffs(t, x_t)
        return (da / a) * x_t + (ds - da * s / a) * x0

    def velocity_to_x1(self, velocity: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, da, ds = self._coeffs(t, x_t)
        return (s * velocity - ds * x_t) / (da * s - ds * a)

    def velocity_to_x0(self, velocity: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, da, ds = self._coeffs(t, x_t)
        return (a * velocity - da * x_t) / (ds * a - da * s)

    def x1_to_x0(self, x1: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, _, _ = self._coeffs(t, x_t)
        return (x_t - a * x1) / s

    def x0_to_x1(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, _, _ = self._coeffs(t, x_t)
        return (x_t - s * x0) / a

    # ε-prediction is x0-prediction when the source is N(0, I)
    epsilon_to_velocity = x0_to_velocity
    velocity_to_epsilon = velocity_to_x0

    def score_from_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """∇ log p_t(x_t) = −x̂0 / σ_t for a N(0, I) source."""
        _, s, _, _ = self._coeffs(t, x_t)
        return -x0 / s

    # -- conditional density and velocity given x1 (for marginal targets) ------------------
    def _pair_coeffs(self, x_t: Tensor, t: Tensor):
        # t carries the batch dimensions of the pair table; the rest of x_t is the point
        k = x_t.dim() - t.dim()
        if k < 0:
            raise ValueError(f"t (shape {tuple(t.shape)}) has more dimensions than x_t "
                             f"(shape {tuple(x_t.shape)})")
        out = self.scheduler(t.to(x_t.dtype).reshape(*t.shape, *([1] * k)))
        return k, out.alpha_t, out.sigma_t, out.d_alpha_t, out.d_sigma_t

    def conditional_log_prob(self, x_t: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """log p_t(x_t | x1) = log N(x_t; α_t x1, σ_t² I) for a N(0, I) source, shape [...].

        ``x_t`` and ``x1`` ([..., *point_shape]) and ``t`` ([...]) broadcast together; the
        trailing ``x_t.dim() − t.dim()`` dimensions are the point.
        """
        k, a, s, _, _ = self._pair_coeffs(x_t, t)
        z = (x_t - a * x1) / s
        sq = z.pow(2).flatten(z.dim() - k).sum(-1) if k else z.pow(2)
        d = math.prod(z.shape[z.dim() - k:]) if k else 1
        log_sigma = torch.log(s.reshape(s.shape[: s.dim() - k]) if k else s)
        return -0.5 * sq - d * (log_sigma + 0.5 * math.log(2 * math.pi))

    def conditional_velocity(self, x_t: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """u_t(x_t | x1) = (σ̇/σ) x_t + (α̇ − σ̇ α/σ) x1, broadcast as in conditional_log_prob."""
        _, a, s, da, ds = self._pair_coeffs(x_t, t)
        return (ds / s) * x_t + (da - ds * a / s) * x1

    def __repr__(self) -> str:
        return f"AffinePath({self.scheduler!r})"


class CondOTPath(AffinePath):
    """The straight-line path x_t = t x1 + (1 − t) x0 (rectified flow / conditional OT)."""

    def __init__(self) -> None:
        super().__init__(CondOTScheduler())

"""Change the scheduler of a trained affine flow at sampling time (SNR matching).

A velocity field trained on x_t = α_t x1 + σ_t x0 with a Gaussian source defines, for any other
scheduler (ᾱ_r, σ̄_r), the velocity of the path x̄_r = ᾱ_r x1 + σ̄_r x0 without retraining:
x̄_r = s_r x_{t_r}, where t_r has the same signal-to-noise ratio (α/σ)(t_r) = (ᾱ/σ̄)(r) and
s_r = σ̄_r / σ_{t_r} = ᾱ_r / α_{t_r}. Differentiating,

    ū_r(x̄) = (ṡ_r / s_r) x̄ + s_r ṫ_r u_{t_r}(x̄ / s_r).

The marginals at r and t_r agree up to the scale s_r, and at r = 1 the samples are the same
(Lipman et al., "Flow Matching Guide and Code", 2024, §4.8 state the same construction).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowmatch._validation import expand_time_like
from flowmatch.paths.schedulers import Scheduler


class ScheduleTransformedField(nn.Module):
    """Wrap ``field`` (trained with ``original``) as a velocity field for ``new``.

    ``field(x, t, **cond)`` takes t of shape [B]; so does this module. Both schedulers need
    ``snr`` and the original one ``snr_inverse``.
    """

    def __init__(self, field: Any, original: Scheduler, new: Scheduler) -> None:
        super().__init__()
        if not isinstance(original, Scheduler) or not isinstance(new, Scheduler):
            raise TypeError("original and new must be Scheduler instances")
        self.field = field
        self.original = original
        self.new = new

    def time_and_scale(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """t_r and s_r for new-scheduler times r (any shape)."""
        new = self.new(r)
        t = self.original.snr_inverse(new.alpha_t / new.sigma_t).clamp(0.0, 1.0)
        old = self.original(t)
        # σ̄/σ and ᾱ/α are equal by construction; take the ratio with the larger denominator so
        # neither end (σ → 0 at data, α → 0 at noise) divides by zero
        use_alpha = old.alpha_t.abs() >= old.sigma_t.abs()
        num = torch.where(use_alpha, new.alpha_t, new.sigma_t)
        den = torch.where(use_alpha, old.alpha_t, old.sigma_t)
        return t, num / den

    def forward(self, x: Tensor, r: Tensor, **cond: Any) -> Tensor:
        (t, s), (dt, ds) = torch.func.jvp(self.time_and_scale, (r,), (torch.ones_like(r),))
        s_x, ds_x, dt_x = (expand_time_like(v, x) for v in (s, ds, dt))
        u = self.field(x / s_x, t, **cond)
        return (ds_x / s_x) * x + s_x * dt_x * u

    def __repr__(self) -> str:
        return f"ScheduleTransformedField({self.original!r} → {self.new!r})"

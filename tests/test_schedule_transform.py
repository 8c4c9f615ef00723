"""Changing the scheduler at sampling time reproduces the new scheduler's marginal velocity."""

from __future__ import annotations

import pytest
import torch

from flowmatch.paths import (
    CondOTScheduler,
    CosineScheduler,
    LinearVPScheduler,
    PolynomialScheduler,
    VPScheduler,
)
from flowmatch.paths.schedule_transform import ScheduleTransformedField

MU = torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64)
S = 0.4


def gaussian_marginal_velocity(scheduler):
    """Exact marginal velocity for x0 ~ N(0, I), x1 ~ N(μ, S² I) under ``scheduler``.

    x_t ~ N(α μ, (σ² + α² S²) I), so u_t(x) = α̇ μ + (d/dt log std_t) (x − α μ).
    """

    def field(x, t):
        o = scheduler(t[:, None])
        var = o.sigma_t**2 + o.alpha_t**2 * S**2
        dvar = 2 * o.sigma_t * o.d_sigma_t + 2 * o.alpha_t * o.d_alpha_t * S**2
        return o.d_alpha_t * MU + 0.5 * dvar / var * (x - o.alpha_t * MU)

    return field


PAIRS = [
    (CondOTScheduler(), CosineScheduler()),
    (CosineScheduler(), CondOTScheduler()),
    (CondOTScheduler(), PolynomialScheduler(2.0)),
    (LinearVPScheduler(), CondOTScheduler()),
    (CondOTScheduler(), LinearVPScheduler()),
]


@pytest.mark.parametrize("original, new", PAIRS, ids=lambda s: repr(s))
def test_transformed_field_equals_new_marginal_velocity(original, new):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64) * 2
    r = torch.rand(64, generator=g, dtype=torch.float64) * 0.96 + 0.02
    transformed = ScheduleTransformedField(gaussian_marginal_velocity(original), original, new)
    expected = gaussian_marginal_velocity(new)(x, r)
    torch.testing.assert_close(transformed(x, r), expected, rtol=1e-8, atol=1e-8)


def test_vp_to_condot_matches_on_the_interior():
    # VP's α_0 > 0, so only the r whose SNR VP reaches map to a valid t; check those
    original, new = VPScheduler(), CondOTScheduler()
    r = torch.linspace(0.3, 0.95, 14, dtype=torch.float64)
    x = torch.randn(14, 3, dtype=torch.float64)
    transformed = ScheduleTransformedField(gaussian_marginal_velocity(original), original, new)
    torch.testing.assert_close(transformed(x, r), gaussian_marginal_velocity(new)(x, r),
                               rtol=1e-7, atol=1e-7)


def test_scale_is_finite_at_both_ends():
    tf = ScheduleTransformedField(lambda x, t: x, CondOTScheduler(), CosineScheduler())
    t, s = tf.time_and_scale(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(t, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert bool(torch.isfinite(s).all())


def test_misspelled_condition_is_not_swallowed():
    def field(x, t, *, label):
        return x

    tf = ScheduleTransformedField(field, CondOTScheduler(), CosineScheduler())
    with pytest.raises(TypeError):
        tf(torch.randn(2, 3), torch.rand(2), lable=1)

"""Schedulers: derivatives, boundary values and SNR inverses."""

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

SCHEDULERS = [
    CondOTScheduler(),
    PolynomialScheduler(0.5),
    PolynomialScheduler(3.0),
    CosineScheduler(),
    LinearVPScheduler(),
    VPScheduler(),
    VPScheduler(beta_min=0.5, beta_max=5.0),
]


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=repr)
def test_derivatives_match_autograd(scheduler):
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64, requires_grad=True)
    out = scheduler(t)
    (da,) = torch.autograd.grad(out.alpha_t.sum(), t, retain_graph=True)
    (ds,) = torch.autograd.grad(out.sigma_t.sum(), t)
    torch.testing.assert_close(out.d_alpha_t, da, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.d_sigma_t, ds, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=repr)
def test_snr_inverse_inverts_snr(scheduler):
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    torch.testing.assert_close(scheduler.snr_inverse(scheduler.snr(t)), t, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=repr)
def test_endpoints_noise_to_data(scheduler):
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = scheduler(t)
    if isinstance(scheduler, VPScheduler):
        # VP never reaches pure noise: α_0 = exp(−(β_min + β_max)/4)
        expected = torch.tensor(-(scheduler.beta_min + scheduler.beta_max) / 4).exp()
        torch.testing.assert_close(out.alpha_t[0], expected.double())
    else:
        torch.testing.assert_close(out.alpha_t[0], torch.tensor(0.0, dtype=torch.float64))
        torch.testing.assert_close(out.sigma_t[0], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(out.alpha_t[1], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(out.sigma_t[1], torch.tensor(0.0, dtype=torch.float64))


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=repr)
def test_snr_is_increasing(scheduler):
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    assert bool((scheduler.snr(t).diff() > 0).all())


def test_polynomial_rejects_nonpositive_exponent():
    with pytest.raises(ValueError, match="exponent"):
        PolynomialScheduler(0.0)


def test_vp_rejects_bad_betas():
    with pytest.raises(ValueError, match="beta_min"):
        VPScheduler(beta_min=2.0, beta_max=1.0)

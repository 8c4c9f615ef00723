"""Video plugin: time conventions, shift, schedule builder, training-time t and loss weights."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowmatch.plugins.video import conventions as cv
from flowmatch.plugins.video import timesteps as ts


# -- conventions -----------------------------------------------------------------------------
def test_conventions_describe_the_same_path():
    # x_σ (diffusers) at σ = 1 − t equals x_t (flowmatch), and an Euler step in σ with v equals
    # an Euler step in t with u = −v.
    g = torch.Generator().manual_seed(0)
    data, eps = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    t = torch.tensor(0.3)
    sigma = cv.t_to_sigma(t)
    x_flow = t * data + (1 - t) * eps
    x_diff = (1 - sigma) * data + sigma * eps
    torch.testing.assert_close(x_flow, x_diff)
    u, v = data - eps, eps - data
    torch.testing.assert_close(cv.diffusers_to_velocity(v), u)
    torch.testing.assert_close(cv.velocity_to_diffusers(u), v)
    t_next = torch.tensor(0.5)
    step_t = x_flow + (t_next - t) * u
    step_sigma = x_diff + (cv.t_to_sigma(t_next) - sigma) * v
    torch.testing.assert_close(step_t, step_sigma)
    assert cv.t_to_diffusers_timestep(0.25) == pytest.approx(750.0)
    assert cv.diffusers_timestep_to_t(750.0) == pytest.approx(0.25)
    assert cv.sigma_to_t(cv.t_to_sigma(0.2)) == pytest.approx(0.2)


def test_frame_time_like_shapes_and_errors():
    x = torch.zeros(2, 3, 5, 4, 4)
    assert cv.frame_time_like(torch.rand(2), x).shape == (2, 1, 1, 1, 1)
    tf = torch.rand(2, 5)
    out = cv.frame_time_like(tf, x)
    assert out.shape == (2, 1, 5, 1, 1)
    torch.testing.assert_close(out[1, 0, 3, 0, 0], tf[1, 3])  # frame axis, not channel axis
    with pytest.raises(ValueError, match="5 frames|T = 5"):
        cv.frame_time_like(torch.rand(2, 4), x)
    with pytest.raises(ValueError, match="batch size"):
        cv.frame_time_like(torch.rand(3, 5), x)
    with pytest.raises(ValueError, match="5 dims"):
        cv.check_video("x", torch.zeros(2, 3, 4, 4))


# -- shift -----------------------------------------------------------------------------------
def test_single_shift_reference_value():
    # shift 3, 28 steps: the last nonzero σ is 3·0.001/(1 + 2·0.001) = 0.002994
    sig = ts.flow_sigmas(28, shift=3.0)
    assert sig.shape == (29,)
    assert float(sig[0]) == 1.0 and float(sig[-1]) == 0.0
    assert float(sig[-2]) == pytest.approx(3 * 0.001 / (1 + 2 * 0.001), rel=1e-12)
    assert round(float(sig[-2]), 6) == 0.002994
    assert bool((sig[1:] < sig[:-1]).all())
    # flowmatch time runs the other way
    torch.testing.assert_close(ts.flow_time_grid(28, shift=3.0), 1 - sig)


def test_double_shift_reproduction_and_diffusers():
    dbl = ts.diffusers_double_shift_sigmas(28, 3.0)
    assert float(dbl[-2]) == pytest.approx(0.0089286, abs=2e-6)  # 0.00893, not 0.002994
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sch.set_timesteps(28)
    torch.testing.assert_close(sch.sigmas.double(), dbl, atol=1e-6, rtol=0)
    # passing the unshifted linear sigmas gives the single-shift schedule
    sch.set_timesteps(sigmas=torch.linspace(1, 1 / 1000, 28).tolist())
    torch.testing.assert_close(sch.sigmas.double(), ts.flow_sigmas(28, shift=3.0), atol=1e-6,
                               rtol=0)


@given(sigma=st.floats(0, 1), s=st.floats(0.05, 20), r=st.floats(0.05, 20))
@settings(max_examples=60, deadline=None)
def test_shift_is_a_group(sigma, s, r):
    x = torch.tensor(sigma, dtype=torch.float64)
    # shifts compose multiplicatively and 1/s undoes s
    torch.testing.assert_close(ts.shift_sigma(ts.shift_sigma(x, s), r), ts.shift_sigma(x, s * r))
    torch.testing.assert_close(ts.shift_sigma(ts.shift_sigma(x, s), 1 / s), x)
    # written in t it is the same map
    torch.testing.assert_close(ts.shift_t(1 - x, s), 1 - ts.shift_sigma(x, s))
    # exponential dynamic shift e^μ/(e^μ + 1/σ − 1) is the static shift with s = e^μ
    if 0 < sigma:
        mu = math.log(s)
        expo = math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))
        assert float(ts.shift_sigma(x, ts.resolve_shift(mu=mu))) == pytest.approx(expo, rel=1e-9)


def test_shift_moves_steps_towards_noise():
    base = ts.flow_sigmas(10)
    shifted = ts.flow_sigmas(10, shift=5.0)
    assert bool((shifted[1:-1] > base[1:-1]).all())
    assert bool((ts.flow_sigmas(10, shift=0.5)[1:-1] < base[1:-1]).all())


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_nonpositive_shift_raises(bad):
    with pytest.raises(ValueError, match="shift must be a finite number > 0"):
        ts.flow_sigmas(10, shift=bad)
    with pytest.raises(ValueError, match="shift"):
        ts.shift_sigma(torch.tensor(0.5), bad)


def test_schedule_arguments_checked():
    with pytest.raises(ValueError, match="num_steps"):
        ts.flow_sigmas(0)
    with pytest.raises(ValueError, match="sigma_min"):
        ts.flow_sigmas(5, sigma_min=0.5, sigma_max=0.4)
    with pytest.raises(ValueError, match="not both"):
        ts.flow_sigmas(5, shift=2.0, mu=0.3)


def test_terminal_stretch_hits_terminal_and_keeps_start():
    sig = ts.flow_sigmas(20, mu=ts.linear_mu(2048, base_seq_len=1024, max_seq_len=4096,
                                             base_shift=0.95, max_shift=2.05), terminal=0.1)
    assert float(sig[0]) == pytest.approx(1.0)
    assert float(sig[-2]) == pytest.approx(0.1, rel=1e-12)
    assert bool((sig[1:] < sig[:-1]).all())


def test_linear_mu_interpolates_and_token_count():
    kw = dict(base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15)
    assert ts.linear_mu(256, **kw) == pytest.approx(0.5)
    assert ts.linear_mu(4096, **kw) == pytest.approx(1.15)
    assert ts.linear_mu(2176, **kw) == pytest.approx(0.825)
    assert ts.token_count((16, 21, 60, 104), (1, 2, 2)) == 21 * 30 * 52
    assert ts.token_count((2, 16, 5, 7, 7), (1, 2, 2)) == 5 * 4 * 4


def test_auto_shift_from_token_count_with_override():
    # Wan-like latent [16, 21, 60, 104] with 1×2×2 patches: 32760 tokens
    lat = (16, 21, 60, 104)
    tokens = 21 * 30 * 52
    kw = dict(base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15)
    assert ts.auto_shift(lat, patch_size=(1, 2, 2), **kw) == pytest.approx(
        math.exp(ts.linear_mu(tokens, **kw)))
    assert ts.auto_shift(lat, patch_size=(1, 2, 2), rule="opensora_v2") == pytest.approx(
        ts.opensora_v2_shift(30 * 52, 21))
    # more frames → larger shift; an explicit shift wins and is still checked
    assert ts.auto_shift((16, 41, 60, 104), patch_size=(1, 2, 2), rule="opensora_v2") > \
        ts.auto_shift(lat, patch_size=(1, 2, 2), rule="opensora_v2")
    assert ts.auto_shift(lat, shift=5.0) == 5.0
    with pytest.raises(ValueError, match="shift must be a finite number > 0"):
        ts.auto_shift(lat, shift=-1.0)
    with pytest.raises(ValueError, match="rule"):
        ts.auto_shift(lat, rule="sqrt")


def test_opensora_shifts():
    # 512² pixels and 17 frames: √1·√5
    assert ts.opensora_v12_shift(512, 512, 17) == pytest.approx(math.sqrt(5))
    assert ts.opensora_v12_shift(256, 256, 1) == pytest.approx(0.5)
    # Open-Sora 2.0: lin(seq_len; 256 → 1, 4096 → 3)·√T_latent
    assert ts.opensora_v2_shift(256, 4) == pytest.approx(2.0)
    assert ts.opensora_v2_shift(4096, 9) == pytest.approx(9.0)
    with pytest.raises(ValueError, match="positive"):
        ts.opensora_v12_shift(0, 512, 17)


# -- training t --------------------------------------------------------------------------------
def test_training_t_distributions():
    g = torch.Generator().manual_seed(1)
    n = 200_000
    u = ts.sample_training_t(n, generator=g)
    assert u.shape == (n,) and 0 <= float(u.min()) and float(u.max()) <= 1
    # uniform: mean 1/2, variance 1/12 (standard errors 6.5e-4, 2e-4)
    assert float(u.mean()) == pytest.approx(0.5, abs=4e-3)
    assert float(u.var()) == pytest.approx(1 / 12, abs=2e-3)
    # logit-normal: logit(σ) is N(loc, scale²), σ = 1 − t
    t = ts.sample_training_t(n, method="logit_normal", loc=0.5, scale=0.8, generator=g,
                             dtype=torch.float64)
    z = torch.logit(1 - t)
    assert float(z.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(z.std()) == pytest.approx(0.8, abs=0.01)
    # mode with c = 0 is the identity map of a uniform variable
    m0 = ts.sample_training_t(n, method="mode", mode_scale=0.0, generator=g)
    assert float(m0.mean()) == pytest.approx(0.5, abs=4e-3)
    # SD3's c = 1.29 piles mass in the middle: variance below the uniform's 1/12
    m = ts.sample_training_t(n, method="mode", mode_scale=1.29, generator=g)
    assert float(m.var()) < 1 / 12 - 0.01


def test_training_t_per_frame_and_shift():
    g = torch.Generator().manual_seed(2)
    shared = ts.sample_training_t(64, num_frames=5, generator=g)
    assert shared.shape == (64, 5)
    assert bool((shared == shared[:, :1]).all())
    indep = ts.sample_training_t(64, num_frames=5, independent_frames=True, generator=g)
    assert indep.shape == (64, 5)
    assert float((indep - indep[:, :1]).abs().max()) > 0.1
    # shift s on σ: P(σ' ≤ 1/2) = P(σ ≤ 1/(1+s)) = 1/(1+s) for uniform σ
    t = ts.sample_training_t(100_000, shift=3.0, generator=g)
    assert float(((1 - t) <= 0.5).float().mean()) == pytest.approx(0.25, abs=0.006)
    with pytest.raises(ValueError, match="method"):
        ts.sample_training_t(4, method="beta")
    with pytest.raises(ValueError, match="mode_scale"):
        ts.sample_training_t(4, method="mode", mode_scale=3.0)


def test_loss_weights():
    t = torch.tensor([0.0, 0.25, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(ts.loss_weight(t, "none"), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(ts.loss_weight(t, "sigma_sqrt"), (1 - t) ** -2)
    # cosmap is a probability density in σ: it integrates to 1 over [0, 1]
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    integral = torch.trapezoid(ts.loss_weight(grid, "cosmap"), grid)
    assert float(integral) == pytest.approx(1.0, abs=1e-8)
    with pytest.raises(ValueError, match="infinite at t = 1"):
        ts.loss_weight(torch.tensor([1.0]), "sigma_sqrt")
    with pytest.raises(ValueError, match="kind"):
        ts.loss_weight(t, "snr")

"""Diffusion models as flow velocity fields: exact ε/v models of a Gaussian video."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowmatch.paths import VPScheduler
from flowmatch.plugins.video import DiffusionAsFlow, GaussianVideo, ddpm_alphas_cumprod
from flowmatch.plugins.video.samplers import sample_video

F64 = torch.float64
GV = GaussianVideo(6, rho=0.8, var=1.5, mean=0.6)


def _exact_eps(x, a, s):
    """E[ε | a·x1 + s·ε = x] for x1 ~ N(μ, Σ) over frames: s (a²Σ + s²I)⁻¹ (x − aμ)."""
    a5 = a.reshape(-1, 1, 1, 1, 1)
    lam, V = torch.linalg.eigh(GV.cov)
    ab = a.reshape(-1, 1) * torch.ones(x.shape[0], 1, dtype=F64)
    sb = s.reshape(-1, 1) * torch.ones(x.shape[0], 1, dtype=F64)
    g = sb / (ab**2 * lam + sb**2)  # [B, T]
    M = torch.einsum("st,bt,ut->bsu", V, g, V)
    return torch.einsum("bst,bcthw->bcshw", M, x - a5 * GV.mu[:, None, None])


def _vp_model(prediction):
    """An exact continuous-VP network: called with the core VP time τ (0 = noise)."""
    vp = VPScheduler()

    def model(x, tau):
        out = vp(tau.to(F64))
        a, s = out.alpha_t, out.sigma_t
        eps = _exact_eps(x.to(F64), a, s)
        if prediction == "epsilon":
            return eps
        x1 = (x - s.reshape(-1, 1, 1, 1, 1) * eps) / a.reshape(-1, 1, 1, 1, 1)
        return a.reshape(-1, 1, 1, 1, 1) * eps - s.reshape(-1, 1, 1, 1, 1) * x1

    return model


def _ddpm_model(alphas_cumprod, prediction):
    """An exact discrete-DDPM network; between integer steps its schedule is the log-SNR
    interpolation (np.interp, an implementation independent of the adapter's)."""
    log_snr = np.log(alphas_cumprod.numpy()) - np.log1p(-alphas_cumprod.numpy())

    def model(x, k):
        ls = torch.as_tensor(np.interp(k.numpy(), np.arange(len(log_snr)), log_snr), dtype=F64)
        a, s = torch.sigmoid(ls).sqrt(), torch.sigmoid(-ls).sqrt()
        eps = _exact_eps(x.to(F64), a, s)
        if prediction == "epsilon":
            return eps
        a5, s5 = a.reshape(-1, 1, 1, 1, 1), s.reshape(-1, 1, 1, 1, 1)
        return a5 * eps - s5 * (x - s5 * eps) / a5

    return model


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_continuous_vp_adapter_is_the_exact_flow_velocity(prediction):
    adapter = DiffusionAsFlow(_vp_model(prediction), prediction=prediction,
                              scheduler=VPScheduler())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 6, 1, 1, generator=g, dtype=F64)
    t = torch.linspace(adapter.t_min + 1e-6, 0.995, 16, dtype=F64)
    torch.testing.assert_close(adapter(x, t), GV.velocity(x, t), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddpm_adapter_sampled_with_the_flow_ode_reproduces_the_gaussian(prediction):
    ac = ddpm_alphas_cumprod()  # SD's scaled-linear betas
    adapter = DiffusionAsFlow(_ddpm_model(ac, prediction), prediction=prediction,
                              alphas_cumprod=ac)
    # the σ_RF range such a model covers (the notes: [0.028, 0.936])
    assert adapter.sigma_rf_max == pytest.approx(0.936, abs=1e-3)
    t_lo, t_hi = adapter.t_min, 1 - 0.0284
    g = torch.Generator().manual_seed(1)
    n = 3000
    x1 = GV.sample(n, generator=g)
    x = t_lo * x1 + (1 - t_lo) * torch.randn(x1.shape, generator=g, dtype=F64)
    grid = torch.linspace(t_lo, t_hi, 41, dtype=F64)
    x0 = x.clone()
    out = sample_video(adapter, x, method="heun", time_grid=grid)
    # deterministic: the same start under the exact flow field gives the same end
    ref = sample_video(GV.velocity, x0, method="heun", time_grid=grid)
    assert float((out - ref).abs().max()) < 1e-6
    # statistical: the end law is the path marginal N(tμ, t²Σ + (1 − t)²I) at t_hi
    # (3000 clips: SE of a mean ≈ 0.022, of a covariance entry ≈ 0.04)
    series = out[:, 0, :, 0, 0]
    cov = t_hi**2 * GV.cov + (1 - t_hi) ** 2 * torch.eye(6, dtype=F64)
    assert float((series.mean(0) - t_hi * 0.6).abs().max()) < 0.1
    assert float((torch.cov(series.T) - cov).abs().max()) < 0.2


def test_range_guard_and_clamp():
    ac = ddpm_alphas_cumprod()
    adapter = DiffusionAsFlow(_ddpm_model(ac, "epsilon"), alphas_cumprod=ac)
    x = torch.zeros(2, 1, 6, 1, 1, dtype=F64)
    with pytest.raises(ValueError, match="start sampling at t_min"):
        adapter(x, torch.tensor([0.0, 0.5], dtype=F64))
    with pytest.raises(ValueError, match="covers"):
        adapter(x, torch.tensor([0.5, 0.99], dtype=F64))
    clamped = DiffusionAsFlow(_ddpm_model(ac, "epsilon"), alphas_cumprod=ac,
                              out_of_range="clamp")
    assert bool(torch.isfinite(clamped(x + 1, torch.tensor([0.01, 0.5], dtype=F64))).all())


def test_guidance_on_eps_equals_guidance_on_velocity():
    # the adapter is affine in the model output, so CFG commutes with it
    vp = VPScheduler()
    cond, uncond = _vp_model("epsilon"), lambda x, tau: 0.3 * _vp_model("epsilon")(x, tau)
    scale = 4.0

    def guided_eps(x, tau):
        e_u = uncond(x, tau)
        return e_u + scale * (cond(x, tau) - e_u)

    a_c = DiffusionAsFlow(cond, scheduler=vp)
    a_u = DiffusionAsFlow(uncond, scheduler=vp)
    a_g = DiffusionAsFlow(guided_eps, scheduler=vp)
    x = torch.randn(5, 1, 6, 1, 1, generator=torch.Generator().manual_seed(2), dtype=F64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=F64)
    u_u = a_u(x, t)
    torch.testing.assert_close(a_g(x, t), u_u + scale * (a_c(x, t) - u_u))


def test_adapter_accepts_per_frame_time():
    adapter = DiffusionAsFlow(lambda x, tau: torch.zeros_like(x), scheduler=VPScheduler())
    x = torch.randn(2, 3, 4, 2, 2)
    t = torch.rand(2, 4) * 0.5 + 0.25
    u = adapter(x, t)
    # ε̂ = 0 → x̂1 = x_diff/a and u = x̂1 = x / (√(t² + (1−t)²)·a) with a = t/√(t² + (1−t)²)
    tt = t[:, None, :, None, None]
    torch.testing.assert_close(u, x / tt)


def test_adapter_arguments_checked():
    with pytest.raises(ValueError, match="exactly one"):
        DiffusionAsFlow(lambda x, k: x)
    with pytest.raises(ValueError, match="decreasing"):
        DiffusionAsFlow(lambda x, k: x, alphas_cumprod=torch.tensor([0.1, 0.5, 0.9]))
    with pytest.raises(ValueError, match="prediction"):
        DiffusionAsFlow(lambda x, k: x, scheduler=VPScheduler(), prediction="x0")

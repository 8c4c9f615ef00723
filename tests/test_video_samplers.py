"""Video samplers on fields with exact answers: straight lines and a Gaussian AR(1) video."""

from __future__ import annotations

import pytest
import torch

from flowmatch.plugins.video import (
    GaussianVideo,
    MultiBranchGuidance,
    VideoSampler,
    flow_time_grid,
    sample_video,
)
from flowmatch.plugins.video.samplers import renoise

SHIFTED_GRID = flow_time_grid(7, shift=3.0)  # deliberately non-uniform
F64 = torch.float64


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint"])
def test_straight_line_field_is_integrated_exactly(method):
    # The conditional field of one pair, u(x, t) = (x1 − x)/(1 − t), is constant (= x1 − x0)
    # along its own path, so every method is exact on any grid — up to, not including, t = 1.
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 5, 5, generator=g, dtype=torch.float64)
    x1 = torch.randn(2, 3, 4, 5, 5, generator=g, dtype=torch.float64)
    grid = SHIFTED_GRID.clone()
    grid[-1] = 0.999  # the heun/midpoint stages must not evaluate 1/(1 − t) at t = 1

    def field(x, t):
        tt = t[:, None, None, None, None]
        return (x1 - x) / (1 - tt)

    out = sample_video(field, x0, method=method, time_grid=grid)
    torch.testing.assert_close(out, 0.999 * x1 + 0.001 * x0, atol=1e-12, rtol=0)


def test_constant_field_run_backwards_recovers_x0():
    # Integrating the data→noise direction with the pair's constant velocity gives x0 exactly:
    # run the time-reversed field on the reversed grid s = 1 − t.
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 6, 4, 4, generator=g, dtype=torch.float64)
    x1 = torch.randn(3, 2, 6, 4, 4, generator=g, dtype=torch.float64)
    back = sample_video(lambda x, s: -(x1 - x0), x1, method="euler",
                        time_grid=1 - SHIFTED_GRID.flip(0))
    torch.testing.assert_close(back, x0, atol=1e-12, rtol=0)


def test_gaussian_video_moments_euler_and_heun():
    # The exact velocity of an AR(1) video pushes N(0, I) to N(μ, Σ), Σ_jk = v ρ^|j−k|.
    # 4000 clips of 8 frames × 4 pixels = 16000 series: standard error of a frame mean
    # ≈ √(v/16000) ≈ 0.011, of a covariance entry ≈ √(2/16000)·v ≈ 0.016 (v = 1.5).
    gv = GaussianVideo(8, rho=0.8, var=1.5, mean=0.7, height=2, width=2)
    x0 = torch.randn(4000, 1, 8, 2, 2, generator=torch.Generator().manual_seed(2),
                     dtype=torch.float64)
    for method, steps in [("euler", 200), ("heun", 20)]:
        x = sample_video(gv.velocity, x0, method=method, num_steps=steps)
        series = x.permute(0, 3, 4, 1, 2).reshape(-1, 8)
        assert float((series.mean(0) - 0.7).abs().max()) < 0.05, method
        cov = torch.cov(series.T)
        assert float((cov - gv.cov).abs().max()) < 0.08, method


@pytest.mark.parametrize("method,order,final_euler", [
    ("euler", 1, True), ("heun", 2, True), ("heun", 2, False), ("midpoint", 2, True)])
def test_convergence_order_against_exact_flow_map(method, order, final_euler):
    # Deterministic: the exact ODE endpoint is μ + Σ^{1/2} ε, so the error is discretisation
    # alone; doubling the steps must divide it by ≈ 2^order (Heun ≈ 4×).
    gv = GaussianVideo(6, rho=0.9, var=2.0, mean=-0.3)
    x0 = torch.randn(64, 1, 6, 1, 1, generator=torch.Generator().manual_seed(3),
                     dtype=torch.float64)
    exact = gv.flow_map(x0)
    errs = []
    for n in (16, 32, 64):
        x = sample_video(gv.velocity, x0, method=method, num_steps=n, final_euler=final_euler)
        errs.append(float((x - exact).abs().max()))
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    for r in ratios:
        assert r > 2**order * 0.8, (method, errs)
        # midpoint's leading error term nearly cancels at t = 1 for this field (measured ratio
        # ≈ 8), so only its lower bound is asserted; Euler and Heun must sit at their order.
        if method != "midpoint":
            assert r < 2**order * 1.25, (method, errs)


def test_per_frame_grid_shared_equals_plain_grid():
    gv = GaussianVideo(5, rho=0.8, var=1.3, mean=0.4)
    x0 = torch.randn(4, 1, 5, 1, 1, generator=torch.Generator().manual_seed(6), dtype=F64)
    grid = flow_time_grid(6, shift=2.0)
    plain = sample_video(gv.velocity, x0, method="heun", time_grid=grid)
    framed = sample_video(gv.velocity, x0, method="heun", time_grid=grid[:, None].expand(7, 5))
    torch.testing.assert_close(framed, plain, atol=1e-12, rtol=0)


def test_rolling_per_frame_schedule_reaches_the_target_law():
    # Frame k runs on its own clock t_k(s) = clamp(1.5 s − 0.5 k/(T − 1), 0, 1): early frames
    # finish first, late ones start late. With the exact per-frame velocity the end law is
    # still N(μ, Σ). 4000 clips × 4 pixels: SE of a mean ≈ 0.009, of a covariance ≈ 0.015.
    T = 6
    gv = GaussianVideo(T, rho=0.85, var=1.2, mean=0.5, height=2, width=2)
    s = torch.linspace(0, 1, 121, dtype=F64)[:, None]
    k = torch.arange(T, dtype=F64)[None, :]
    grid = (1.5 * s - 0.5 * k / (T - 1)).clamp(0, 1)
    assert float(grid[:, 0].max()) == 1 and float(grid[0].max()) == 0
    x0 = torch.randn(4000, 1, T, 2, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    x = sample_video(gv.velocity, x0, method="heun", time_grid=grid)
    series = x.permute(0, 3, 4, 1, 2).reshape(-1, T)
    assert float((series.mean(0) - 0.5).abs().max()) < 0.05
    assert float((torch.cov(series.T) - gv.cov).abs().max()) < 0.07


def test_nfe_counts():
    gv = GaussianVideo(4)
    x0 = torch.randn(2, 1, 4, 1, 1, dtype=torch.float64)
    for method, final_euler, nfe in [("euler", True, 5), ("heun", False, 10),
                                     ("heun", True, 9), ("midpoint", True, 10)]:
        s = VideoSampler(gv.velocity, method, final_euler=final_euler)
        s.sample(x0, num_steps=5)
        assert s.nfe == nfe, (method, final_euler)
    # the Euler last step only applies when the grid ends at t = 1
    s = VideoSampler(gv.velocity, "heun")
    s.sample(x0, time_grid=torch.linspace(0, 0.9, 6))
    assert s.nfe == 10


def test_renoise_preserves_the_marginal_law():
    # x_t = t x1 + (1 − t) ε with x1 ~ N(2, 0.25): after renoise to t_b the law is
    # N(2 t_b, 0.25 t_b² + (1 − t_b)²).
    g = torch.Generator().manual_seed(4)
    n = 200_000
    x1 = 2 + 0.5 * torch.randn(n, 1, 1, 1, 1, generator=g, dtype=torch.float64)
    t, tb = 0.7, 0.4
    xt = t * x1 + (1 - t) * torch.randn(x1.shape, generator=g, dtype=torch.float64)
    xb = renoise(xt, torch.full((n,), t, dtype=torch.float64),
                 torch.full((n,), tb, dtype=torch.float64), generator=g)
    assert float(xb.mean()) == pytest.approx(2 * tb, abs=0.005)
    assert float(xb.var()) == pytest.approx(0.25 * tb**2 + (1 - tb) ** 2, rel=0.01)
    with pytest.raises(ValueError, match="t_back ≤ t"):
        renoise(xt[:2], torch.full((2,), 0.3), torch.full((2,), 0.5))


def test_stochastic_renoising_keeps_the_target_law():
    gv = GaussianVideo(5, rho=0.7, var=1.0, mean=1.0, height=2, width=2)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(3000, 1, 5, 2, 2, generator=g, dtype=torch.float64)
    x = sample_video(gv.velocity, x0, method="heun", num_steps=40, renoise_fraction=0.5,
                     generator=g)
    series = x.permute(0, 3, 4, 1, 2).reshape(-1, 5)
    # 12000 series: SE of a mean ≈ 0.009, of a covariance entry ≈ 0.013
    assert float((series.mean(0) - 1.0).abs().max()) < 0.05
    assert float((torch.cov(series.T) - gv.cov).abs().max()) < 0.07
    # and it is not the deterministic ODE: the samples differ from the ODE's
    ode = sample_video(gv.velocity, x0, method="heun", num_steps=40)
    assert float((ode - x).abs().mean()) > 0.05


def test_multi_branch_guidance_formula():
    # field(x, t, text, image) = x·0 + a·text + b·image + c (linear, so the rule is checkable)
    def field(x, t, text, image, bias):
        return torch.zeros_like(x) + 2 * text + 3 * image + bias

    x = torch.zeros(1, 1, 2, 1, 1)
    t = torch.zeros(1)
    guided = MultiBranchGuidance(field, scales={"image": 1.5, "text": 4.0},
                                 null={"text": 0.0, "image": 0.0}, order=["image", "text"])
    out = guided(x, t, text=1.0, image=1.0, bias=0.5)
    # u(∅) = 0.5; u(img) − u(∅) = 3; u(img, txt) − u(img) = 2 → 0.5 + 1.5·3 + 4·2
    assert float(out[0, 0, 0, 0, 0]) == pytest.approx(0.5 + 4.5 + 8.0)
    ones = MultiBranchGuidance(field, scales={"image": 1.0, "text": 1.0},
                               null={"text": 0.0, "image": 0.0})
    torch.testing.assert_close(ones(x, t, text=1.0, image=1.0, bias=0.5),
                               field(x, t, text=1.0, image=1.0, bias=0.5))
    with pytest.raises(TypeError, match="needs the conditions"):
        guided(x, t, text=1.0, bias=0.5)
    with pytest.raises(TypeError):  # a misspelled keyword reaches the field and fails there
        guided(x, t, text=1.0, image=1.0, bias=0.5, biass=1.0)
    with pytest.raises(ValueError, match="null values missing"):
        MultiBranchGuidance(field, scales={"text": 2.0}, null={})


def test_sampler_bad_input():
    gv = GaussianVideo(4)
    with pytest.raises(ValueError, match="5 dims"):
        sample_video(gv.velocity, torch.zeros(2, 4, 1, 1), num_steps=2)
    x0 = torch.zeros(2, 1, 4, 1, 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        sample_video(gv.velocity, x0, time_grid=[0.0, 0.5, 0.4, 1.0])
    with pytest.raises(ValueError, match="non-decreasing in every frame"):
        sample_video(gv.velocity, x0, time_grid=torch.tensor([[0.5] * 4, [0.6, 0.2, 0.6, 0.6],
                                                              [1.0] * 4]))
    with pytest.raises(ValueError, match="3 frames but the video has T = 4"):
        sample_video(gv.velocity, x0, time_grid=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="shared time grid"):
        sample_video(gv.velocity, x0, time_grid=torch.zeros(3, 4), renoise_fraction=0.5)
    with pytest.raises(ValueError, match="method"):
        VideoSampler(gv.velocity, "rk4")
    with pytest.raises(ValueError, match="known has 3 frames but the video has T = 4"):
        sample_video(gv.velocity, x0, num_steps=2, known=torch.tensor([True, False, False]),
                     reference=x0)
    with pytest.raises(ValueError, match="together"):
        sample_video(gv.velocity, x0, num_steps=2, known=torch.tensor([True, False] * 2))
    with pytest.raises(ValueError, match="renoise_fraction"):
        sample_video(gv.velocity, x0, num_steps=2, renoise_fraction=1.0)
    with pytest.raises(ValueError, match="finite"):
        sample_video(gv.velocity, torch.full((1, 1, 4, 1, 1), float("nan")), num_steps=2)


def test_grid_rules_are_the_solvers_shared_ones():
    # the sampler's grid is parsed by flowmatch.solvers' grid module, like every other solver's
    from flowmatch.solvers import frame_time_grid

    gv = GaussianVideo(4)
    x0 = torch.zeros(2, 1, 4, 1, 1)
    with pytest.raises(ValueError, match="not both"):
        sample_video(gv.velocity, x0, time_grid=[0.0, 1.0], num_steps=2)
    with pytest.raises(ValueError, match=r"time_grid must lie in \[0, 1\]"):
        sample_video(gv.velocity, x0, time_grid=[0.0, 1.5])
    with pytest.raises(ValueError, match="time_grid must be finite"):
        sample_video(gv.velocity, x0, time_grid=[0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        sample_video(gv.velocity, x0, num_steps=0)
    grid = frame_time_grid(None, 4, 4, dtype=F64, device=torch.device("cpu"))
    assert torch.equal(grid, torch.linspace(0, 1, 5, dtype=F64))
    per_frame = frame_time_grid(grid[:, None].expand(5, 4), None, 4, dtype=F64,
                                device=torch.device("cpu"))
    assert per_frame.shape == (5, 4)

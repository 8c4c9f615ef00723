"""The diffusers-compatible FlowMatchScheduler: schedule, steps, parity, and a real pipeline."""

from __future__ import annotations

import pytest
import torch

from flowmatch.plugins.video import (
    FlowMatchScheduler,
    FlowModelAsField,
    GaussianVideo,
    MultiBranchGuidance,
    flow_sigmas,
    sample_video,
)

GV = GaussianVideo(5, rho=0.8, var=1.3, mean=0.4, height=2, width=2)


def _v_model(x, timestep):
    """The exact Gaussian-video flow in diffusers' convention: v(x, 1000σ) = −u(x, 1 − σ)."""
    t = 1 - timestep.to(torch.float64) / 1000
    return -GV.velocity(x.to(torch.float64), t.expand(x.shape[0])).to(x.dtype)


def _run_scheduler(sch, x, model=_v_model):
    """The loop every diffusers pipeline runs."""
    for ts in sch.timesteps:
        x = sch.step(model(x, ts.reshape(1)), ts, x, return_dict=False)[0]
    return x


def test_default_schedule_is_single_shift():
    sch = FlowMatchScheduler(shift=3.0)
    sch.set_timesteps(28)
    assert sch.order == 1 and len(sch.timesteps) == 28 and len(sch.sigmas) == 29
    assert float(sch.sigmas[-2]) == pytest.approx(0.002994, abs=5e-7)
    torch.testing.assert_close(sch.timesteps, sch.sigmas[:-1] * 1000)
    torch.testing.assert_close(sch.sigmas.double(), flow_sigmas(28, shift=3.0), atol=1e-7,
                               rtol=0)


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint"])
def test_scheduler_steps_equal_the_video_sampler(method):
    # σ grid ↔ t grid: the scheduler in the pipeline loop must reproduce VideoSampler exactly
    sch = FlowMatchScheduler(shift=2.0, method=method)
    sch.set_timesteps(6)
    assert sch.order == (1 if method == "euler" else 2)
    calls = {"euler": 6, "heun": 11, "midpoint": 12}[method]  # Heun's last step is Euler
    assert len(sch.timesteps) == calls and len(sch.sigmas) == calls + 1
    x0 = torch.randn(3, 1, 5, 2, 2, generator=torch.Generator().manual_seed(0))
    out = _run_scheduler(sch, x0.clone())
    grid = 1 - sch.step_sigmas.double()
    ref = sample_video(GV.velocity, x0.double(), method=method, time_grid=grid)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)


def test_heun_scheduler_converges_at_second_order():
    x0 = torch.randn(8, 1, 5, 2, 2, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64)
    exact = GV.flow_map(x0)
    errs = []
    for n in (8, 16):
        sch = FlowMatchScheduler(method="heun", sigma_min=1e-9)
        sch.set_timesteps(n)
        model = lambda x, ts: _v_model(x, ts.double())  # noqa: E731
        errs.append(float((_run_scheduler(sch, x0.clone(), model).double() - exact).abs().max()))
    assert 3.2 < errs[0] / errs[1] < 5.0, errs


def test_parity_with_diffusers_step_by_step():
    diffusers = pytest.importorskip("diffusers")
    grid = torch.linspace(1.0, 1 / 1000, 28).tolist()
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = FlowMatchScheduler(shift=3.0)
    theirs.set_timesteps(sigmas=grid)
    ours.set_timesteps(sigmas=grid)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, atol=0, rtol=0)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, atol=0, rtol=0)
    g = torch.Generator().manual_seed(2)
    x_t = x_o = torch.randn(2, 1, 5, 2, 2, generator=g)
    for ts_t, ts_o in zip(theirs.timesteps, ours.timesteps, strict=True):
        x_t = theirs.step(_v_model(x_t, ts_t.reshape(1)), ts_t, x_t).prev_sample
        x_o = ours.step(_v_model(x_o, ts_o.reshape(1)), ts_o, x_o).prev_sample
        torch.testing.assert_close(x_o, x_t, atol=0, rtol=0)
    # scale_noise agrees too (the img2img / training forward process)
    theirs.set_timesteps(sigmas=grid)
    ours.set_timesteps(sigmas=grid)
    noise = torch.randn(2, 1, 5, 2, 2, generator=g)
    ts = theirs.timesteps[[3, 10]]
    torch.testing.assert_close(ours.scale_noise(x_o, ts, noise),
                               theirs.scale_noise(x_o, ts, noise))
    # dynamic (resolution-aware) shifting with μ and a terminal stretch, as LTX configures it
    kw = dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, shift_terminal=0.1)
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(**kw)
    ours = FlowMatchScheduler(**kw)
    theirs.set_timesteps(sigmas=grid, mu=1.3)
    ours.set_timesteps(sigmas=grid, mu=1.3)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, atol=1e-6, rtol=0)
    # μ used as the shift itself (diffusers' time_shift_type="linear")
    kw = dict(use_dynamic_shifting=True, time_shift_type="linear")
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(**kw)
    ours = FlowMatchScheduler(**kw)
    theirs.set_timesteps(sigmas=grid, mu=2.5)
    ours.set_timesteps(sigmas=grid, mu=2.5)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, atol=1e-6, rtol=0)


def test_scale_noise_and_step_contract():
    sch = FlowMatchScheduler()
    x, noise = torch.ones(2, 1, 1, 1, 1), torch.zeros(2, 1, 1, 1, 1)
    out = sch.scale_noise(x, torch.tensor([250.0, 1000.0]), noise)
    assert out.flatten().tolist() == pytest.approx([0.75, 0.0])
    with pytest.raises(ValueError, match="set_timesteps"):
        sch.step(x, torch.tensor(1000.0), x)
    sch.set_timesteps(4)
    with pytest.raises(ValueError, match="integer index"):
        sch.step(x, 0, x)
    with pytest.raises(ValueError, match="not the start of a step"):
        sch.step(x, torch.tensor(123.0), x)
    # starting mid-schedule (img2img) finds the step from the timestep
    sch.step(x, sch.timesteps[2], x)
    assert sch.step_index == 3
    heun = FlowMatchScheduler(method="heun")
    heun.set_timesteps(3)
    heun.step(x, heun.timesteps[2], x)  # σ_1 opens step 1 (index 2), not closes step 0
    assert heun.step_index == 3


def test_scheduler_bad_config():
    with pytest.raises(ValueError, match="shift must be a finite number > 0"):
        FlowMatchScheduler(shift=0.0)
    with pytest.raises(ValueError, match="shift must be a finite number > 0"):
        FlowMatchScheduler(shift=-2.0)
    with pytest.raises(ValueError, match="method"):
        FlowMatchScheduler(method="rk4")
    with pytest.raises(ValueError, match="mu must be passed"):
        FlowMatchScheduler(use_dynamic_shifting=True).set_timesteps(4)
    with pytest.raises(ValueError, match="strictly decreasing"):
        FlowMatchScheduler().set_timesteps(sigmas=[0.2, 0.5])
    with pytest.raises(ValueError, match="stochastic_sampling"):
        FlowMatchScheduler(method="heun", stochastic_sampling=True)
    with pytest.raises(ValueError, match="time_shift_type"):
        FlowMatchScheduler(time_shift_type="cubic")
    with pytest.raises(ValueError, match="mu must be finite"):
        FlowMatchScheduler(use_dynamic_shifting=True, time_shift_type="linear").set_timesteps(
            4, mu=-1.0)


# -- a real diffusers video pipeline, tiny random components, nothing downloaded ------------
def _tiny_wan(scheduler):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1],
                                     num_res_blocks=1, temperal_downsample=[False, True, True])
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    # prompt embeddings are passed directly, so no tokenizer or text encoder is needed
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                 transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe, transformer


@torch.no_grad()
def test_wan_pipeline_runs_with_the_flowmatch_scheduler():
    pipe, transformer = _tiny_wan(FlowMatchScheduler(shift=3.0, method="heun"))
    g = torch.Generator().manual_seed(0)
    emb, neg = torch.randn(1, 8, 32, generator=g), torch.randn(1, 8, 32, generator=g)
    latents = torch.randn(1, 16, 2, 2, 2, generator=g)  # 5 frames, 16×16 px → [1, 16, 2, 2, 2]
    common = dict(prompt_embeds=emb, negative_prompt_embeds=neg, height=16, width=16,
                  num_frames=5, num_inference_steps=3, guidance_scale=2.5)
    out = pipe(latents=latents.clone(), output_type="latent", **common).frames
    assert out.shape == latents.shape and bool(torch.isfinite(out).all())

    # the pipeline with our Heun scheduler = our VideoSampler driving the same transformer
    def wan(x, timestep, emb):
        return transformer(hidden_states=x, timestep=timestep.expand(x.shape[0]),
                           encoder_hidden_states=emb, return_dict=False)[0]

    field = MultiBranchGuidance(FlowModelAsField(wan), scales={"emb": 2.5}, null={"emb": neg})
    grid = 1 - flow_sigmas(3, shift=3.0).float()
    ref = sample_video(field, latents.clone(), method="heun", time_grid=grid, emb=emb)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)

    # and the decoded video comes out of the VAE
    video = pipe(latents=latents.clone(), output_type="pt", **common).frames
    assert video.shape == (1, 5, 3, 16, 16) and bool(torch.isfinite(video).all())


@torch.no_grad()
def test_wan_pipeline_euler_matches_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers")
    # shift 1: diffusers' double shift is the identity, so both build the same grid
    pipe, _ = _tiny_wan(FlowMatchScheduler(shift=1.0))
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 8, 32, generator=g)
    latents = torch.randn(1, 16, 2, 2, 2, generator=g)
    common = dict(prompt_embeds=emb, height=16, width=16, num_frames=5, num_inference_steps=4,
                  guidance_scale=1.0, output_type="latent")
    ours = pipe(latents=latents.clone(), **common).frames
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    theirs = pipe(latents=latents.clone(), **common).frames
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

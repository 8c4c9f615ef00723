"""Per-token timesteps (diffusers' LTXConditionPipeline contract) in FlowMatchScheduler.

LTXConditionPipeline gives every latent token its own timestep — conditioning tokens sit at
σ = 0 (or 1 − strength) while the rest follow the schedule — and calls
``scheduler.step(-noise_pred, t, latents, per_token_timesteps=...)``. Each token steps from its
own σ to the largest grid σ below it, with dt = σ − σ_next ≥ 0, hence the negated velocity. These
tests check that rule against diffusers' own scheduler, its second-order extension (Heun,
midpoint), and the real pipeline built from tiny random components (nothing downloaded).
"""

from __future__ import annotations

import pytest
import torch
from ltx_tiny import LAT_C, TEXT_DIM, tiny_ltx_components

from flowmatch.plugins.video import FlowMatchScheduler

diffusers = pytest.importorskip("diffusers")

MU, S = 0.4, 0.7  # every coordinate of the data is N(MU, S²)


def _velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact marginal velocity v = E[ε − x_data | x_σ] for x_σ = (1 − σ)·x_data + σ·ε.

    Token-wise (``sigma`` broadcasts over the channel axis), so a token's trajectory does not
    depend on the others — which lets a per-token run be compared with a global one token by token.
    """
    a = 1 - sigma
    r = (x - a * MU) / (a * a * S * S + sigma * sigma)
    return sigma * r - (MU + a * S * S * r)


def _mixed_timesteps(grid: torch.Tensor, shape: tuple[int, ...], g: torch.Generator):
    """Per-token timesteps: 0, on a grid σ, between two grid σ's, or within diffusers' 10⁻⁶ slack
    above a grid σ (which must still step to the next grid σ, not to the one it sits on)."""
    kind = torch.randint(0, 4, shape, generator=g)
    j = torch.randint(0, grid.numel() - 1, shape, generator=g)
    on, below = grid[j], grid[j + 1]
    between = below + (on - below) * torch.rand(shape, generator=g)
    slack = (on + 5e-7).clamp(max=1.0)
    sigma = torch.where(kind == 0, torch.zeros(shape),
                        torch.where(kind == 1, on, torch.where(kind == 2, between, slack)))
    return (sigma.double() * 1000).float()


def _pair(**cfg):
    ours, theirs = FlowMatchScheduler(**cfg), diffusers.FlowMatchEulerDiscreteScheduler(**cfg)
    sigmas = [1.0, 0.8, 0.55, 0.3, 0.12]
    ours.set_timesteps(sigmas=sigmas)
    theirs.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, atol=1e-6, rtol=0)
    return ours, theirs


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_per_token_euler_matches_diffusers_step_by_step(shift):
    ours, theirs = _pair(shift=shift)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 24, 3, generator=g)  # packed latents [B, tokens, C]
    x_ours, x_theirs = x0.clone(), x0.clone()
    for ts in ours.timesteps:
        t_tok = _mixed_timesteps(ours.sigmas, (2, 24), g)
        sigma = (t_tok / 1000)[..., None]
        before = x_ours
        # the pipeline's model_output is −v
        x_ours = ours.step(-_velocity(x_ours, sigma), ts, x_ours, per_token_timesteps=t_tok,
                           return_dict=False)[0]
        x_theirs = theirs.step(-_velocity(x_theirs, sigma), ts, x_theirs,
                               per_token_timesteps=t_tok, return_dict=False)[0]
        assert x_ours.dtype == x_theirs.dtype == torch.float32
        torch.testing.assert_close(x_ours, x_theirs, atol=1e-6, rtol=0)
        assert torch.equal(x_ours[t_tok == 0], before[t_tok == 0])  # σ = 0: untouched


def test_per_token_euler_is_euler_from_each_tokens_sigma_to_the_next_grid_sigma():
    ours, _ = _pair(shift=1.0)
    assert ours.step_sigmas.tolist() == pytest.approx([1.0, 0.8, 0.55, 0.3, 0.12, 0.0])
    t_tok = torch.tensor([[0.0, 1000.0, 800.0, 700.0, 550.0005, 550.003, 120.0, 0.0004]])
    nxt = torch.tensor([[0.0, 0.8, 0.55, 0.55, 0.3, 0.55, 0.0, 0.0]])
    x = torch.randn(1, 8, 2, generator=torch.Generator().manual_seed(1))
    v = torch.randn(1, 8, 2, generator=torch.Generator().manual_seed(2))
    out = ours.step(-v, ours.timesteps[0], x, per_token_timesteps=t_tok).prev_sample
    torch.testing.assert_close(out, x + (nxt - t_tok / 1000)[..., None] * v, atol=1e-6, rtol=0)
    assert torch.equal(out[:, 0], x[:, 0])  # σ = 0: untouched


def test_per_token_stochastic_sampling_renoises_the_data_estimate():
    # model_output = −v, so the data estimate is x − σ·v = x + σ·model_output; diffusers 0.42
    # writes x − σ·model_output in this branch too, so ours(m) equals theirs(−m)
    ours, theirs = _pair(shift=1.0, stochastic_sampling=True)
    g = torch.Generator().manual_seed(3)
    data, eps = torch.randn(2, 10, 3, generator=g), torch.randn(2, 10, 3, generator=g)
    t_tok = _mixed_timesteps(ours.sigmas, (2, 10), g)
    sigma = (t_tok / 1000)[..., None]
    x = (1 - sigma) * data + sigma * eps
    m = -(eps - data)  # the exact conditional velocity, negated as the pipeline does
    out = ours.step(m, ours.timesteps[0], x, generator=torch.Generator().manual_seed(9),
                    per_token_timesteps=t_tok).prev_sample
    ref = theirs.step(-m, theirs.timesteps[0], x, generator=torch.Generator().manual_seed(9),
                      per_token_timesteps=t_tok).prev_sample
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    # exact data: the result is that data re-noised to σ_next with fresh noise
    s = (t_tok / 1000).float()
    grid = ours.step_sigmas.reshape(-1, 1, 1)
    nxt = ((grid < s - 1e-6) * grid).amax(0)[..., None]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(out, (1 - nxt) * data + nxt * noise, atol=2e-6, rtol=0)
    assert torch.equal(out[t_tok == 0], x[t_tok == 0])


@pytest.mark.parametrize("method", ["heun", "midpoint"])
def test_per_token_second_order_on_the_grid_is_the_global_step(method):
    # every moving token at the grid σ of the step: per-token Heun/midpoint with −v must be the
    # ordinary step with v, bit for bit; frozen tokens (σ = 0) must not move at all
    ours, ref = FlowMatchScheduler(shift=2.0, method=method), FlowMatchScheduler(shift=2.0,
                                                                                  method=method)
    ours.set_timesteps(5)
    ref.set_timesteps(5)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(2, 16, 3, generator=g)
    frozen = torch.rand(2, 16, generator=g) < 0.3
    x, x_ref = x0.clone(), x0.clone()
    for i, ts in enumerate(ours.timesteps):
        sigma = ours.sigmas[i]
        # float64 timesteps 1000·σ give the float32 grid σ back exactly
        t_tok = torch.where(frozen, 0.0, sigma.double() * 1000)
        s_tok = torch.where(frozen, 0.0, sigma)[..., None]
        x = ours.step(-_velocity(x, s_tok), ts, x, per_token_timesteps=t_tok).prev_sample
        x_ref = ref.step(_velocity(x_ref, sigma), ts, x_ref).prev_sample
    assert torch.equal(x[~frozen], x_ref[~frozen])
    assert torch.equal(x[frozen], x0[frozen])

    # the pipeline's float32 timesteps 1000·σ may come back one ulp off the grid: same result
    # up to float32 rounding
    ours.set_timesteps(5)
    x = x0.clone()
    for ts in ours.timesteps:
        t_tok = torch.where(frozen, 0.0, ts.expand(2, 16))
        s_tok = (t_tok / 1000)[..., None]
        x = ours.step(-_velocity(x, s_tok), ts, x, per_token_timesteps=t_tok).prev_sample
    torch.testing.assert_close(x[~frozen], x_ref[~frozen], atol=1e-5, rtol=0)
    assert torch.equal(x[frozen], x0[frozen])


@pytest.mark.parametrize("method", ["heun", "midpoint"])
def test_per_token_second_order_off_the_grid_steps_to_the_next_grid_sigma(method):
    # under a constant velocity c every one-step method is exact: x + (σ_next − σ)·c, so each
    # token must land on the grid σ below its own, whatever σ the second model call reports
    sch = FlowMatchScheduler(method=method)
    sch.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
    t_tok = torch.tensor([[1000.0, 900.0, 750.0, 600.0, 0.0]])
    nxt = torch.tensor([[0.75, 0.75, 0.5, 0.5, 0.0]])
    c = torch.randn(1, 5, 2, generator=torch.Generator().manual_seed(5))
    x = torch.randn(1, 5, 2, generator=torch.Generator().manual_seed(6))
    first = sch.step(-c, sch.timesteps[0], x, per_token_timesteps=t_tok).prev_sample
    second_t = torch.minimum(sch.timesteps[1].expand(1, 5), t_tok)  # what LTX would pass
    out = sch.step(-c, sch.timesteps[1], first, per_token_timesteps=second_t).prev_sample
    torch.testing.assert_close(out, x + (nxt - t_tok / 1000)[..., None] * c, atol=1e-6, rtol=0)
    assert torch.equal(out[:, -1], x[:, -1])


def test_per_token_timesteps_are_validated():
    sch = FlowMatchScheduler(method="heun")
    sch.set_timesteps(4)
    x = torch.zeros(2, 6, 3)
    ts = sch.timesteps[0]
    with pytest.raises(ValueError, match=r"sample.shape\[:-1\] = \[2, 6\].*shape \[2, 6, 3\]"):
        sch.step(x, ts, x, per_token_timesteps=torch.full((2, 6, 3), 1000.0))
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        sch.step(x, ts, x, per_token_timesteps=torch.full((3,), 1000.0))
    with pytest.raises(ValueError, match=r"finite and lie in \[0, 1000\]"):
        sch.step(x, ts, x, per_token_timesteps=torch.full((2, 6), 1000.5))
    with pytest.raises(ValueError, match="finite"):
        sch.step(x, ts, x, per_token_timesteps=torch.tensor([[float("nan")] * 6] * 2))
    assert sch.step_index == 0  # nothing was consumed by the rejected calls
    # broadcastable shapes are accepted: [B, 1] is what LTX passes without conditioning
    sch.step(x, ts, x, per_token_timesteps=ts.expand(2, 1).clone())
    with pytest.raises(ValueError, match="both stages"):
        sch.step(x, sch.timesteps[1], x)  # stage 2 without per-token timesteps


# ---- the real LTXConditionPipeline -------------------------------------------------------
FRAMES, SIZE = 9, 32
# LTX-Video's scheduler settings, with the resolution-dependent shift off: LTXConditionPipeline
# calls set_timesteps(timesteps=...) and never passes μ, so use_dynamic_shifting=True raises in
# both schedulers (checked below); without a shift_terminal the shift is the identity and both
# schedulers build the same grid from those timesteps.
LTX_CONDITION_SCHEDULER = dict(use_dynamic_shifting=False, base_shift=0.95, max_shift=2.05,
                               base_image_seq_len=1024, max_image_seq_len=4096)


@pytest.fixture(scope="module")
def ltx_condition():
    transformer, vae = tiny_ltx_components(diffusers)
    pipe = diffusers.LTXConditionPipeline(
        scheduler=FlowMatchScheduler(**LTX_CONDITION_SCHEDULER), vae=vae, text_encoder=None,
        tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    emb, neg = torch.randn(1, 6, TEXT_DIM, generator=g), torch.randn(1, 6, TEXT_DIM, generator=g)
    mask = torch.ones(1, 6, dtype=torch.long)
    image = torch.rand(1, 3, SIZE, SIZE, generator=g)  # first frame, RGB in [0, 1]
    common = dict(image=image, frame_index=0, prompt_embeds=emb, prompt_attention_mask=mask,
                  negative_prompt_embeds=neg, negative_prompt_attention_mask=mask, height=SIZE,
                  width=SIZE, num_frames=FRAMES, num_inference_steps=4, guidance_scale=2.5,
                  output_type="latent")
    return pipe, common


def _run(pipe, scheduler, common, **kw):
    pipe.scheduler = scheduler
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        # the pipeline ignores `latents` when denoise_strength = 1 and draws them from `generator`
        frames = pipe(generator=torch.Generator().manual_seed(1), **{**common, **kw}).frames
    finally:
        hook.remove()
    return frames, len(calls)


@torch.no_grad()
def test_ltx_condition_pipeline_euler_matches_diffusers_and_heun_runs(ltx_condition):
    pipe, common = ltx_condition
    ours, n_ours = _run(pipe, FlowMatchScheduler(**LTX_CONDITION_SCHEDULER), common)
    our_sch = pipe.scheduler
    theirs, n_theirs = _run(pipe, diffusers.FlowMatchEulerDiscreteScheduler(
        **LTX_CONDITION_SCHEDULER), common)
    assert ours.shape == (1, LAT_C, 3, SIZE // 4, SIZE // 4) and bool(torch.isfinite(ours).all())
    assert n_ours == n_theirs == 4
    # same grid and the same timesteps fed to the model, and the per-token update is the same
    # float32 arithmetic in the same order, so the runs agree bit for bit
    assert torch.equal(our_sch.sigmas, pipe.scheduler.sigmas)
    assert torch.equal(our_sch.timesteps, pipe.scheduler.timesteps)
    assert torch.equal(ours, theirs)
    # a conditioning of strength < 1 puts its tokens off the grid, at σ = 1 − strength
    weak = dict(strength=0.6)
    ours_weak = _run(pipe, FlowMatchScheduler(**LTX_CONDITION_SCHEDULER), common, **weak)[0]
    theirs_weak = _run(pipe, diffusers.FlowMatchEulerDiscreteScheduler(
        **LTX_CONDITION_SCHEDULER), common, **weak)[0]
    assert torch.equal(ours_weak, theirs_weak) and not torch.equal(ours_weak, ours)
    heun_weak = _run(pipe, FlowMatchScheduler(method="heun", **LTX_CONDITION_SCHEDULER), common,
                     **weak)[0]
    assert bool(torch.isfinite(heun_weak).all())

    # Heun: 2·4 − 1 model calls (the last step into σ = 0 is Euler), a different result
    heun, n_heun = _run(pipe, FlowMatchScheduler(method="heun", **LTX_CONDITION_SCHEDULER),
                        common)
    assert n_heun == 7 and heun.shape == ours.shape and bool(torch.isfinite(heun).all())
    assert float((heun - ours).abs().max()) > 1e-3
    # without the conditioning re-noise the first latent frame is the encoded image in every run
    quiet = dict(image_cond_noise_scale=0.0)
    e0 = _run(pipe, FlowMatchScheduler(**LTX_CONDITION_SCHEDULER), common, **quiet)[0]
    h0 = _run(pipe, FlowMatchScheduler(method="heun", **LTX_CONDITION_SCHEDULER), common,
              **quiet)[0]
    assert torch.equal(e0[:, :, 0], h0[:, :, 0]) and not torch.equal(e0[:, :, 1:], h0[:, :, 1:])
    # and the decoded video comes out: [B, frames, RGB, H, W] in [0, 1]
    video, _ = _run(pipe, FlowMatchScheduler(method="heun", **LTX_CONDITION_SCHEDULER), common,
                    output_type="pt")
    assert video.shape == (1, FRAMES, 3, SIZE, SIZE) and bool(torch.isfinite(video).all())
    assert 0 <= float(video.min()) and float(video.max()) <= 1


@torch.no_grad()
def test_ltx_condition_pipeline_cannot_use_the_dynamic_shift(ltx_condition):
    pipe, common = ltx_condition
    dynamic = dict(LTX_CONDITION_SCHEDULER, use_dynamic_shifting=True, shift_terminal=0.1)
    for sch in (FlowMatchScheduler(**dynamic),
                diffusers.FlowMatchEulerDiscreteScheduler(**dynamic)):
        with pytest.raises(ValueError, match="mu`? must be passed"):
            _run(pipe, sch, common)

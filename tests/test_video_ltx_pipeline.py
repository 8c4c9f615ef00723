"""diffusers' LTXPipeline with the flowmatch scheduler: tiny random components, nothing downloaded.

LTX is the pipeline that uses the resolution-aware (dynamic) shift: it calls
``scheduler.set_timesteps(sigmas=linspace(1, 1/N, N), mu=μ)`` with μ linear in the number of
latent tokens, and its scheduler config stretches the grid to end at ``shift_terminal``. These
tests run the real pipeline loop (classifier-free guidance, packed latents, VAE decode) and check
that the grid our scheduler builds is exactly the one LTX asks for.
"""

from __future__ import annotations

import math

import pytest
import torch
from ltx_tiny import LAT_C, TEXT_DIM, tiny_ltx_components

from flowmatch.plugins.video import (
    FlowMatchScheduler,
    FlowModelAsField,
    MultiBranchGuidance,
    sample_video,
)

diffusers = pytest.importorskip("diffusers")

# LTX-Video's scheduler configuration (resolution-dependent exponential shift + terminal stretch)
LTX_SCHEDULER = dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                     base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)
# 9 frames of 32×32 px; the tiny VAE compresses 4× in time and space → latents [8, 3, 8, 8]
FRAMES, SIZE, LAT_T, LAT_HW = 9, 32, 3, 8


class _RecordingScheduler(FlowMatchScheduler):
    """FlowMatchScheduler that remembers what the pipeline passed to ``set_timesteps``.

    The signature is spelled out because the pipeline inspects it for ``sigmas``.
    """

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None,
                      timesteps=None):
        self.calls = getattr(self, "calls", []) + [dict(num_inference_steps=num_inference_steps,
                                                        sigmas=sigmas, mu=mu,
                                                        timesteps=timesteps)]
        super().set_timesteps(num_inference_steps, device, sigmas, mu, timesteps)


def _tiny_ltx(scheduler):
    transformer, vae = tiny_ltx_components(diffusers)
    # prompt embeddings are passed directly, so no tokenizer or text encoder is needed
    pipe = diffusers.LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=None,
                                 tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio) == (4, 4)
    return pipe, transformer


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    emb, neg = torch.randn(1, 6, TEXT_DIM, generator=g), torch.randn(1, 6, TEXT_DIM, generator=g)
    mask = torch.ones(1, 6, dtype=torch.long)
    latents = torch.randn(1, LAT_C, LAT_T, LAT_HW, LAT_HW, generator=g)  # [B, C, T, H, W]
    return emb, neg, mask, latents


def _ltx_sigmas(n: int, mu: float) -> torch.Tensor:
    """The grid LTX asks for, written out independently: linspace(1, 1/N, N), exponential
    shift σ' = e^μ / (e^μ + 1/σ − 1), then 1 − σ rescaled so the last σ is 0.1, then 0."""
    s = torch.linspace(1.0, 1.0 / n, n, dtype=torch.float64)
    s = math.exp(mu) / (math.exp(mu) + 1 / s - 1)
    s = 1 - (1 - s) * (1 - 0.1) / (1 - s[-1])
    return torch.cat([s, s.new_zeros(1)])


@torch.no_grad()
def test_ltx_pipeline_runs_with_the_flowmatch_scheduler():
    sch = _RecordingScheduler(method="heun", **LTX_SCHEDULER)
    pipe, transformer = _tiny_ltx(sch)
    emb, neg, mask, latents = _inputs(0)
    steps = 4
    common = dict(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=neg,
                  negative_prompt_attention_mask=mask, height=SIZE, width=SIZE,
                  num_frames=FRAMES, num_inference_steps=steps, guidance_scale=2.5)
    packed = pipe._pack_latents(latents, 1, 1)  # LTX works on packed tokens [B, T·H·W, C]
    out = pipe(latents=packed.clone(), output_type="latent", **common).frames
    assert out.shape == (1, LAT_T * LAT_HW * LAT_HW, LAT_C) and bool(torch.isfinite(out).all())

    # what LTX passed: its own σ list and μ from the token count (3·8·8 = 192 tokens)
    (call,) = sch.calls
    m = (2.05 - 0.95) / (4096 - 1024)
    mu = 192 * m + (0.95 - m * 1024)
    assert call["mu"] == pytest.approx(mu, abs=1e-12)
    assert list(call["sigmas"]) == pytest.approx([1.0, 0.75, 0.5, 0.25])
    # the grid we built is that σ list shifted once by e^μ and stretched to end at 0.1
    expected = _ltx_sigmas(steps, mu)
    torch.testing.assert_close(sch.step_sigmas.double(), expected, atol=1e-6, rtol=0)
    assert float(sch.step_sigmas[-2]) == pytest.approx(0.1, abs=1e-6)
    # Heun: two evaluations per step except the last into σ = 0 (Euler), at the grid σ's
    s = expected
    evals = torch.stack([s[0], s[1], s[1], s[2], s[2], s[3], s[3]])
    torch.testing.assert_close(sch.sigmas.double(), torch.cat([evals, s.new_zeros(1)]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(sch.timesteps, sch.sigmas[:-1] * 1000)

    # the pipeline's loop = our VideoSampler driving the same transformer on the same grid
    def ltx(x, timestep, emb, mask):
        B, _, T, H, W = x.shape
        v = transformer(hidden_states=pipe._pack_latents(x, 1, 1), encoder_hidden_states=emb,
                        timestep=timestep.expand(B), encoder_attention_mask=mask,
                        num_frames=T, height=H, width=W,
                        rope_interpolation_scale=(4 / 25, 4, 4), return_dict=False)[0]
        return pipe._unpack_latents(v, T, H, W, 1, 1)

    field = MultiBranchGuidance(FlowModelAsField(ltx), scales={"emb": 2.5}, null={"emb": neg})
    ref = sample_video(field, latents.clone(), method="heun", time_grid=(1 - expected).float(),
                       emb=emb, mask=mask)
    torch.testing.assert_close(pipe._unpack_latents(out, LAT_T, LAT_HW, LAT_HW, 1, 1), ref,
                               atol=1e-4, rtol=1e-4)

    # and the decoded video comes out of the VAE: [B, frames, RGB, H, W] in [0, 1]
    video = pipe(latents=packed.clone(), output_type="pt", **common).frames
    assert video.shape == (1, FRAMES, 3, SIZE, SIZE) and bool(torch.isfinite(video).all())
    assert 0 <= float(video.min()) and float(video.max()) <= 1


@torch.no_grad()
def test_ltx_pipeline_euler_matches_diffusers_scheduler():
    # LTX passes `sigmas`, which both schedulers shift once, so with LTX's dynamic shift and
    # terminal stretch the two must run the same loop
    pipe, _ = _tiny_ltx(FlowMatchScheduler(**LTX_SCHEDULER))
    emb, _, mask, latents = _inputs(1)
    common = dict(prompt_embeds=emb, prompt_attention_mask=mask, height=SIZE, width=SIZE,
                  num_frames=FRAMES, num_inference_steps=5, guidance_scale=1.0,
                  output_type="latent")
    packed = pipe._pack_latents(latents, 1, 1)
    ours = pipe(latents=packed.clone(), **common).frames
    our_sigmas = pipe.scheduler.sigmas.clone()
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER)
    theirs = pipe(latents=packed.clone(), **common).frames
    torch.testing.assert_close(our_sigmas, pipe.scheduler.sigmas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

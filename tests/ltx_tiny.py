"""Tiny randomly initialised LTX-Video components for pipeline tests (nothing is downloaded).

A one-layer ``LTXVideoTransformer3DModel`` and an ``AutoencoderKLLTXVideo`` that compresses 4× in
time and space: 9 frames of 32×32 px become latents [8, 3, 8, 8]. Prompt embeddings of width
``TEXT_DIM`` are passed to the pipelines directly, so no tokenizer or text encoder is needed.
"""

from __future__ import annotations

import torch

LAT_C, TEXT_DIM = 8, 16


def tiny_ltx_components(diffusers, seed: int = 0):
    """(transformer, vae), seeded: the same weights on every call with the same seed."""
    torch.manual_seed(seed)
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=LAT_C, out_channels=LAT_C, patch_size=1, patch_size_t=1,
        num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, num_layers=1,
        caption_channels=TEXT_DIM)
    vae = diffusers.AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=LAT_C, block_out_channels=(8,) * 4,
        decoder_block_out_channels=(8,) * 4, layers_per_block=(1,) * 5,
        decoder_layers_per_block=(1,) * 5, spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False)
    return transformer, vae

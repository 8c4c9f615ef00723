"""Video plugin: flow matching on video latents [B, C, T, H, W] and diffusion→flow swaps.

Modules: ``conventions`` (flowmatch t vs diffusers σ), ``timesteps`` (training t, weights,
shift, schedules), ``samplers`` (Euler/Heun/midpoint with frozen frames and guidance),
``conditioning`` (frame masks, masked loss, long videos), ``adapters`` (diffusion model as a
velocity field), ``scheduler`` (diffusers-compatible scheduler), ``model`` (a small video
velocity network), ``data`` (analytic Gaussian video, bouncing shapes), ``metrics`` (physics of
bouncing-disc clips), ``training`` (the bouncing-disc recipe and its checkpoints), ``plugin``
(CLI).
None of them imports diffusers; only the tests and the benchmark use it when present.

Names are loaded on first access, so discovering the plugin (``flowmatch --help``) does not import
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DiffusionAsFlow": "flowmatch.plugins.video.adapters",
    "FlowMatchScheduler": "flowmatch.plugins.video.scheduler",
    "FlowModelAsField": "flowmatch.plugins.video.adapters",
    "GaussianVideo": "flowmatch.plugins.video.data",
    "MultiBranchGuidance": "flowmatch.plugins.video.samplers",
    "VideoSampler": "flowmatch.plugins.video.samplers",
    "VideoVelocityNet": "flowmatch.plugins.video.model",
    "auto_shift": "flowmatch.plugins.video.timesteps",
    "bouncing_shapes": "flowmatch.plugins.video.data",
    "concat_condition": "flowmatch.plugins.video.conditioning",
    "ddpm_alphas_cumprod": "flowmatch.plugins.video.adapters",
    "diffusers_to_velocity": "flowmatch.plugins.video.conventions",
    "extension_mask": "flowmatch.plugins.video.conditioning",
    "first_frame_mask": "flowmatch.plugins.video.conditioning",
    "first_last_mask": "flowmatch.plugins.video.conditioning",
    "flow_sigmas": "flowmatch.plugins.video.timesteps",
    "flow_time_grid": "flowmatch.plugins.video.timesteps",
    "frame_time_like": "flowmatch.plugins.video.conventions",
    "generate_long": "flowmatch.plugins.video.conditioning",
    "last_frame_mask": "flowmatch.plugins.video.conditioning",
    "linear_mu": "flowmatch.plugins.video.timesteps",
    "loss_weight": "flowmatch.plugins.video.timesteps",
    "masked_mse": "flowmatch.plugins.video.conditioning",
    "occupancy": "flowmatch.plugins.video.metrics",
    "opensora_v12_shift": "flowmatch.plugins.video.timesteps",
    "opensora_v2_shift": "flowmatch.plugins.video.timesteps",
    "per_frame_time": "flowmatch.plugins.video.conditioning",
    "physics": "flowmatch.plugins.video.metrics",
    "random_training_mask": "flowmatch.plugins.video.conditioning",
    "sample_training_t": "flowmatch.plugins.video.timesteps",
    "sample_video": "flowmatch.plugins.video.samplers",
    "shift_sigma": "flowmatch.plugins.video.timesteps",
    "shift_t": "flowmatch.plugins.video.timesteps",
    "sigma_to_t": "flowmatch.plugins.video.conventions",
    "t_to_sigma": "flowmatch.plugins.video.conventions",
    "train_bouncing": "flowmatch.plugins.video.training",
    "trajectory_accel": "flowmatch.plugins.video.metrics",
    "velocity_to_diffusers": "flowmatch.plugins.video.conventions",
    "video_path_sample": "flowmatch.plugins.video.conditioning",
}

__all__ = [
    "DiffusionAsFlow", "FlowMatchScheduler", "FlowModelAsField", "GaussianVideo",
    "MultiBranchGuidance", "VideoSampler", "VideoVelocityNet", "auto_shift", "bouncing_shapes",
    "concat_condition", "ddpm_alphas_cumprod",
    "diffusers_to_velocity", "extension_mask", "first_frame_mask", "first_last_mask",
    "flow_sigmas", "flow_time_grid", "frame_time_like", "generate_long", "last_frame_mask",
    "linear_mu", "loss_weight", "masked_mse", "occupancy", "opensora_v12_shift",
    "opensora_v2_shift", "per_frame_time", "physics", "random_training_mask",
    "sample_training_t", "sample_video", "shift_sigma", "shift_t", "sigma_to_t", "t_to_sigma",
    "train_bouncing", "trajectory_accel", "velocity_to_diffusers", "video_path_sample",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

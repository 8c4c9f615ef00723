"""Video plugin: flow matching on video latents [B, C, T, H, W] and diffusion→flow swaps.

Modules: ``conventions`` (flowmatch t vs diffusers σ), ``timesteps`` (training t, weights,
shift, schedules), ``samplers`` (Euler/Heun/midpoint with frozen frames and guidance),
``conditioning`` (frame masks, masked loss, long videos), ``adapters`` (diffusion model as a
velocity field), ``scheduler`` (diffusers-compatible scheduler), ``model`` (a small video
velocity network), ``data`` (analytic Gaussian video, bouncing shapes), ``plugin`` (CLI).
None of them imports diffusers; only the tests and the benchmark use it when present.
"""

from flowmatch.plugins.video.adapters import DiffusionAsFlow, FlowModelAsField, ddpm_alphas_cumprod
from flowmatch.plugins.video.conditioning import (
    concat_condition,
    extension_mask,
    first_frame_mask,
    first_last_mask,
    generate_long,
    last_frame_mask,
    masked_mse,
    per_frame_time,
    random_training_mask,
    video_path_sample,
)
from flowmatch.plugins.video.conventions import (
    diffusers_to_velocity,
    frame_time_like,
    sigma_to_t,
    t_to_sigma,
    velocity_to_diffusers,
)
from flowmatch.plugins.video.data import GaussianVideo, bouncing_shapes
from flowmatch.plugins.video.model import VideoVelocityNet
from flowmatch.plugins.video.samplers import MultiBranchGuidance, VideoSampler, sample_video
from flowmatch.plugins.video.scheduler import FlowMatchScheduler
from flowmatch.plugins.video.timesteps import (
    auto_shift,
    flow_sigmas,
    flow_time_grid,
    linear_mu,
    loss_weight,
    opensora_v2_shift,
    opensora_v12_shift,
    sample_training_t,
    shift_sigma,
    shift_t,
)

__all__ = [
    "DiffusionAsFlow", "FlowMatchScheduler", "FlowModelAsField", "GaussianVideo",
    "MultiBranchGuidance", "VideoSampler", "VideoVelocityNet", "auto_shift", "bouncing_shapes",
    "concat_condition", "ddpm_alphas_cumprod",
    "diffusers_to_velocity", "extension_mask", "first_frame_mask", "first_last_mask",
    "flow_sigmas", "flow_time_grid", "frame_time_like", "generate_long", "last_frame_mask",
    "linear_mu", "loss_weight", "masked_mse", "opensora_v12_shift", "opensora_v2_shift",
    "per_frame_time", "random_training_mask", "sample_training_t", "sample_video",
    "shift_sigma", "shift_t", "sigma_to_t", "t_to_sigma", "velocity_to_diffusers",
    "video_path_sample",
]

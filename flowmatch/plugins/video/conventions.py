"""Time conventions for video flows, and per-frame time broadcasting.

Two conventions meet in video generation, and mixing them silently flips a sign or a direction:

* **flowmatch (this library)**: x_t = t·x1 + (1 − t)·x0 with x1 the data and x0 ~ N(0, I) the
  noise; t runs from 0 (noise) to 1 (data); the velocity is u = dx_t/dt = x1 − x0.
* **diffusers / SD3** (Wan, HunyuanVideo, LTX-Video, Flux): x_σ = (1 − σ)·x_data + σ·ε, σ = 1 is
  noise; the network predicts v = ε − x_data; sampling runs σ from 1 down to 0.

They describe the same straight-line path with σ = 1 − t and v = −u (dσ = −dt, so an Euler step
x ← x + (σ_next − σ)·v equals x ← x + (t_next − t)·u). The diffusers ``timestep`` passed to the
network is 1000·σ (``num_train_timesteps``·σ).

Video tensors are [B, C, T, H, W] (batch, channels, frames, height, width). Time is either one
value per clip, shape [B], or one value per frame, shape [B, T] — the latter lets conditioning
frames sit at t = 1 (clean) while the others are still noisy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowmatch._validation import expand_time_like, validation_enabled

__all__ = [
    "DEFAULT_NUM_TRAIN_TIMESTEPS",
    "check_video",
    "diffusers_timestep_to_t",
    "diffusers_to_velocity",
    "frame_time_like",
    "sigma_to_t",
    "t_to_diffusers_timestep",
    "t_to_sigma",
    "velocity_to_diffusers",
]

DEFAULT_NUM_TRAIN_TIMESTEPS = 1000


def check_video(name: str, x: Tensor) -> None:
    """Raise unless ``x`` is a floating tensor of shape [B, C, T, H, W]."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(
            f"{name} must be a video of shape [B, C, T, H, W] (5 dims), got {x.dim()} dims "
            f"with shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def t_to_sigma(t: Tensor | float) -> Tensor | float:
    """σ = 1 − t: flowmatch time (1 = data) to the diffusers noise level (1 = noise)."""
    return 1 - t


def sigma_to_t(sigma: Tensor | float) -> Tensor | float:
    """t = 1 − σ: the diffusers noise level to flowmatch time."""
    return 1 - sigma


def velocity_to_diffusers(u: Tensor) -> Tensor:
    """u = x1 − x0 (flowmatch, d/dt) to v = ε − x_data (diffusers, d/dσ): v = −u."""
    return -u


def diffusers_to_velocity(v: Tensor) -> Tensor:
    """v = ε − x_data (diffusers) to u = x_data − ε (flowmatch): u = −v."""
    return -v


def t_to_diffusers_timestep(
    t: Tensor | float, num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS
) -> Tensor | float:
    """The network input ``timestep`` of diffusers flow models: num_train_timesteps · (1 − t)."""
    return (1 - t) * num_train_timesteps


def diffusers_timestep_to_t(
    timestep: Tensor | float, num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS
) -> Tensor | float:
    """Inverse of :func:`t_to_diffusers_timestep`: t = 1 − timestep / num_train_timesteps."""
    return 1 - timestep / num_train_timesteps


def frame_time_like(t: Tensor | float, x: Tensor) -> Tensor:
    """Shape a time to broadcast against a video ``x`` of shape [B, C, T, H, W].

    * scalar or [B] (one time per clip) → [] or [B, 1, 1, 1, 1] (via the core
      ``expand_time_like``, so t is aligned with the batch axis, never the last one);
    * [B, T] (one time per frame) → [B, 1, T, 1, 1];
    * [1, T] broadcasts over the batch.
    """
    if not torch.is_tensor(t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() <= 1:
        return expand_time_like(t, x)
    if validation_enabled():
        check_video("x", x)
        if t.dim() != 2:
            raise ValueError(
                f"time must be a scalar, [B] or [B, T] (per frame), got shape {tuple(t.shape)}"
            )
        if t.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"per-frame time has batch size {t.shape[0]} but the video has {x.shape[0]}"
            )
        if t.shape[1] != x.shape[2]:
            raise ValueError(
                f"per-frame time has {t.shape[1]} frames but the video has T = {x.shape[2]} "
                f"(shape {tuple(x.shape)})"
            )
    return t.to(dtype=x.dtype)[:, None, :, None, None]

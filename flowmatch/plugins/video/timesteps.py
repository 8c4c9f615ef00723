"""Training-time t sampling, loss weightings, timestep shift and sampling-schedule builders.

Conventions (see :mod:`flowmatch.plugins.video.conventions`): flowmatch time t (0 = noise,
1 = data) and the diffusers noise level σ = 1 − t. The published formulas below (SD3,
Flux, Open-Sora) are written in σ; every function here says which one it takes and returns.

Shift. Larger videos have more tokens carrying the same signal, so at a given σ they are less
destroyed than small images; shifting σ upwards spends more steps at high noise:

    σ' = s·σ / (1 + (s − 1)·σ)              (static shift s > 0; s = 1 is the identity)

The "exponential" dynamic shift of diffusers, σ' = e^μ / (e^μ + (1/σ − 1)), is the same map with
s = e^μ. μ (or s) is chosen from the token count: Flux-style μ = m·seq_len + b interpolating
(base_seq_len, base_shift) → (max_seq_len, max_shift); Open-Sora 1.2 uses s = √(HW/512²)·√(5F/17);
Open-Sora 2.0 uses s = lin(seq_len; 256 → 1, 4096 → 3)·√T_latent.

diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps(N)`` shifts twice (its training
sigmas are already shifted before it spaces N values between their ends and shifts again): with
s = 3 and N = 28 its last σ is 0.00893, whereas the single-shift schedule ends at
3·0.001/(1 + 2·0.001) = 0.002994. :func:`flow_sigmas` shifts exactly once;
:func:`diffusers_double_shift_sigmas` reproduces the other one for comparison.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "auto_shift",
    "diffusers_double_shift_sigmas",
    "flow_sigmas",
    "flow_time_grid",
    "linear_mu",
    "loss_weight",
    "opensora_v12_shift",
    "opensora_v2_shift",
    "resolve_shift",
    "sample_training_t",
    "shift_sigma",
    "shift_t",
    "stretch_to_terminal",
    "token_count",
]

TimeSampling = Literal["uniform", "logit_normal", "mode"]
LossWeighting = Literal["none", "sigma_sqrt", "cosmap"]


def _check_shift(shift: float) -> float:
    shift = float(shift)
    if not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0 (1 = no shift), got {shift}")
    return shift


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """Static shift of a noise level: σ' = s·σ / (1 + (s − 1)·σ); keeps 0 ↦ 0 and 1 ↦ 1."""
    shift = _check_shift(shift)
    return shift * sigma / (1 + (shift - 1) * sigma)


def shift_t(t: Tensor, shift: float) -> Tensor:
    """The static shift written in flowmatch time: t' = 1 − shift_sigma(1 − t, s).

    Equivalently t' = t / (t + s·(1 − t)), so s > 1 moves every t towards noise (0).
    """
    shift = _check_shift(shift)
    return t / (t + shift * (1 - t))


def linear_mu(
    seq_len: int,
    *,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux/LTX-style μ = m·seq_len + b, the line through (base_seq_len, base_shift) and
    (max_seq_len, max_shift).

    Use with the exponential shift, i.e. a static shift of s = e^μ.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be a positive token count, got {seq_len}")
    if max_seq_len == base_seq_len:
        raise ValueError(f"max_seq_len must differ from base_seq_len, both are {base_seq_len}")
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return float(seq_len * m + b)


def token_count(latent_shape: tuple[int, ...], patch_size: tuple[int, int, int] = (1, 1, 1)) -> int:
    """Number of transformer tokens of a latent [C, T, H, W] (or [B, C, T, H, W]) patchified by
    (p_t, p_h, p_w): ⌈T/p_t⌉·⌈H/p_h⌉·⌈W/p_w⌉."""
    if len(latent_shape) not in (4, 5):
        raise ValueError(
            f"latent_shape must be [C, T, H, W] or [B, C, T, H, W], got {tuple(latent_shape)}"
        )
    t, h, w = latent_shape[-3:]
    pt, ph, pw = patch_size
    if min(pt, ph, pw) <= 0:
        raise ValueError(f"patch_size entries must be positive, got {patch_size}")
    return math.ceil(t / pt) * math.ceil(h / ph) * math.ceil(w / pw)


def opensora_v12_shift(
    height: int, width: int, num_frames: int, *, base_resolution: int = 512 * 512
) -> float:
    """Open-Sora 1.2's resolution- and length-aware shift s = √(HW/base)·√(5F/17) (pixel sizes).

    Open-Sora truncates F to a multiple of 17 (integer division); we use the real ratio so the
    shift is continuous in F, and a single frame (an image) gets no temporal factor.
    """
    if min(height, width, num_frames) <= 0:
        raise ValueError(
            f"height, width and num_frames must be positive, got {height}, {width}, {num_frames}"
        )
    ratio_space = math.sqrt(height * width / base_resolution)
    ratio_time = 1.0 if num_frames == 1 else math.sqrt(num_frames * 5 / 17)
    return ratio_space * ratio_time


def opensora_v2_shift(
    seq_len: int,
    num_latent_frames: int,
    *,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 1.0,
    max_shift: float = 3.0,
) -> float:
    """Open-Sora 2.0's shift s = lin(seq_len; base → max)·√T_latent (seq_len per latent frame)."""
    if num_latent_frames <= 0:
        raise ValueError(f"num_latent_frames must be positive, got {num_latent_frames}")
    lin = linear_mu(seq_len, base_seq_len=base_seq_len, max_seq_len=max_seq_len,
                    base_shift=base_shift, max_shift=max_shift)
    return lin * math.sqrt(num_latent_frames)


def auto_shift(
    latent_shape: tuple[int, ...],
    *,
    patch_size: tuple[int, int, int] = (1, 1, 1),
    rule: Literal["linear_mu", "opensora_v2"] = "linear_mu",
    shift: float | None = None,
    **rule_kwargs: float,
) -> float:
    """The static shift for a latent video from its token count, unless ``shift`` overrides it.

    * ``linear_mu``: s = e^μ with μ = :func:`linear_mu` (all tokens; Flux/LTX form). The line
      is extrapolated past max_seq_len as in Flux, and e^μ grows fast: with the Flux defaults
      a Wan-sized latent (32760 tokens) gets s ≈ 404, so set the rule's lengths for your model;
    * ``opensora_v2``: :func:`opensora_v2_shift` of the tokens per latent frame and the number
      of latent frames (√T' form).

    ``rule_kwargs`` go to the rule (e.g. base_seq_len, max_shift). An explicit ``shift`` is
    returned as given (after the s > 0 check): the user's choice wins over the heuristic.
    """
    if shift is not None:
        return _check_shift(shift)
    tokens = token_count(latent_shape, patch_size)
    if rule == "linear_mu":
        return math.exp(linear_mu(tokens, **rule_kwargs))
    if rule == "opensora_v2":
        frames = math.ceil(latent_shape[-3] / patch_size[0])
        return opensora_v2_shift(tokens // frames, frames, **rule_kwargs)
    raise ValueError(f"rule must be 'linear_mu' or 'opensora_v2', got {rule!r}")


def resolve_shift(*, shift: float | None = None, mu: float | None = None) -> float:
    """One static shift from an explicit ``shift`` or an exponential-shift ``mu`` (s = e^μ).

    Exactly one may be given (an explicit shift overrides any automatic choice by being the one
    the caller passes); neither means no shift (s = 1).
    """
    if shift is not None and mu is not None:
        raise ValueError(f"give shift or mu, not both (got shift={shift}, mu={mu})")
    if mu is not None:
        if not math.isfinite(mu):
            raise ValueError(f"mu must be finite, got {mu}")
        return math.exp(mu)
    return _check_shift(1.0 if shift is None else shift)


def stretch_to_terminal(sigmas: Tensor, terminal: float) -> Tensor:
    """LTX's terminal stretch: rescale 1 − σ so that the last σ equals ``terminal``.

    σ ↦ 1 − (1 − σ)·(1 − terminal)/(1 − σ_last); σ = 1 stays 1. ``sigmas`` excludes the final 0.
    """
    if not 0 < terminal < 1:
        raise ValueError(f"terminal must lie in (0, 1), got {terminal}")
    last = sigmas[-1]
    if float(last) >= 1:
        raise ValueError(f"cannot stretch a schedule whose last sigma is {float(last)} (≥ 1)")
    return 1 - (1 - sigmas) * (1 - terminal) / (1 - last)


def flow_sigmas(
    num_steps: int,
    *,
    shift: float | None = None,
    mu: float | None = None,
    sigma_max: float = 1.0,
    sigma_min: float = 1.0 / 1000,
    terminal: float | None = None,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Decreasing noise levels for sampling, shifted exactly once.

    σ_i = linspace(sigma_max, sigma_min, num_steps), then the static shift (``shift`` or s = e^μ),
    then an optional terminal stretch, then a final 0 (the data). Returns [num_steps + 1] (or
    [num_steps] without ``append_zero``). With shift 3 and 28 steps the last nonzero σ is
    0.002994 (diffusers' ``set_timesteps(28)`` gives 0.00893: it shifts twice).
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    if not 0 <= sigma_min < sigma_max <= 1:
        raise ValueError(
            f"need 0 ≤ sigma_min < sigma_max ≤ 1, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )
    s = resolve_shift(shift=shift, mu=mu)
    sigmas = torch.linspace(sigma_max, sigma_min, int(num_steps), dtype=torch.float64)
    sigmas = shift_sigma(sigmas, s)
    if terminal is not None:
        sigmas = stretch_to_terminal(sigmas, terminal)
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(dtype)


def flow_time_grid(num_steps: int, **kwargs) -> Tensor:
    """The schedule of :func:`flow_sigmas` in flowmatch time: t = 1 − σ, increasing to 1."""
    return 1 - flow_sigmas(num_steps, **kwargs)


def diffusers_double_shift_sigmas(
    num_steps: int, shift: float, num_train_timesteps: int = 1000
) -> Tensor:
    """What diffusers 0.42's ``FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(N)`` builds.

    Reproduced (not recommended) to show the double shift: the training sigmas
    linspace(1, N_train, N_train)/N_train are shifted, N values are spaced between their shifted
    ends, and the result is shifted again. Returns [N + 1] with the final 0.
    """
    s = _check_shift(shift)
    lo = shift_sigma(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64), s)
    sig = torch.linspace(1.0, float(lo), int(num_steps), dtype=torch.float64)
    sig = shift_sigma(sig, s)
    return torch.cat([sig, sig.new_zeros(1)])


# -- training ---------------------------------------------------------------------------------
def sample_training_t(
    batch_size: int,
    *,
    num_frames: int | None = None,
    independent_frames: bool = False,
    method: TimeSampling = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw flow times t ∈ (0, 1) for training (SD3's samplers, written for σ = 1 − t).

    * ``uniform``: σ ~ U(0, 1);
    * ``logit_normal``: σ = sigmoid(n), n ~ N(loc, scale²) (SD3 uses loc 0, scale 1; loc > 0
      favours noisy σ);
    * ``mode``: σ = 1 − u − c·(cos²(πu/2) − 1 + u), u ~ U(0, 1), c = ``mode_scale``
      (SD3 uses 1.29; c must lie in [−1, 2/(π − 2)] for the map to be monotone).

    Then the static ``shift`` (on σ) and t = 1 − σ. Returns [B], or [B, T] when ``num_frames``
    is given: the same t for every frame of a clip, or, with ``independent_frames``, one
    independent draw per frame (diffusion-forcing-style training).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_frames is not None and num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    n = num_frames if (num_frames is not None and independent_frames) else 1
    shape = (batch_size, n)
    if method == "uniform":
        sigma = torch.rand(shape, generator=generator, dtype=torch.float64)
    elif method == "logit_normal":
        if scale <= 0:
            raise ValueError(f"scale must be > 0 for logit_normal, got {scale}")
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
        sigma = torch.sigmoid(loc + scale * z)
    elif method == "mode":
        if not -1 <= mode_scale <= 2 / (math.pi - 2):
            raise ValueError(
                f"mode_scale must lie in [-1, {2 / (math.pi - 2):.4f}] for a monotone map, "
                f"got {mode_scale}"
            )
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        sigma = 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    else:
        raise ValueError(
            f"method must be 'uniform', 'logit_normal' or 'mode', got {method!r}"
        )
    sigma = shift_sigma(sigma, shift)
    t = (1 - sigma).to(dtype=dtype, device=device)
    if num_frames is None:
        return t[:, 0]
    return t.expand(batch_size, num_frames).contiguous()


def loss_weight(t: Tensor, kind: LossWeighting = "none") -> Tensor:
    """SD3 loss weights as a function of σ = 1 − t (same shape as t).

    * ``none``: 1;
    * ``sigma_sqrt``: σ⁻² (undefined at σ = 0, i.e. t = 1, which raises);
    * ``cosmap``: 2 / (π(1 − 2σ + 2σ²)), the density of the cosine-mapped schedule.
    """
    sigma = 1 - t
    if kind == "none":
        return torch.ones_like(t)
    if kind == "sigma_sqrt":
        if bool((sigma <= 0).any()):
            raise ValueError("sigma_sqrt weighting σ⁻² is infinite at t = 1; sample t in [0, 1)")
        return sigma.pow(-2)
    if kind == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma.pow(2)))
    raise ValueError(f"kind must be 'none', 'sigma_sqrt' or 'cosmap', got {kind!r}")

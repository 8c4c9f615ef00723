"""Turn a pretrained diffusion model into a velocity field on the rectified-flow time axis.

A diffusion model was trained on x_k = a_k·x_data + s_k·ε (variance preserving: a² + s² = 1)
and predicts ε (ε-prediction) or v = a·ε − s·x_data (v-prediction). A flow solver integrates
the straight path x_t = t·x_data + (1 − t)·ε on t ∈ [0, 1]. The two describe the same Gaussian
family up to a change of time and a scaling of the state:

1. **SNR matching.** At flow time t the signal-to-noise ratio is t/(1 − t); the diffusion time
   with the same a/s is found by inverting the diffusion schedule's SNR.
2. **State rescaling.** Then a/s = t/(1 − t), and x_diff = x_t·s/(1 − t) = x_t·a/t, i.e.
   x_diff = x_t / √(t² + (1 − t)²).
3. **Velocity.** From ε̂ (for v-prediction ε̂ = s·x_diff + a·v̂) the data estimate is
   x̂ = (x_diff − s·ε̂)/a, and on the straight path u = x̂ − ε̂ (flowmatch sign; diffusers'
   v = ε̂ − x̂ is −u).

Classifier-free guidance may be applied to ε̂ or to u: both are affine in the model output with
the same coefficients, so the results agree.

**Range guard.** A diffusion model only saw the SNRs of its schedule: a discrete DDPM table
ᾱ_0 > … > ᾱ_{K−1} covers flow times t with SNR between √(ᾱ_{K−1}/(1 − ᾱ_{K−1})) and
√(ᾱ_0/(1 − ᾱ_0)) (SD's scaled-linear betas: σ_RF = 1 − t ∈ [0.028, 0.936]). Outside that range
the adapter raises unless told to clamp — start sampling at ``adapter.t_min``
(e.g. ``flow_time_grid(..., sigma_max=adapter.sigma_rf_max)``) from noise at that level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from flowmatch._validation import validation_enabled
from flowmatch.paths import Scheduler
from flowmatch.plugins.video.conventions import frame_time_like

__all__ = ["DiffusionAsFlow", "FlowModelAsField", "ddpm_alphas_cumprod"]

Prediction = Literal["epsilon", "v"]


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                        beta_end: float = 0.012,
                        schedule: Literal["linear", "scaled_linear"] = "scaled_linear") -> Tensor:
    """ᾱ_k = ∏_{j ≤ k} (1 − β_j) for the DDPM beta schedules (SD's default: scaled_linear)."""
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                               dtype=torch.float64) ** 2
    else:
        raise ValueError(f"schedule must be 'linear' or 'scaled_linear', got {schedule!r}")
    return torch.cumprod(1 - betas, dim=0)


class DiffusionAsFlow(nn.Module):
    """Velocity field u(x, t) (flowmatch time, CondOT path) backed by a diffusion model.

    Give exactly one diffusion schedule:

    * ``alphas_cumprod``: a discrete DDPM table [K] (decreasing); the model is called with a
      *fractional* timestep k found by interpolating log-SNR linearly between table entries
      (models with sinusoidal time embeddings accept real k); a, s are the interpolated values;
    * ``scheduler``: a continuous core scheduler (e.g. ``VPScheduler()``), whose time τ ∈ [0, 1]
      (0 = noise, 1 = data, the core convention) is passed to the model; needs ``snr_inverse``.

    ``model(x_diff, timestep, **cond)`` returns ε̂ or v̂ shaped like x (``prediction``). ``t``
    may be [B] or per-frame [B, T]. ``out_of_range`` = "raise" (default) or "clamp" (evaluate
    at the nearest covered SNR — a documented approximation, not silent: it is opt-in).
    """

    def __init__(self, model: Callable[..., Tensor], *, prediction: Prediction = "epsilon",
                 alphas_cumprod: Tensor | None = None, scheduler: Scheduler | None = None,
                 out_of_range: Literal["raise", "clamp"] = "raise") -> None:
        super().__init__()
        if prediction not in ("epsilon", "v"):
            raise ValueError(f"prediction must be 'epsilon' or 'v', got {prediction!r}")
        if (alphas_cumprod is None) == (scheduler is None):
            raise ValueError("give exactly one of alphas_cumprod (discrete) or scheduler "
                             "(continuous)")
        if out_of_range not in ("raise", "clamp"):
            raise ValueError(f"out_of_range must be 'raise' or 'clamp', got {out_of_range!r}")
        self.model = model
        self.prediction = prediction
        self.out_of_range = out_of_range
        self.scheduler = scheduler
        if alphas_cumprod is not None:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
            if ac.numel() < 2 or bool(((ac <= 0) | (ac >= 1)).any()):
                raise ValueError("alphas_cumprod must hold ≥ 2 values in (0, 1)")
            if bool((ac[1:] >= ac[:-1]).any()):
                raise ValueError("alphas_cumprod must be strictly decreasing (k = 0 is cleanest)")
            self.register_buffer("log_snr", torch.log(ac) - torch.log1p(-ac))  # log(a²/s²)
            lo, hi = float(self.log_snr[-1]), float(self.log_snr[0])
        else:
            # the continuous schedule covers τ ∈ (0, 1); τ = 1 has σ = 0 (infinite SNR)
            lo = float(2 * torch.log(scheduler.snr(torch.tensor(0.0, dtype=torch.float64))))
            hi = float("inf")
        self.log_snr_min, self.log_snr_max = lo, hi

    @property
    def sigma_rf_max(self) -> float:
        """The noisiest rectified-flow σ = 1 − t the diffusion model covers: s/(a + s)."""
        return float(1 / (1 + torch.exp(torch.tensor(0.5 * self.log_snr_min))))

    @property
    def t_min(self) -> float:
        """Earliest flow time the model covers (start sampling here, not at 0)."""
        return 1 - self.sigma_rf_max

    def _match(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Diffusion timestep, a and s with a/s = t/(1 − t)."""
        tt = t.to(torch.float64)
        log_snr = 2 * (torch.log(tt) - torch.log1p(-tt))
        bad = (log_snr < self.log_snr_min - 1e-9) | (log_snr > self.log_snr_max + 1e-9)
        if bool(bad.any()):
            if self.out_of_range == "raise" and validation_enabled():
                lo_t, hi_t = self.t_min, 1 - float(
                    1 / (1 + torch.exp(torch.tensor(0.5 * self.log_snr_max))))
                raise ValueError(
                    f"t must lie in the flow times the diffusion model covers, "
                    f"[{lo_t:.6g}, {hi_t:.6g}] (σ_RF = 1 − t ≤ {self.sigma_rf_max:.6g}), got "
                    f"t in [{float(tt.min()):.6g}, {float(tt.max()):.6g}]; start sampling at "
                    f"t_min or pass out_of_range='clamp'"
                )
            log_snr = log_snr.clamp(self.log_snr_min, self.log_snr_max)
        a = torch.sigmoid(log_snr).sqrt()  # a² = snr²/(1 + snr²) with snr² = e^{log_snr}
        s = torch.sigmoid(-log_snr).sqrt()
        if self.scheduler is not None:
            timestep = self.scheduler.snr_inverse(torch.exp(0.5 * log_snr))
        else:
            # log-SNR decreases in k: interpolate k linearly in log-SNR between table entries
            table = self.log_snr.flip(0)  # increasing
            K = table.shape[0]
            j = torch.searchsorted(table, log_snr.contiguous()).clamp(1, K - 1)
            l0, l1 = table[j - 1], table[j]
            frac = ((log_snr - l0) / (l1 - l0)).clamp(0, 1)
            k_flipped = (j - 1) + frac
            timestep = (K - 1) - k_flipped
        return timestep, a, s

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        timestep, a, s = self._match(t)
        a5, s5 = frame_time_like(a, x.double()), frame_time_like(s, x.double())
        # x_diff = x_t·a/t = x_t / √(t² + (1−t)²) since a/s = t/(1−t) and a² + s² = 1
        tt = frame_time_like(t.to(torch.float64), x.double())
        scale = 1 / (tt.pow(2) + (1 - tt).pow(2)).sqrt()
        x_d = x.to(torch.float64) * scale
        out = self.model(x_d.to(x.dtype), timestep.to(x.dtype), **cond).to(torch.float64)
        if self.prediction == "epsilon":
            eps = out
        else:
            eps = s5 * x_d + a5 * out
        x_hat = (x_d - s5 * eps) / a5
        return (x_hat - eps).to(x.dtype)


class FlowModelAsField(nn.Module):
    """A diffusers-convention flow model as a flowmatch velocity field.

    diffusers flow transformers (SD3, Wan, HunyuanVideo, LTX) are called with
    ``timestep = num_train_timesteps·σ`` and return v = ε − x_data. This wraps such a callable
    ``model(x, timestep, **cond)`` as u(x, t) = −model(x, num_train_timesteps·(1 − t), **cond),
    so flowmatch samplers (and :class:`MultiBranchGuidance`) can drive it. ``t`` may be [B] or
    per-frame [B, T]; the timestep has the same shape.
    """

    def __init__(self, model: Callable[..., Tensor], num_train_timesteps: int = 1000) -> None:
        super().__init__()
        if num_train_timesteps <= 0:
            raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
        self.model = model
        self.num_train_timesteps = num_train_timesteps

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        timestep = (1 - t.to(x.dtype)) * self.num_train_timesteps
        return -self.model(x, timestep, **cond)

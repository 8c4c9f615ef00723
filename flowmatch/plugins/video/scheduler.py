"""A diffusers-compatible flow-matching scheduler (Euler, Heun, midpoint), usable in pipelines.

It follows the contract of diffusers' ``FlowMatchEulerDiscreteScheduler`` that video pipelines
(Wan, LTX-Video, HunyuanVideo, …) rely on — ``set_timesteps`` / ``timesteps`` / ``sigmas`` /
``step`` / ``scale_noise`` / ``order`` / ``set_begin_index`` / ``config`` — in diffusers'
convention: σ = 1 is noise, the model output is v = ε − x_data, ``timestep = 1000·σ``.
diffusers itself is not needed to use it.

Differences from diffusers 0.42, on purpose:

* ``set_timesteps(N)`` spaces N noise levels linearly between 1 and ``sigma_min`` (1/1000) and
  shifts them **once**; diffusers shifts twice (shift 3, 28 steps: last σ 0.002994 here,
  0.00893 there). Passing ``sigmas`` behaves as in diffusers (they are shifted once), which is
  how step-by-step parity is tested.
* ``method="heun"`` or ``"midpoint"`` gives a second-order step (``order = 2``): the pipeline
  loop calls the model twice per step, the way diffusers' Heun scheduler works — ``timesteps``
  lists every evaluation and ``sigmas[i]`` is the σ of evaluation i (2N evaluations; Heun's
  last step into σ = 0 is Euler by default, 2N − 1).
* ``set_timesteps(timesteps=…)`` alone shifts the σ's and reports the shifted timesteps, so the
  model is evaluated where the state is; diffusers keeps the timesteps as given and shifts only
  the σ's. The two agree when the shift is the identity (shift 1, no ``shift_terminal``).
* ``step(…, per_token_timesteps=…)`` (what ``LTXConditionPipeline`` passes) follows diffusers'
  per-token rule and its flipped sign, see ``step``; with ``stochastic_sampling`` the data
  estimate uses that flipped sign too (diffusers 0.42 does not, and so estimates
  x + σ·v instead of x − σ·v there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from flowmatch.plugins.video.timesteps import flow_sigmas, shift_sigma, stretch_to_terminal

__all__ = ["FlowMatchScheduler", "FlowMatchSchedulerOutput", "SchedulerConfig"]

Method = Literal["euler", "heun", "midpoint"]


class SchedulerConfig(dict):
    """A dict whose keys are also attributes (what pipelines read as ``scheduler.config.x``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class FlowMatchSchedulerOutput:
    """``prev_sample``: the state after the step (or after a Heun/midpoint stage)."""

    prev_sample: Tensor

    def __getitem__(self, i: int) -> Tensor:
        return (self.prev_sample,)[i]


class FlowMatchScheduler:
    """Fixed-grid flow-matching sampler with the diffusers scheduler interface.

    Args:
        num_train_timesteps: the model's ``timestep`` is this times σ.
        shift: static shift σ' = sσ/(1 + (s − 1)σ) (s > 0).
        use_dynamic_shifting: shift by the μ that ``set_timesteps`` receives (as diffusers;
            μ is ignored otherwise, also as diffusers). ``base_shift``, ``max_shift``,
            ``base_image_seq_len``, ``max_image_seq_len`` are stored for pipelines that compute
            μ from the token count (LTX, Flux: μ linear in the number of latent tokens).
        time_shift_type: how μ becomes a static shift: "exponential" s = e^μ (diffusers'
            default, LTX), or "linear" s = μ (μ > 0).
        shift_terminal: stretch the schedule so its last σ is this value (LTX).
        sigma_min: smallest nonzero σ of the default linear grid.
        method: "euler" (order 1), "heun" or "midpoint" (order 2, two model calls per step).
        stochastic_sampling: Euler only; replace the step by x̂_data re-noised to σ_next with fresh
            noise (diffusers' option; a different sampler, not an ODE solver).
        final_euler: Heun only; take the last step into σ = 0 with Euler, skipping the
            corrector's model call at σ = 0 (k-diffusion / EDM convention: a trained network is
            least reliable at the clean end). The order stays 2; a schedule of N steps then
            costs 2N − 1 model calls.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        shift_terminal: float | None = None,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        sigma_min: float = 1.0 / 1000,
        method: Method = "euler",
        stochastic_sampling: bool = False,
        final_euler: bool = True,
    ) -> None:
        if method not in ("euler", "heun", "midpoint"):
            raise ValueError(f"method must be 'euler', 'heun' or 'midpoint', got {method!r}")
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a finite number > 0 (1 = no shift), got {shift}")
        if num_train_timesteps <= 0:
            raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
        if shift_terminal is not None and not 0 < shift_terminal < 1:
            raise ValueError(f"shift_terminal must lie in (0, 1), got {shift_terminal}")
        if stochastic_sampling and method != "euler":
            raise ValueError("stochastic_sampling is defined for method='euler' only")
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got "
                             f"{time_shift_type!r}")
        self.config = SchedulerConfig(
            num_train_timesteps=int(num_train_timesteps), shift=float(shift),
            use_dynamic_shifting=bool(use_dynamic_shifting), base_shift=base_shift,
            max_shift=max_shift, base_image_seq_len=base_image_seq_len,
            max_image_seq_len=max_image_seq_len, shift_terminal=shift_terminal,
            time_shift_type=time_shift_type, sigma_min=sigma_min, method=method,
            stochastic_sampling=bool(stochastic_sampling), final_euler=bool(final_euler),
            invert_sigmas=False,
        )
        self.order = 1 if method == "euler" else 2
        self.init_noise_sigma = 1.0
        self._shift = float(shift)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self.step_sigmas = torch.empty(0)
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._stage: dict[str, Tensor] = {}
        self._plan: list[tuple[int, str]] = []  # per model call: (step k, "euler"|"first"|"second")

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- bookkeeping that pipelines use ---------------------------------------------------
    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"shift must be a finite number > 0, got {shift}")
        self._shift = float(shift)

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = int(begin_index)

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """Flow models take the state unscaled (kept for pipelines that call it)."""
        return sample

    # -- schedule --------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | Tensor | None = None,
        mu: float | None = None,
        timesteps: list[float] | Tensor | None = None,
    ) -> None:
        """Build the σ grid of ``num_inference_steps`` steps (shifted once) and its timesteps.

        ``sigmas`` (decreasing, without the final 0) replaces the default linear grid and is
        then shifted, as in diffusers; ``timesteps`` alone means sigmas = timesteps / N_train.
        With ``use_dynamic_shifting`` the shift is s = e^μ (or μ for ``time_shift_type=
        "linear"``) — what LTXPipeline passes: sigmas = linspace(1, 1/N, N) and μ from the
        latent token count — followed by the ``shift_terminal`` stretch if configured.
        """
        cfg = self.config
        if cfg.use_dynamic_shifting:
            if mu is None:
                raise ValueError("mu must be passed when use_dynamic_shifting is True")
            if not math.isfinite(mu) or (cfg.time_shift_type == "linear" and mu <= 0):
                raise ValueError(f"mu must be finite (and > 0 for time_shift_type='linear'), "
                                 f"got {mu}")
            shift = math.exp(mu) if cfg.time_shift_type == "exponential" else float(mu)
        else:
            shift = self._shift
        if sigmas is None and timesteps is not None:
            sigmas = torch.as_tensor(timesteps, dtype=torch.float64) / cfg.num_train_timesteps
        if sigmas is not None:
            # float32 like diffusers, so the same grid gives the same steps bit for bit
            sig = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
            if num_inference_steps is not None and sig.numel() != num_inference_steps:
                raise ValueError(f"sigmas has {sig.numel()} values but num_inference_steps is "
                                 f"{num_inference_steps}")
            if sig.numel() < 1 or bool(((sig < 0) | (sig > 1)).any()):
                raise ValueError("sigmas must be a non-empty list of noise levels in [0, 1]")
            if bool((sig[1:] >= sig[:-1]).any()):
                raise ValueError("sigmas must be strictly decreasing (σ = 1 is noise)")
            sig = shift_sigma(sig, shift)
            if cfg.shift_terminal:
                sig = stretch_to_terminal(sig, cfg.shift_terminal)
            sig = torch.cat([sig, sig.new_zeros(1)])
        else:
            if num_inference_steps is None:
                raise ValueError("give num_inference_steps, sigmas or timesteps")
            sig = flow_sigmas(num_inference_steps, shift=shift, sigma_min=cfg.sigma_min,
                              terminal=cfg.shift_terminal)
        steps = sig.to(torch.float32)
        n = steps.numel() - 1
        self.num_inference_steps = n
        self.step_sigmas = steps.to(device)
        method = self.config.method
        plan: list[tuple[int, str]] = []
        evals_list: list[Tensor] = []
        for k in range(n):
            s0, s1 = steps[k], steps[k + 1]
            last_into_zero = k == n - 1 and float(s1) == 0.0
            if method == "euler" or (method == "heun" and cfg.final_euler and last_into_zero):
                plan.append((k, "euler"))
                evals_list.append(s0)
            else:
                plan += [(k, "first"), (k, "second")]
                evals_list += [s0, s1 if method == "heun" else 0.5 * (s0 + s1)]
        evals = torch.stack(evals_list)
        self._plan = plan
        self.sigmas = torch.cat([evals, evals.new_zeros(1)]).to(device)
        self.timesteps = (evals * cfg.num_train_timesteps).to(device)
        self._step_index = None
        self._begin_index = None
        self._stage = {}

    def _init_step_index(self, timestep: Tensor | float) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        ts = self.timesteps
        value = torch.as_tensor(timestep, dtype=ts.dtype, device=ts.device).flatten()[0]
        hits = (ts == value).nonzero().flatten().tolist()
        starts = [i for i in hits if self._plan[i][1] != "second"]  # a step starts here
        if not starts:
            raise ValueError(f"timestep {float(value)} is not the start of a step of this "
                             f"schedule (timesteps {ts.tolist()})")
        self._step_index = starts[0]

    # -- sampling --------------------------------------------------------------------------
    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        *,
        per_token_timesteps: Tensor | None = None,
    ) -> FlowMatchSchedulerOutput | tuple[Tensor]:
        """Advance ``sample`` by one model evaluation's worth of the current step.

        Euler: x ← x + (σ_next − σ)·v. Heun: stage 1 returns the Euler predictor at σ_next,
        stage 2 returns x + (σ_next − σ)·(v₁ + v₂)/2. Midpoint: stage 1 returns the state at
        (σ + σ_next)/2, stage 2 returns x + (σ_next − σ)·v_mid.

        ``per_token_timesteps`` (diffusers' contract, passed by ``LTXConditionPipeline``): one
        timestep per token, broadcastable to ``sample.shape[:-1]`` (packed latents
        [B, tokens, C], channels last), finite and in [0, ``num_train_timesteps``]. Token j sits
        at σ_j = timestep_j / N_train and steps to σ'_j, the largest σ of the step grid
        (``step_sigmas``) below σ_j − 10⁻⁶, or 0 if there is none; a token at σ = 0 does not
        move. In this mode **model_output is −v**: diffusers computes dt = σ_j − σ'_j ≥ 0 and
        x + dt·model_output, and the pipeline passes ``-noise_pred`` to get the Euler step
        x + (σ'_j − σ_j)·v. We keep that contract, so the same pipeline works with either
        scheduler. With ``stochastic_sampling`` the data estimate is accordingly
        x + σ_j·model_output = x − σ_j·v (diffusers 0.42 writes x − σ_j·model_output there, the
        wrong sign for this contract). Heun and midpoint fix (σ_j, σ'_j) in stage "first" and
        finish that step in stage "second", whose per-token timesteps are checked but not used:
        the pipeline makes the second model call at the grid's next evaluation, so for a token
        off the grid (in LTXConditionPipeline: a conditioning of strength < 1) it is not at σ'_j
        or the midpoint. Both stages of a step must use the same convention. The result stays
        float32, as in diffusers.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if isinstance(timestep, int) or (torch.is_tensor(timestep)
                                         and not timestep.is_floating_point()):
            raise ValueError("timestep must be one of scheduler.timesteps (a float), not an "
                             "integer index")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i >= self.timesteps.numel():
            raise ValueError(f"step called {i + 1} times but the schedule has "
                             f"{self.timesteps.numel()} model evaluations")
        k, stage = self._plan[i]
        if stage == "second" and bool(self._stage.get("per_token")) != (
                per_token_timesteps is not None):
            got = ("had them and stage 2 has none" if self._stage.get("per_token")
                   else "had none and stage 2 has them")
            raise ValueError(f"per_token_timesteps must be given in both stages of a "
                             f"{self.config.method} step or in neither (the sign of model_output "
                             f"depends on it), but stage 1 of step {k} {got}")
        if per_token_timesteps is not None:
            prev = self._per_token_step(stage, model_output, sample, per_token_timesteps,
                                        generator)
            self._step_index = i + 1
            return (prev,) if not return_dict else FlowMatchSchedulerOutput(prev_sample=prev)
        sig = self.step_sigmas.to(sample.device)
        s0, s1 = sig[k], sig[k + 1]
        x = sample.to(torch.float32)
        v = model_output.to(torch.float32)
        method = self.config.method
        if stage == "euler":
            if self.config.stochastic_sampling:
                x_data = x - s0 * v
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                    device=x.device)
                prev = (1 - s1) * x_data + s1 * noise
            else:
                prev = x + (s1 - s0) * v
        elif stage == "first":
            self._stage = {"x": x, "v": v}
            h = s1 - s0 if method == "heun" else 0.5 * (s1 - s0)
            prev = x + h * v
        else:
            x0, v0 = self._stage.pop("x"), self._stage.pop("v")
            prev = x0 + (s1 - s0) * (0.5 * (v0 + v) if method == "heun" else v)
        self._step_index = i + 1
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return (prev,)
        return FlowMatchSchedulerOutput(prev_sample=prev)

    def _token_sigmas(self, per_token_timesteps: Tensor, sample: Tensor) -> Tensor:
        """σ of every token (float32, broadcastable to ``sample.shape[:-1]``), validated."""
        shape = tuple(sample.shape[:-1])
        t = torch.as_tensor(per_token_timesteps, device=sample.device)
        try:
            fits = torch.broadcast_shapes(t.shape, shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"per_token_timesteps must broadcast to sample.shape[:-1] = "
                             f"{list(shape)} (one timestep per token; sample is "
                             f"{list(sample.shape)}, channels last), but has shape "
                             f"{list(t.shape)}")
        n = self.config.num_train_timesteps
        t = t.to(torch.float64)
        if t.numel() and not (bool(torch.isfinite(t).all()) and 0 <= float(t.min())
                              and float(t.max()) <= n):
            raise ValueError(f"per_token_timesteps must be finite and lie in [0, {n}], but range "
                             f"from {float(t.min())} to {float(t.max())}")
        # dividing in float64 and rounding to float32 equals diffusers' float32 division of float32
        # timesteps (53 ≥ 2·24 + 2 bits: the double rounding is harmless), and gives a float32
        # grid σ back exactly from the float64 timestep N_train·σ
        return (t / n).to(torch.float32)

    def _per_token_step(self, stage: str, model_output: Tensor, sample: Tensor,
                        per_token_timesteps: Tensor, generator: torch.Generator | None) -> Tensor:
        """One evaluation's update in diffusers' per-token convention (model_output = −v)."""
        s = self._token_sigmas(per_token_timesteps, sample)
        x = sample.to(torch.float32)
        m = model_output.to(torch.float32)
        method = self.config.method
        if stage == "second":
            x0, m0, h = self._stage.pop("x"), self._stage.pop("v"), self._stage.pop("h")
            self._stage.clear()
            prev = x0 + h * (0.5 * (m0 + m) if method == "heun" else m)
            return torch.where(h == 0, x, prev)  # a token that began at σ = 0 keeps its state
        grid = self.step_sigmas.to(x.device)
        grid = grid.reshape(-1, *([1] * s.dim()))
        # next σ per token: the largest grid σ strictly below its own (10⁻⁶ slack), else 0
        s_next = ((grid < s - 1e-6) * grid).amax(dim=0)
        h = (s - s_next)[..., None]  # σ − σ_next ≥ 0; times model_output = −v it steps down
        if stage == "euler":
            if self.config.stochastic_sampling:
                x_data = x + s[..., None] * m  # x − σ·v with v = −model_output
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                    device=x.device)
                prev = (1 - s_next[..., None]) * x_data + s_next[..., None] * noise
            else:
                prev = x + h * m
        else:
            self._stage = {"x": x, "v": m, "h": h, "per_token": True}
            prev = x + (h if method == "heun" else 0.5 * h) * m
        return torch.where(h == 0, x, prev)  # σ = 0: the token does not move

    def scale_noise(self, sample: Tensor, timestep: float | Tensor, noise: Tensor) -> Tensor:
        """Forward process at σ = timestep / N_train: σ·noise + (1 − σ)·sample (per batch)."""
        ts = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device)
        sigma = ts / self.config.num_train_timesteps
        if sigma.dim() == 1:
            sigma = sigma.reshape(-1, *([1] * (sample.dim() - 1)))
        if bool(((sigma < 0) | (sigma > 1)).any()):
            raise ValueError(f"timestep must lie in [0, {self.config.num_train_timesteps}], got "
                             f"{ts.tolist()}")
        return sigma * noise + (1 - sigma) * sample

    def __repr__(self) -> str:
        c = self.config
        return (f"FlowMatchScheduler(method={c.method!r}, shift={self._shift:g}, "
                f"dynamic={c.use_dynamic_shifting}, shift_terminal={c.shift_terminal})")

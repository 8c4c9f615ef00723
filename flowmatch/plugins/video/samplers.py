"""Fixed-grid ODE samplers for video flows, with frozen frames, re-noising and guidance.

A video velocity field is called ``field(x, t, **cond)`` with x of shape [B, C, T, H, W] and t of
shape [B] (one time per clip) or [B, T] (one time per frame), in flowmatch time (0 = noise,
1 = data); it returns the velocity u = dx/dt, shaped like x.

Conditioning frames (a boolean ``known`` mask over frames, True = given) enter in one of two ways:

* ``"per_frame"`` (for a field trained with frame masks): known frames are the clean reference,
  they are passed with t = 1 and never move; the field sees [B, T] times. With the exact
  conditional field this samples the exact conditional distribution.
* ``"replace"`` (for an unconditional field): after every step the known frames are overwritten
  by the reference noised to the current time, t·ref + (1 − t)·x0. This is *biased*: an
  unconditional field never learned how clean information in some frames should steer the
  others, only what noisy frames at the same t imply (tests/test_video_conditioning.py shows it
  with the exact field, tests/test_video_trained_conditioning.py with a trained network whose
  mask-conditioned path is unbiased on the same data).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from flowmatch._validation import check_finite, validation_enabled
from flowmatch.plugins.video.conventions import check_video, frame_time_like

__all__ = ["MultiBranchGuidance", "VideoSampler", "renoise", "sample_video"]

Method = Literal["euler", "heun", "midpoint"]
Conditioning = Literal["per_frame", "replace"]
_METHODS = ("euler", "heun", "midpoint")


def renoise(x: Tensor, t: Tensor, t_back: Tensor, *, generator: torch.Generator | None = None
            ) -> Tensor:
    """Move x_t on the straight path back to an earlier time t_back ≤ t, exactly in law.

    x_t = t·x1 + (1 − t)·ε, so (t_back/t)·x_t = t_back·x1 + (t_back/t)(1 − t)·ε, and adding
    independent Gaussian noise of variance (1 − t_back)² − (t_back/t)²(1 − t)² ≥ 0 gives a
    sample of x_{t_back} with the same x1. ``t`` and ``t_back`` are [B] (or [B, T]); t > 0.
    """
    if validation_enabled():
        if bool((t_back > t).any()) or bool((t <= 0).any()):
            raise ValueError("renoise needs 0 < t and t_back ≤ t")
    tt, tb = frame_time_like(t, x), frame_time_like(t_back, x)
    ratio = tb / tt
    var = ((1 - tb) ** 2 - (ratio * (1 - tt)) ** 2).clamp_min(0)  # ≥ 0 analytically; rounding
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return ratio * x + var.sqrt() * noise


def _as_frame_mask(known: Tensor, x: Tensor) -> Tensor:
    """Validate a frame mask [T] or [B, T] (bool) against video x; return [B, T] bool."""
    if known.dtype != torch.bool:
        raise ValueError(f"known must be a boolean frame mask, got dtype {known.dtype}")
    if known.dim() == 1:
        known = known.unsqueeze(0)
    if known.dim() != 2:
        raise ValueError(f"known must have shape [T] or [B, T], got {tuple(known.shape)}")
    if known.shape[1] != x.shape[2]:
        raise ValueError(
            f"known has {known.shape[1]} frames but the video has T = {x.shape[2]} "
            f"(shape {tuple(x.shape)})"
        )
    if known.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"known has batch size {known.shape[0]} but the video has {x.shape[0]}")
    return known.expand(x.shape[0], x.shape[2])


class VideoSampler:
    """Euler, Heun (trapezoidal predictor-corrector) or midpoint on a fixed time grid.

    ``nfe`` holds the number of field evaluations of the last :meth:`sample` call
    (Euler 1, Heun and midpoint 2 per step). Orders: Euler 1, Heun and midpoint 2.

    ``final_euler`` (Heun only, default True): a last step that ends at t = 1 (the data) is
    taken with Euler, skipping the corrector's call at t = 1 — where a trained field has seen
    the least data (k-diffusion/EDM convention). One Euler step's local error is O(h²), so
    the global order stays 2; N steps cost 2N − 1 calls.
    """

    def __init__(self, field: Callable[..., Tensor], method: Method = "euler", *,
                 final_euler: bool = True) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        self.field = field
        self.method = method
        self.final_euler = bool(final_euler)
        self.nfe = 0

    def _eval(self, x: Tensor, t: Tensor, frozen: Tensor | None, cond: dict[str, Any]) -> Tensor:
        self.nfe += 1
        if frozen is None:
            return self.field(x, t, **cond)
        tt = t if t.dim() == 2 else t[:, None]
        tf = torch.where(frozen, torch.ones_like(frozen, dtype=x.dtype), tt)
        u = self.field(x, tf, **cond)
        # Known frames are data already: they must not move whatever the field says there.
        return u * (~frozen)[:, None, :, None, None].to(u.dtype)

    @torch.no_grad()
    def sample(
        self,
        x0: Tensor,
        *,
        time_grid: Tensor | Sequence[float] | None = None,
        num_steps: int | None = None,
        known: Tensor | None = None,
        reference: Tensor | None = None,
        conditioning: Conditioning = "per_frame",
        renoise_fraction: float = 0.0,
        generator: torch.Generator | None = None,
        return_intermediates: bool = False,
        **cond: Any,
    ) -> Tensor:
        """Integrate dx/dt = u(x, t) from the noise x0 along ``time_grid`` (increasing to 1).

        Args:
            x0: noise, [B, C, T, H, W].
            time_grid: increasing times [N + 1] starting where x0 lives (usually 0) — e.g.
                :func:`flow_time_grid`; or ``num_steps`` for a uniform grid on [0, 1]. A
                per-frame grid [N + 1, T] (non-decreasing in each frame) gives every frame its
                own schedule — staggered or rolling denoising; the field then gets [B, T] times
                and frame k moves by (t_{i+1,k} − t_{i,k})·u_k.
            known, reference: frame mask [T] or [B, T] (True = given) and the clean video whose
                known frames condition the sample; see the module docstring for ``conditioning``.
            renoise_fraction: before each step from t_i > 0, step back to
                t_i − f·(t_{i+1} − t_i) with exact re-noising (stochastic sampling; 0 = ODE).
            return_intermediates: return [N + 1, B, C, T, H, W] states instead of the last one.
            **cond: passed to the field on every call.
        """
        check_video("x0", x0)
        check_finite("x0", x0)
        grid = self._grid(time_grid, num_steps, x0)
        per_frame_grid = grid.dim() == 2
        if not 0 <= renoise_fraction < 1:
            raise ValueError(f"renoise_fraction must lie in [0, 1), got {renoise_fraction}")
        if renoise_fraction > 0 and per_frame_grid:
            raise ValueError("renoise_fraction needs a shared time grid [N + 1], not per-frame")
        if conditioning not in ("per_frame", "replace"):
            raise ValueError(
                f"conditioning must be 'per_frame' or 'replace', got {conditioning!r}"
            )
        frozen = None
        if (known is None) != (reference is None):
            raise ValueError("known and reference must be given together")
        if known is not None:
            check_video("reference", reference)
            if reference.shape != x0.shape:
                raise ValueError(
                    f"reference must be shaped like x0 {tuple(x0.shape)}, got "
                    f"{tuple(reference.shape)}"
                )
            mask = _as_frame_mask(known, x0)
            m5 = mask[:, None, :, None, None]
        self.nfe = 0
        B = x0.shape[0]

        def spread(t: Tensor) -> Tensor:
            """A grid time (scalar or [T]) against x: [] or [1, 1, T, 1, 1]."""
            return t if t.dim() == 0 else t.reshape(1, 1, -1, 1, 1)

        def batch(t: Tensor) -> Tensor:
            """A grid time as the field's t: [B] or per-frame [B, T]."""
            return t.expand(B) if t.dim() == 0 else t.expand(B, t.shape[0])

        x = x0
        if known is not None:
            if conditioning == "per_frame":
                frozen = mask
                x = torch.where(m5, reference, x0)
            else:
                g0 = spread(grid[0])
                x = torch.where(m5, g0 * reference + (1 - g0) * x0, x0)
        states = [x] if return_intermediates else None
        for i in range(grid.shape[0] - 1):
            t0, t1 = grid[i], grid[i + 1]
            if renoise_fraction > 0 and float(t0) > 0:
                t_back = (t0 - renoise_fraction * (t1 - t0)).clamp_min(0)
                x_new = renoise(x, t0.expand(B), t_back.expand(B), generator=generator)
                # frozen frames stay clean; replaced frames are overwritten below anyway
                x = torch.where(m5, x, x_new) if frozen is not None else x_new
                t0 = t_back
            h = spread(t1 - t0)
            euler_here = self.method == "euler" or (
                self.method == "heun" and self.final_euler and i == grid.shape[0] - 2
                and bool((t1 == 1).all()))
            if euler_here:
                x = x + h * self._eval(x, batch(t0), frozen, cond)
            elif self.method == "heun":
                k1 = self._eval(x, batch(t0), frozen, cond)
                k2 = self._eval(x + h * k1, batch(t1), frozen, cond)
                x = x + 0.5 * h * (k1 + k2)
            else:
                k1 = self._eval(x, batch(t0), frozen, cond)
                tm = batch(t0 + 0.5 * (t1 - t0))
                x = x + h * self._eval(x + 0.5 * h * k1, tm, frozen, cond)
            if known is not None and conditioning == "replace":
                g1 = spread(t1)
                x = torch.where(m5, g1 * reference + (1 - g1) * x0, x)
            if states is not None:
                states.append(x)
        return torch.stack(states) if states is not None else x

    @staticmethod
    def _grid(time_grid, num_steps, x0: Tensor) -> Tensor:
        if time_grid is not None and num_steps is not None:
            raise ValueError("give time_grid or num_steps, not both")
        if time_grid is None:
            n = 1 if num_steps is None else num_steps
            if int(n) != n or n < 1:
                raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
            return torch.linspace(0, 1, int(n) + 1, dtype=x0.dtype, device=x0.device)
        grid = torch.as_tensor(time_grid).to(dtype=x0.dtype, device=x0.device)
        if grid.dim() not in (1, 2) or grid.shape[0] < 2:
            raise ValueError(f"time_grid must be [N + 1] or per-frame [N + 1, T] with N ≥ 1, "
                             f"got shape {tuple(grid.shape)}")
        check_finite("time_grid", grid)
        if grid.dim() == 2:
            if grid.shape[1] != x0.shape[2]:
                raise ValueError(f"per-frame time_grid has {grid.shape[1]} frames but the "
                                 f"video has T = {x0.shape[2]}")
            # frames may wait (staggered / rolling schedules) but never go back
            if bool((grid[1:] < grid[:-1]).any()):
                raise ValueError("a per-frame time_grid must be non-decreasing in every frame")
        elif bool((grid[1:] <= grid[:-1]).any()):
            raise ValueError("time_grid must be strictly increasing (t: 0 = noise → 1 = data)")
        if float(grid.min()) < 0 or float(grid.max()) > 1:
            raise ValueError(
                f"time_grid must lie in [0, 1], got [{float(grid.min())}, {float(grid.max())}]"
            )
        return grid


def sample_video(field: Callable[..., Tensor], x0: Tensor, *, method: Method = "euler",
                 final_euler: bool = True, **kwargs: Any) -> Tensor:
    """One-call form of :class:`VideoSampler` (``VideoSampler(field, method).sample(x0, ...)``)."""
    return VideoSampler(field, method, final_euler=final_euler).sample(x0, **kwargs)


class MultiBranchGuidance(nn.Module):
    """Classifier-free guidance with several conditions applied one after another.

    With conditions c_1, …, c_K in ``order`` and scales s_k, the guided velocity is

        u = u(∅) + Σ_k s_k · (u(c_1..c_k) − u(c_1..c_{k−1}))

    where u(c_1..c_k) is the field with the first k conditions real and the rest replaced by
    their null values (``null``). With one condition this is ordinary CFG,
    u(∅) + s (u(c) − u(∅)); with (image, text) it is the InstructPix2Pix-style two-scale rule
    used for image-to-video. Scales 1 recover the fully conditional field. Each branch is one
    field call (K + 1 per evaluation).

    Called as ``guided(x, t, **cond)``: every name in ``order`` must be in ``cond``; other
    keywords go unchanged to all branches (so a misspelled one still raises in the field).
    """

    def __init__(self, field: Callable[..., Tensor], scales: Mapping[str, float],
                 null: Mapping[str, Any], order: Sequence[str] | None = None) -> None:
        super().__init__()
        order = list(scales) if order is None else list(order)
        if set(order) != set(scales):
            raise ValueError(f"order {order} must name exactly the guided conditions "
                             f"{sorted(scales)}")
        missing = [k for k in order if k not in null]
        if missing:
            raise ValueError(f"null values missing for conditions {missing}")
        self.field = field
        self.scales = dict(scales)
        self.null = dict(null)
        self.order = order

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        missing = [k for k in self.order if k not in cond]
        if missing:
            raise TypeError(f"guided field needs the conditions {missing}")
        branch = {**cond, **{k: self.null[k] for k in self.order}}
        prev = self.field(x, t, **branch)
        out = prev
        for name in self.order:
            branch = {**branch, name: cond[name]}
            cur = self.field(x, t, **branch)
            out = out + self.scales[name] * (cur - prev)
            prev = cur
        return out

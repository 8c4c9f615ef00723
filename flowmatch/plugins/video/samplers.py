"""Fixed-grid ODE samplers for video flows, with frozen frames, re-noising and guidance.

A video velocity field is called ``field(x, t, **cond)`` with x of shape [B, C, T, H, W] and t of
shape [B] (one time per clip) or [B, T] (one time per frame), in flowmatch time (0 = noise,
1 = data); it returns the velocity u = dx/dt, shaped like x.

The steps run in the explicit Runge–Kutta loop of :mod:`flowmatch.solvers.engine` (tableaux
euler, heun, midpoint; the :class:`~flowmatch.solvers.engine.FlatBroadcast` motion, whose step
length h is a tensor: one per frame on a per-frame grid); re-noising and the "replace"
conditioning are the loop's before/after hooks, frozen frames a property of the field wrapper.

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
from flowmatch.solvers import frame_time_grid
from flowmatch.solvers.engine import TABLEAUX, FlatBroadcast, Solution, Step, solve

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
        return_solution: bool = False,
        **cond: Any,
    ) -> Tensor | Solution:
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
            return_solution: return a :class:`~flowmatch.solvers.engine.Solution` holding the
                result as ``state`` with this call's ``nfe``, steps and grid times.
            **cond: passed to the field on every call.
        """
        check_video("x0", x0)
        check_finite("x0", x0)
        grid = frame_time_grid(time_grid, num_steps, x0.shape[2], dtype=x0.dtype,
                               device=x0.device)
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

        # the steps: from t_i (or its re-noised t_back) to t_{i+1}, the field's time at stage c
        # t + c (t_{i+1} − t); a Heun step that ends the grid at t = 1 is Euler (final_euler)
        n = grid.shape[0] - 1
        steps, backs = [], {}
        for i in range(n):
            t0, t1 = grid[i], grid[i + 1]
            if renoise_fraction > 0 and float(t0) > 0:
                backs[i] = (t0, (t0 - renoise_fraction * (t1 - t0)).clamp_min(0))
                t0 = backs[i][1]
            euler_here = self.method == "euler" or (
                self.method == "heun" and self.final_euler and i == n - 1
                and bool((t1 == 1).all()))
            tableau = TABLEAUX["euler" if euler_here else self.method]
            times = tuple(batch(t0 if c == 0.0 else t1 if c == 1.0 else t0 + c * (t1 - t0))
                          for c in tableau.c)
            steps.append(Step(t0, t1, spread(t1 - t0), times, tableau,
                              keep=return_intermediates))

        def before(i: int, x: Tensor) -> Tensor:
            if i not in backs:
                return x
            t0, t_back = backs[i]
            x_new = renoise(x, t0.expand(B), t_back.expand(B), generator=generator)
            # frozen frames stay clean; replaced frames are overwritten below anyway
            return torch.where(m5, x, x_new) if frozen is not None else x_new

        def after(i: int, x: Tensor) -> Tensor:
            g1 = spread(grid[i + 1])
            return torch.where(m5, g1 * reference + (1 - g1) * x0, x)

        sol = solve(lambda y, t: self._eval(y, t, frozen, cond), x, steps, FlatBroadcast(),
                    before=before if backs else None,
                    after=after if known is not None and conditioning == "replace" else None)
        out = torch.stack([x, *sol.trajectory]) if return_intermediates else sol.state
        if return_solution:
            return Solution(out, sol.nfe, sol.num_steps, tuple(grid.tolist()))
        return out


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

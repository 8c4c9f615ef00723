"""Time grids of the solvers: validation, step arguments and step times.

Every solver takes a ``time_grid`` (strictly monotone times in [0, 1]; t = 0 is the source,
t = 1 the data) and optionally ``num_steps`` or ``step_size``; the times of the grid are always
hit exactly. Checks shared by all of them are :func:`check_time_grid` and
:func:`check_step_args`. How the steps are laid out differs, deliberately:

* :func:`step_grid` (Euclidean ``ODESolver``): steps of one size h start at the grid's first
  time and run through the whole span; interior grid times become extra nodes.
* :func:`steps_per_interval` (Riemannian solver through :func:`interval_steps`; CTMC and
  product samplers through :func:`forward_step_times` / :func:`forward_steps`): every interval
  of the grid is split into equal sub-steps, so the step times depend only on that interval.
  ``step_size`` h gives ⌈span/h⌉ sub-steps per interval in both; ``num_steps`` N is spread over
  the intervals in proportion to their lengths (rounded, the Riemannian solver) or turned into
  the bound h = span/N (the forward samplers).
* :func:`frame_time_grid` (the video sampler): one step per grid interval, the grid given or
  uniform with ``num_steps`` steps, shared by all frames ([N + 1]) or per frame ([N + 1, T]).

The step times feed the explicit Runge–Kutta engine (:mod:`flowmatch.solvers.engine`), whose
:func:`~flowmatch.solvers.engine.node_steps` and :func:`~flowmatch.solvers.engine.float_steps`
turn them into stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Literal

import torch
from torch import Tensor

TimeGrid = Tensor | Sequence[float]


def _check_finite(grid: Tensor) -> None:
    bad = ~torch.isfinite(grid)
    if bool(bad.any()):
        n_nan = int(torch.isnan(grid).sum())
        raise ValueError(f"time_grid must be finite, but it holds {n_nan} NaN and "
                         f"{int(bad.sum()) - n_nan} infinite values: {grid.tolist()}")


def _check_range(grid: Tensor, hint: str = "") -> None:
    lo, hi = float(grid.min()), float(grid.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"time_grid must lie in [0, 1] (t = 0 noise, t = 1 data), but "
                         f"ranges over [{lo:g}, {hi:g}]{hint}")


def check_time_grid(grid: Tensor, *, allow_any_time: bool = False,
                    increasing: bool = False, any_time_hint: bool = False) -> None:
    """Raise ValueError unless ``grid`` is a valid time grid (checked in its own dtype).

    Valid: 1-D with at least two finite times, strictly increasing or strictly decreasing
    (strictly increasing if ``increasing``: samplers that cannot run backwards), and within
    [0, 1] unless ``allow_any_time``. ``any_time_hint`` mentions the ``allow_any_time`` argument
    in the range error (for solvers that have one).
    """
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(
            "time_grid must be a 1-D sequence of at least two times, got shape "
            f"{tuple(grid.shape)}"
        )
    _check_finite(grid)
    steps = grid[1:] - grid[:-1]
    if increasing:
        if not bool((steps > 0).all()):
            raise ValueError(f"time_grid must increase strictly (discrete factors cannot run "
                             f"backwards), got {grid.tolist()}")
    elif not (bool((steps > 0).all()) or bool((steps < 0).all())):
        raise ValueError(
            f"time_grid must be strictly increasing or strictly decreasing, got {grid.tolist()}"
        )
    if not allow_any_time:
        _check_range(grid, "; pass allow_any_time=True for other time domains"
                     if any_time_hint else "")


def frame_time_grid(time_grid: Tensor | Sequence[float] | Sequence[Sequence[float]] | None,
                    num_steps: int | None, frames: int, *, dtype: torch.dtype,
                    device: torch.device) -> Tensor:
    """The validated grid of a video sampler, [N + 1] or per frame [N + 1, T], in ``dtype``.

    Rule of :class:`~flowmatch.plugins.video.samplers.VideoSampler`: ``time_grid`` or
    ``num_steps`` (a uniform grid on [0, 1]; one step when neither is given), not both. A
    shared grid increases strictly (t: 0 = noise → 1 = data); a per-frame grid has one column
    per frame (``frames``) and is non-decreasing in each (frames may wait, never go back). All
    times are finite and in [0, 1].
    """
    if time_grid is not None and num_steps is not None:
        raise ValueError("give time_grid or num_steps, not both")
    if time_grid is None:
        n = 1 if num_steps is None else num_steps
        if int(n) != n or n < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
        return torch.linspace(0, 1, int(n) + 1, dtype=dtype, device=device)
    grid = torch.as_tensor(time_grid).to(dtype=dtype, device=device)
    if grid.dim() not in (1, 2) or grid.shape[0] < 2:
        raise ValueError(f"time_grid must be [N + 1] or per-frame [N + 1, T] with N ≥ 1, "
                         f"got shape {tuple(grid.shape)}")
    _check_finite(grid)
    if grid.dim() == 2:
        if grid.shape[1] != frames:
            raise ValueError(f"per-frame time_grid has {grid.shape[1]} frames but the "
                             f"video has T = {frames}")
        if bool((grid[1:] < grid[:-1]).any()):
            raise ValueError("a per-frame time_grid must be non-decreasing in every frame")
    elif bool((grid[1:] <= grid[:-1]).any()):
        raise ValueError("time_grid must be strictly increasing (t: 0 = noise → 1 = data)")
    _check_range(grid)
    return grid


def grid_as_floats(time_grid: TimeGrid | None, default: Sequence[float], *,
                   increasing: bool = False) -> list[float]:
    """A validated time grid (default ``default``) as Python floats, read in float64."""
    if time_grid is None:
        return [float(v) for v in default]
    grid = torch.as_tensor(time_grid, dtype=torch.float64).detach().cpu()
    check_time_grid(grid, increasing=increasing)
    return grid.tolist()


def check_step_args(num_steps: int | None, step_size: Any) -> float | None:
    """Validate the step arguments; returns ``step_size`` as a float (None when not given).

    At most one of them may be given; ``num_steps`` must be a positive integer and
    ``step_size`` a positive finite real number.
    """
    if num_steps is not None and step_size is not None:
        raise ValueError(f"give num_steps or step_size, not both (got num_steps={num_steps!r}, "
                         f"step_size={step_size!r})")
    if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int)
                                  or num_steps < 1):
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if step_size is None:
        return None
    try:
        h = None if isinstance(step_size, (bool, str)) else float(step_size)
    except (TypeError, ValueError):
        h = None
    if h is None or not (math.isfinite(h) and h > 0.0):
        raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
    return h


def step_grid(grid: Tensor, step_size: float | None, num_steps: int | None) -> Tensor | None:
    """Integration nodes for a fixed-step method, or None for "one step per grid interval".

    Steps of size h = ``step_size`` (or |t_N − t_0| / ``num_steps``) start at the grid start
    t_0 and move towards t_N; the last step is shortened to land on t_N when the span is not a
    multiple of h. Interior grid points are always nodes too, so the states returned there are
    the solver's own states, not interpolations: a point that falls strictly inside a step
    splits it in two (one extra step).
    """
    if step_size is None and num_steps is None:
        return None
    h_given = check_step_args(num_steps, step_size)
    g = [float(v) for v in grid.tolist()]
    span = abs(g[-1] - g[0])
    direction = 1.0 if g[-1] > g[0] else -1.0
    if num_steps is not None:
        h = span / num_steps
        n = num_steps
    else:
        h = h_given
        ratio = span / h
        n = round(ratio)
        # a span that is a multiple of h up to rounding must not gain a sliver of a last step
        if n == 0 or abs(ratio - n) > 1e-9 * max(1.0, ratio):
            n = math.ceil(ratio)
    # every grid point is a node; a uniform node that hits a grid point up to rounding gives
    # way to it (no sliver steps)
    tol = max(1e-6 * h, 8 * torch.finfo(grid.dtype).eps)
    uniform = (g[0] + direction * h * k for k in range(1, n))
    merged = [v for v in uniform if not any(abs(v - p) <= tol for p in g)] + g
    merged.sort(reverse=direction < 0)
    return torch.tensor(merged, dtype=grid.dtype, device=grid.device)


def steps_per_interval(grid: Sequence[float], num_steps: int | None, step_size: Any, *,
                       spread: Literal["proportional", "bound"]) -> list[int]:
    """Number of equal sub-steps in each interval of ``grid`` (at least one each).

    ``step_size`` h: ⌈|b − a|/h⌉ sub-steps in [a, b] (a span that is a multiple of h up to
    1e-9 gains no sliver step). ``num_steps`` N with ``spread="proportional"``:
    round(N |b − a| / Σ|spans|), so the total is N whenever every interval gets its share;
    with ``spread="bound"``: h = |t_N − t_0|/N as above, so no sub-step exceeds the uniform one.
    Neither: one step per interval.
    """
    h = check_step_args(num_steps, step_size)
    spans = [abs(b - a) for a, b in pairwise(grid)]
    if num_steps is not None:
        if spread == "proportional":
            total = sum(spans)
            return [max(1, round(num_steps * s / total)) for s in spans]
        h = abs(grid[-1] - grid[0]) / num_steps
    if h is None:
        return [1] * len(spans)
    return [max(1, math.ceil(s / h - 1e-9)) for s in spans]


def interval_steps(grid: Sequence[float], counts: Sequence[int]
                   ) -> tuple[list[float], list[float], list[float], list[bool]]:
    """(starts, lengths, ends, ends-an-interval flags) of ``counts[i]`` equal sub-steps of each
    interval [a, b] of ``grid``: h = (b − a)/n, starts a + k h, the last one ending on b exactly
    (the Riemannian solver's rule)."""
    starts, hs, ends, marks = [], [], [], []
    for (a, b), n in zip(pairwise(grid), counts, strict=True):
        h = (b - a) / n
        for k in range(n):
            starts.append(a + k * h)
            hs.append(h)
            ends.append(b if k == n - 1 else a + (k + 1) * h)
            marks.append(k == n - 1)
    return starts, hs, ends, marks


def forward_steps(
    time_grid: Sequence[float] | Tensor | None,
    num_steps: int | None,
    step_size: float | None,
) -> tuple[list[float], list[float], list[float], list[bool]]:
    """:func:`forward_step_times` as (starts, lengths t_{i+1} − t_i, ends, ends-a-grid-point
    flags), the form the engine's :func:`~flowmatch.solvers.engine.float_steps` takes."""
    times, marks = forward_step_times(time_grid, num_steps, step_size)
    wanted = set(marks)
    n = len(times) - 1
    return (times[:-1], [times[i + 1] - times[i] for i in range(n)], times[1:],
            [i + 1 in wanted for i in range(n)])


def forward_step_times(
    time_grid: Sequence[float] | Tensor | None,
    num_steps: int | None,
    step_size: float | None,
) -> tuple[list[float], list[int]]:
    """(step times, indices of the user's grid points among them) of a forward-only sampler.

    Discrete factors only run forwards in time, so the grid (default [0, 1]) must increase.
    Each interval [a, b] is split into n equal steps (:func:`steps_per_interval`, ``num_steps``
    as the bound h = span/N), with times a + (b − a) j/n.
    """
    grid = grid_as_floats(time_grid, (0.0, 1.0), increasing=True)
    counts = steps_per_interval(grid, num_steps, step_size, spread="bound")
    times, marks = [grid[0]], [0]
    for (a, b), n in zip(pairwise(grid), counts, strict=True):
        times.extend(a + (b - a) * j / n for j in range(1, n))
        times.append(b)
        marks.append(len(times) - 1)
    return times, marks

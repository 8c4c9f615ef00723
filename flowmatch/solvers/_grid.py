"""Step times of the forward-only samplers (CTMC and product solvers).

Discrete factors only run forwards in time, so these grids must increase. ``num_steps`` (over the
whole span) or ``step_size`` subdivide every interval of the user's grid uniformly, so each grid
point is hit exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def forward_step_times(
    time_grid: Sequence[float] | Tensor | None,
    num_steps: int | None,
    step_size: float | None,
) -> tuple[list[float], list[int]]:
    """(step times, indices of the user's grid points among them); default grid [0, 1]."""
    grid = [0.0, 1.0] if time_grid is None else [
        float(v) for v in torch.as_tensor(time_grid, dtype=torch.float64).reshape(-1)]
    if len(grid) < 2 or any(not math.isfinite(v) for v in grid):
        raise ValueError(f"time_grid needs at least two finite times, got {grid}")
    if any(b <= a for a, b in zip(grid, grid[1:], strict=False)) or grid[0] < 0 or grid[-1] > 1:
        raise ValueError(
            f"time_grid must increase strictly within [0, 1] (discrete factors cannot run "
            f"backwards), got {grid}"
        )
    if num_steps is not None and step_size is not None:
        raise ValueError(f"give num_steps or step_size, not both (got {num_steps}, {step_size})")
    if num_steps is not None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        step_size = (grid[-1] - grid[0]) / num_steps
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
    times, marks = [grid[0]], [0]
    for a, b in zip(grid, grid[1:], strict=False):
        n = 1 if step_size is None else max(1, math.ceil((b - a) / step_size - 1e-9))
        times.extend(a + (b - a) * j / n for j in range(1, n))
        times.append(b)
        marks.append(len(times) - 1)
    return times, marks

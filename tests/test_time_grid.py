"""Shared time-grid parsing (flowmatch.solvers._grid): one set of rules for every solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowmatch.geometry import Sphere
from flowmatch.solvers import ODESolver, RiemannianODESolver
from flowmatch.solvers._grid import (
    check_step_args,
    check_time_grid,
    forward_step_times,
    grid_as_floats,
    steps_per_interval,
)


def test_step_size_splits_each_interval_without_slivers():
    # 0.3 / 0.1 = 2.9999999999999996 in floating point: still three steps, not four
    assert steps_per_interval([0.0, 0.3, 1.0], None, 0.1, spread="bound") == [3, 7]
    assert steps_per_interval([1.0, 0.3, 0.0], None, 0.1, spread="proportional") == [7, 3]
    assert steps_per_interval([0.0, 0.5, 1.0], None, None, spread="bound") == [1, 1]


def test_the_two_num_steps_rules():
    # proportional: N spread by length and rounded (total N); bound: no step longer than span/N
    assert steps_per_interval([0.0, 0.4, 1.0], 2, None, spread="proportional") == [1, 1]
    assert steps_per_interval([0.0, 0.4, 1.0], 2, None, spread="bound") == [1, 2]
    for spread in ("proportional", "bound"):
        assert steps_per_interval([0.0, 0.25, 0.5, 1.0], 8, None, spread=spread) == [2, 2, 4]


def test_forward_step_times_hit_every_grid_point():
    times, marks = forward_step_times([0.0, 0.3, 1.0], None, 0.25)
    assert [times[i] for i in marks] == [0.0, 0.3, 1.0]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= 0.25 + 1e-12
    assert forward_step_times(None, 4, None)[0] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_step_size_accepts_real_scalars_only():
    assert check_step_args(None, np.float32(0.5)) == 0.5
    assert check_step_args(None, torch.tensor(0.25)) == 0.25
    assert check_step_args(3, None) is None
    for bad in ("0.1", True, float("nan"), math.inf, 0, -1.0, [0.1]):
        with pytest.raises(ValueError, match="step_size must be a positive finite number"):
            check_step_args(None, bad)
    for bad in (0, 2.0, True, -3):
        with pytest.raises(ValueError, match="num_steps must be a positive integer"):
            check_step_args(bad, None)
    with pytest.raises(ValueError, match="not both"):
        check_step_args(3, 0.1)


@pytest.mark.parametrize(("grid", "match"), [
    ([0.5], "at least two times"),
    ([[0.0, 1.0]], "1-D"),
    ([0.0, float("nan")], "time_grid must be finite"),
    ([0.0, 0.5, 0.5], "strictly increasing or strictly decreasing"),
    ([0.0, 1.5], r"must lie in \[0, 1\]"),
])
def test_every_solver_rejects_the_same_bad_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        check_time_grid(torch.tensor(grid))
    with pytest.raises(ValueError, match=match):
        grid_as_floats(grid, (0.0, 1.0))
    x = Sphere(3).sample_base(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        RiemannianODESolver(lambda y, t: torch.zeros_like(y), Sphere(3)).sample(
            x, time_grid=grid)
    with pytest.raises(ValueError, match=match):
        ODESolver(lambda y, t: torch.zeros_like(y)).sample(x, time_grid=grid)


def test_forward_grids_must_increase():
    with pytest.raises(ValueError, match="increase strictly"):
        forward_step_times([1.0, 0.0], None, None)
    assert grid_as_floats(torch.tensor([1.0, 0.5, 0.0]), (0.0, 1.0)) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="allow_any_time"):
        ODESolver(lambda y, t: y).sample(torch.zeros(2, 1), time_grid=[0.0, 2.0])

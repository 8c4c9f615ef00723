"""Affine paths: endpoints, velocities, conversions, broadcasting of t for every data shape."""

from __future__ import annotations

import pytest
import torch

from flowmatch.paths import (
    AffinePath,
    CondOTPath,
    CondOTScheduler,
    CosineScheduler,
    LinearVPScheduler,
    PolynomialScheduler,
    VPScheduler,
)

PATHS = [AffinePath(s) for s in (CondOTScheduler(), PolynomialScheduler(2.0), CosineScheduler(),
                                 LinearVPScheduler(), VPScheduler())]
SHAPES = [(7, 3), (4, 4), (5, 2, 3, 3), (3, 2, 4, 3, 3)]


@pytest.mark.parametrize("path", PATHS, ids=repr)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_velocity_is_time_derivative_of_x_t(path, shape):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x1 = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.9 + 0.05

    def x_t(tt):
        return path.sample(x0, x1, tt).x_t

    _, dx = torch.func.jvp(x_t, (t,), (torch.ones_like(t),))
    torch.testing.assert_close(path.sample(x0, x1, t).dx_t, dx)


def test_condot_hits_endpoints():
    x0, x1 = torch.randn(6, 3), torch.randn(6, 3)
    path = CondOTPath()
    torch.testing.assert_close(path.sample(x0, x1, torch.zeros(6)).x_t, x0)
    torch.testing.assert_close(path.sample(x0, x1, torch.ones(6)).x_t, x1)


def test_time_is_aligned_with_batch_when_batch_equals_dim():
    # B == D is where right-aligned broadcasting of t [B] against x [B, D] pairs t with features
    B = D = 4
    x0 = torch.zeros(B, D)
    x1 = torch.ones(B, D)
    t = torch.tensor([0.1, 0.2, 0.3, 0.4])
    sample = CondOTPath().sample(x0, x1, t)
    torch.testing.assert_close(sample.x_t, t[:, None].expand(B, D))


@pytest.mark.parametrize("path", PATHS, ids=repr)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_conversions_round_trip(path, shape):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x1 = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.9 + 0.05
    s = path.sample(x0, x1, t)
    torch.testing.assert_close(path.x1_to_velocity(x1, s.x_t, t), s.dx_t)
    torch.testing.assert_close(path.x0_to_velocity(x0, s.x_t, t), s.dx_t)
    torch.testing.assert_close(path.epsilon_to_velocity(x0, s.x_t, t), s.dx_t)
    torch.testing.assert_close(path.velocity_to_x1(s.dx_t, s.x_t, t), x1)
    torch.testing.assert_close(path.velocity_to_x0(s.dx_t, s.x_t, t), x0)
    torch.testing.assert_close(path.x1_to_x0(x1, s.x_t, t), x0)
    torch.testing.assert_close(path.x0_to_x1(x0, s.x_t, t), x1)


def test_scalar_time_broadcasts_over_batch():
    x0, x1 = torch.randn(5, 2), torch.randn(5, 2)
    s = CondOTPath().sample(x0, x1, torch.tensor(0.25))
    assert s.t.shape == (5,)
    torch.testing.assert_close(s.x_t, 0.75 * x0 + 0.25 * x1)


@pytest.mark.parametrize(
    "x0, x1, t, match",
    [
        (torch.randn(3, 2), torch.randn(3, 3), torch.rand(3), "same shape"),
        (torch.full((3, 2), float("nan")), torch.randn(3, 2), torch.rand(3), "NaN"),
        (torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0.1, 1.5, 0.2]), r"\[0, 1\]"),
        (torch.randn(3, 2), torch.randn(3, 2), torch.rand(4), "batch"),
        (torch.randn(3, 2), torch.randn(3, 2), torch.rand(3, 1), "shape"),
    ],
)
def test_bad_input_raises(x0, x1, t, match):
    with pytest.raises(ValueError, match=match):
        CondOTPath().sample(x0, x1, t)


def test_rejects_non_scheduler():
    with pytest.raises(TypeError, match="Scheduler"):
        AffinePath(lambda t: t)

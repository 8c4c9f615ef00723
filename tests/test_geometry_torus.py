"""FlatTorus: seam handling, exact small differences, periods, base density."""

from __future__ import annotations

import math

import pytest
import torch
from geometry_strategies import FAST, generator, log_uniform, seeds
from hypothesis import given
from hypothesis import strategies as st

from flowmatch.geometry import FlatTorus


@FAST
@given(seed=seeds, period=st.sampled_from([1.0, 2 * math.pi, 7.5]),
       frac=log_uniform(1e-9, 0.499))
def test_logmap_inverts_expmap(seed, period, frac):
    t = FlatTorus(3, period=period)
    gen = generator(seed)
    x = t.sample_base((32,), generator=gen, dtype=torch.float64)
    sign = torch.randint(0, 2, (32, 3), generator=gen, dtype=torch.float64) * 2 - 1
    u = sign * frac * period * torch.rand(32, 3, generator=gen, dtype=torch.float64)
    y = t.expmap(x, u)
    t.check_point(y)
    assert bool(((y >= 0) & (y < period)).all())
    # wrapping x + u rounds to one ulp of the period; that is the whole error
    torch.testing.assert_close(t.logmap(x, y), u, rtol=0, atol=4 * period * 2**-52)
    torch.testing.assert_close(t.dist(x, y), u.norm(dim=-1), rtol=0, atol=8 * period * 2**-52)


@FAST
@given(seed=seeds)
def test_expmap_inverts_logmap_and_logmap_is_shortest(seed):
    t = FlatTorus(2)
    gen = generator(seed)
    x = t.sample_base((64,), generator=gen, dtype=torch.float64)
    y = t.sample_base((64,), generator=gen, dtype=torch.float64)
    v = t.logmap(x, y)
    assert bool(((v >= -math.pi) & (v < math.pi)).all())
    torch.testing.assert_close(t.expmap(x, v), y, rtol=0, atol=1e-14)
    # no other lift y + 2πk is closer to x
    for k in (-1.0, 1.0):
        for axis in range(2):
            shift = torch.zeros(2, dtype=torch.float64)
            shift[axis] = 2 * math.pi * k
            assert bool((v.abs()[:, axis] <= (y + shift - x).abs()[:, axis] + 1e-14).all())


def test_seam_is_crossed_the_short_way():
    t = FlatTorus(1)
    x = torch.tensor([[0.01]], dtype=torch.float64)
    y = torch.tensor([[2 * math.pi - 0.01]], dtype=torch.float64)
    torch.testing.assert_close(t.logmap(x, y), torch.tensor([[-0.02]], dtype=torch.float64))
    torch.testing.assert_close(t.logmap(y, x), torch.tensor([[0.02]], dtype=torch.float64))
    torch.testing.assert_close(t.dist(x, y), torch.tensor([0.02], dtype=torch.float64))
    torch.testing.assert_close(t.expmap(x, torch.tensor([[-0.02]], dtype=torch.float64)), y)
    # half a period: both ways are shortest, the documented choice is −p/2
    half = t.logmap(torch.zeros(1, 1), torch.full((1, 1), math.pi))
    assert float(half) == pytest.approx(-math.pi)


def test_logmap_is_exact_for_small_float32_differences():
    # a remainder of (Δ + p/2) would round Δ to a multiple of ulp(π) ≈ 2.4e-7; Δ itself is exact
    t = FlatTorus(1, period=1.0)
    x = torch.tensor([[0.3], [0.999], [0.0]], dtype=torch.float32)
    y = torch.nextafter(x, torch.full_like(x, 2.0))
    d = t.logmap(x, y)
    assert bool((d == y - x).all()) and bool((d > 0).all())
    # across the seam in fractional coordinates the lift b − a + 1 is rounded once, at the
    # spacing of float32 just below 1 (2⁻²⁴)
    a, b = torch.tensor([[0.9999999]]), torch.tensor([[1e-7]])
    exact = (1.0 - a.double()) + b.double()
    assert abs(float(t.logmap(a, b)) - float(exact)) <= 2**-24


def test_wrap_never_returns_the_period():
    for dtype in (torch.float32, torch.float64):
        for period in (1.0, 2 * math.pi):
            t = FlatTorus(1, period=period)
            tiny = torch.finfo(dtype).tiny
            z = torch.tensor([[-1e-9], [-tiny], [-0.0], [period], [3 * period],
                              [-period], [-1e-30], [period * (1 - 1e-9)]], dtype=dtype)
            w = t.projx(z)
            assert bool(((w >= 0) & (w < period)).all()), (dtype, period, w)
            t.check_point(w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrap_is_the_correctly_rounded_remainder(dtype):
    # against the remainder computed in float64 (exact for float32 inputs) of the same period
    # as stored in dtype: one rounding at most, in [0, p) even for huge angles
    t = FlatTorus(1)
    gen = torch.Generator().manual_seed(3)
    z = torch.cat([torch.randn(20000, 1, generator=gen, dtype=dtype) * 300,
                   torch.tensor([[1e8], [-1e8], [1e12], [-3e15]], dtype=dtype)])
    w = t.projx(z)
    p = torch.tensor(t.period, dtype=dtype)
    assert bool(((w >= 0) & (w < p)).all())
    if dtype == torch.float32:
        ref = torch.remainder(z.double(), p.double())
        err = (w.double() - ref).abs()
        err = torch.minimum(err, p.double() - err)  # 0 and p are the same point
        assert float(err.max()) <= float(torch.finfo(dtype).eps) * float(p)


def test_gradients_at_coincident_points_and_across_the_seam():
    t = FlatTorus(3)
    x = t.sample_base((16,), dtype=torch.float64).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    t.dist(x, y).sum().backward()
    assert bool(torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all())
    # logmap_x(y) is y − x up to a locally constant lift: its Jacobian in y is the identity,
    # also when y sits just across the seam
    xs = torch.tensor([0.01, 3.0, 6.2], dtype=torch.float64)
    ys = torch.tensor([6.27, 3.1, 0.05], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda yy: t.logmap(xs, yy), ys)
    torch.testing.assert_close(jac, torch.eye(3, dtype=torch.float64))


def test_metric_and_dist_properties():
    t = FlatTorus(4, period=1.0)
    gen = generator(11)
    x, y, z = (t.sample_base((256,), generator=gen, dtype=torch.float64) for _ in range(3))
    dxy, dyz, dxz = t.dist(x, y), t.dist(y, z), t.dist(x, z)
    assert bool((dxz <= dxy + dyz + 1e-12).all())
    torch.testing.assert_close(dxy, t.dist(y, x))
    assert float(dxy.max()) <= 0.5 * math.sqrt(4) + 1e-12  # the diameter of T⁴ with period 1
    u, v = torch.randn(256, 4, dtype=torch.float64), torch.randn(256, 4, dtype=torch.float64)
    torch.testing.assert_close(t.inner(x, u, v), t.inner(x, v, u))
    assert bool((t.inner(x, u) > 0).all())
    torch.testing.assert_close(t.proju(x, u), u)
    torch.testing.assert_close(t.projx(t.projx(x + 5 * u)), t.projx(x + 5 * u))


def test_base_samples_are_uniform():
    period, N = 1.0, 200_000
    t = FlatTorus(2, period=period)
    z = t.sample_base((N,), generator=generator(12), dtype=torch.float64)
    t.check_point(z)
    assert z.shape == (N, 2) and bool(((z >= 0) & (z < period)).all())
    # U(0, p): mean p/2 (sd of the sample mean p/sqrt(12 N)) and variance p²/12
    assert float((z.mean(0) - period / 2).abs().max()) < 5 * period / math.sqrt(12 * N)
    assert float((z.var(0) - period**2 / 12).abs().max()) < 5 * period**2 / (math.sqrt(180 * N))
    # the cdf at 0.1, 0.5, 0.9 of each coordinate (binomial sd ≤ 0.5/sqrt(N))
    for q in (0.1, 0.5, 0.9):
        assert float(((z < q * period).double().mean(0) - q).abs().max()) < 2.5 / math.sqrt(N)
    torch.testing.assert_close(t.base_log_prob(z), torch.full((N,), 0.0, dtype=torch.float64))
    t6 = FlatTorus(3)
    lp = t6.base_log_prob(t6.sample_base((2, 5)))
    assert lp.shape == (2, 5)
    # ∫ p dvol = p(x) · (2π)³ = 1
    assert float(lp.exp()[0, 0]) * (2 * math.pi) ** 3 == pytest.approx(1.0, rel=1e-6)


def test_check_point_names_the_rule():
    t = FlatTorus(3, period=1.0)
    with pytest.raises(ValueError, match=r"every coordinate in \[0, 1\).*tolerance"):
        t.check_point(torch.tensor([[0.5, -1e-3, 0.2]]))
    with pytest.raises(ValueError, match=r"every coordinate in \[0, 1\)"):
        t.check_point(torch.tensor([[0.5, 1.01, 0.2]]))
    t.check_point(torch.tensor([[0.0, 1.0, 0.999]]))  # 1.0 is the point 0
    with pytest.raises(ValueError, match="period must be a positive"):
        FlatTorus(2, period=0.0)
    with pytest.raises(ValueError, match="d .* must be an int ≥ 1"):
        FlatTorus(0)
    assert repr(FlatTorus(3)) == "FlatTorus(3)"
    assert repr(FlatTorus(3, period=1.0)) == "FlatTorus(3, period=1)"
    assert FlatTorus(3).dim == 3

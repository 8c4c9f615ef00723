"""Forward- and reverse-mode derivatives of every Riemannian geometry's maps.

The geodesic path differentiates s ↦ expmap(x, s v) and the Riemannian solver pulls field values
back with D logmap (both through ``torch.func.jvp``), so these derivatives must exist, be
finite, and agree with finite differences.
"""

from __future__ import annotations

import pytest
import torch

from flowmatch.geometry import SO3, SPD, FlatTorus, Hyperbolic, Sphere

GEOMETRIES = [Sphere(3), Sphere(5), FlatTorus(3), FlatTorus(2, period=1.0), Hyperbolic(2),
              Hyperbolic(4), SO3(), SPD(2), SPD(3)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("g", GEOMETRIES, ids=repr)
def test_jvp_of_expmap_at_zero_is_the_tangent(g):
    x = g.sample_base((6,), generator=_gen(0), dtype=torch.float64)
    v = g.random_tangent(x, generator=_gen(1))
    zero = torch.zeros((), dtype=torch.float64)
    y, dy = torch.func.jvp(lambda s: g.expmap(x, s * v), (zero,), (torch.ones_like(zero),))
    torch.testing.assert_close(y, x if not isinstance(g, FlatTorus) else g.projx(x))
    torch.testing.assert_close(dy, v, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("g", GEOMETRIES, ids=repr)
def test_jvp_of_logmap_matches_finite_differences(g):
    x = g.sample_base((6,), generator=_gen(2), dtype=torch.float64)
    v0 = 0.5 * g.random_tangent(x, generator=_gen(3))
    y = g.expmap(x, v0)
    w = g.random_tangent(y, generator=_gen(4))
    _, jvp = torch.func.jvp(lambda p: g.logmap(x, p), (y,), (w,))
    # A central difference errs by C h^2 (truncation) + delta / h (the rounding delta of logmap,
    # which depends on the CPU's kernels: eigh for SPD). Here SPD(3)'s y has condition number
    # about 1e6, so delta / h alone was 1.7e-5 at h = 1e-6 on an AVX-512 Xeon (7e-5 on AMD).
    # Richardson extrapolation of two central differences cancels the h^2 term; at h = 1e-4
    # what is left is about 3e-7 here (truncation C h^4 and rounding near 1e-6 at worst), so
    # atol 1e-5 holds on any CPU with a margin of ten.
    def central(h):
        return (g.logmap(x, g.expmap(y, h * w)) - g.logmap(x, g.expmap(y, -h * w))) / (2 * h)

    h = 1e-4
    fd = (4 * central(h / 2) - central(h)) / 3
    assert bool(torch.isfinite(jvp).all())
    torch.testing.assert_close(jvp, fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("g", GEOMETRIES, ids=repr)
def test_gradient_of_dist_is_the_unit_logmap(g):
    # grad_y dist(x, y) = −logmap(y, x)/dist, as a Riemannian gradient; check through the
    # directional derivative along a tangent w: d/ds dist(x, exp_y(s w)) = −⟨log_y x, w⟩/d
    x = g.sample_base((6,), generator=_gen(5), dtype=torch.float64)
    y = g.expmap(x, 0.7 * g.random_tangent(x, generator=_gen(6)))
    w = g.random_tangent(y, generator=_gen(7))
    zero = torch.zeros((), dtype=torch.float64)
    _, rate = torch.func.jvp(lambda s: g.dist(x, g.expmap(y, s * w)), (zero,),
                             (torch.ones_like(zero),))
    expected = -g.inner(y, g.logmap(y, x), w) / g.dist(x, y)
    torch.testing.assert_close(rate, expected, rtol=1e-7, atol=1e-9)

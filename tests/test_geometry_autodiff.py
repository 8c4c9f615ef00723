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
    h = 1e-6
    fd = (g.logmap(x, g.expmap(y, h * w)) - g.logmap(x, g.expmap(y, -h * w))) / (2 * h)
    assert bool(torch.isfinite(jvp).all())
    torch.testing.assert_close(jvp, fd, rtol=1e-5, atol=1e-6)


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

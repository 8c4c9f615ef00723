"""Hyperbolic space (Lorentz model): identities, divergence, large norms, wrapped normal base."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from geometry_strategies import FAST, generator, log_uniform, relative_error, seeds
from hypothesis import given
from hypothesis import strategies as st

from flowmatch.geometry import Hyperbolic
from flowmatch.geometry.hyperbolic import minkowski


def points_at_radius(h: Hyperbolic, batch: int, radius: float, seed: int, dtype=torch.float64):
    """Points at geodesic distance ``radius`` from the origin, in random directions."""
    gen = generator(seed)
    v = torch.randn(batch, h.n, generator=gen, dtype=torch.float64)
    v = radius * v / v.norm(dim=-1, keepdim=True)
    return h.expmap_origin(v).to(dtype)


def unit_tangent(h: Hyperbolic, x: torch.Tensor, seed: int) -> torch.Tensor:
    # built in float64, where the Minkowski norm of a tangent vector is reliable
    x64 = x.double()
    u = h.random_tangent(x64, generator=generator(seed))
    return (u / h.norm(x64, u).unsqueeze(-1)).to(x.dtype)


def roundtrip_bound(eps: float, radius: float, scale: float) -> float:
    """The documented accuracy: 20 ε (cosh² r + cosh² (r + |u|)) / |u|."""
    return 20 * eps * (math.cosh(radius) ** 2 + math.cosh(radius + scale) ** 2) / scale


@FAST
@given(seed=seeds, n=st.sampled_from([1, 2, 5]), radius=st.floats(0.0, 10.0),
       scale=log_uniform(1e-6, 20.0))
def test_logmap_inverts_expmap_float64(seed, n, radius, scale):
    h = Hyperbolic(n)
    x = points_at_radius(h, 16, radius, seed)
    u = scale * unit_tangent(h, x, seed + 1)
    y = h.expmap(x, u)
    h.check_point(y)
    eps = 2.0**-53
    assert float(relative_error(h.logmap(x, y), u).max()) <= roundtrip_bound(eps, radius, scale)
    d = h.dist(x, y)
    assert float(((d - scale).abs() / scale).max()) <= roundtrip_bound(eps, radius, scale)


@FAST
@given(seed=seeds, radius=st.floats(0.0, 3.0), scale=log_uniform(1e-5, 5.0))
def test_logmap_inverts_expmap_float32_near_the_origin(seed, radius, scale):
    h = Hyperbolic(2)
    x = points_at_radius(h, 64, radius, seed, dtype=torch.float32)
    u = scale * unit_tangent(h, x, seed + 1)
    err = relative_error(h.logmap(x, h.expmap(x, u)), u)
    assert float(err.max()) <= max(1e-3, roundtrip_bound(2.0**-24, radius, scale))


@FAST
@given(seed=seeds, n=st.sampled_from([2, 3]))
def test_expmap_inverts_logmap_and_dist_matches_closed_form(seed, n):
    h = Hyperbolic(n)
    gen = generator(seed)
    x = h.sample_base((64,), generator=gen, dtype=torch.float64)
    y = h.sample_base((64,), generator=gen, dtype=torch.float64)
    v = h.logmap(x, y)
    # the Minkowski form rounds at the scale ε x₀² y₀² (see the class docstring), and expmap
    # amplifies a direction error by sinh d; measured worst ≈ 200 ε x₀² y₀² on these samples
    bound = 1000 * 2.0**-53 * (x[:, 0] * y[:, 0]) ** 2
    assert bool((h.dist(h.expmap(x, v), y) <= bound).all())
    closed = torch.arccosh((-minkowski(x, y)).clamp_min(1.0))
    far = closed > 1e-3  # arccosh is only accurate away from 0
    torch.testing.assert_close(h.dist(x, y)[far], closed[far], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(h.norm(x, v), h.dist(x, y), rtol=1e-10, atol=1e-12)


def test_agrees_with_geoopt_lorentz_in_float64():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import geoopt
    lor = geoopt.Lorentz()
    h = Hyperbolic(3)
    gen = generator(3)
    x = h.sample_base((100,), generator=gen, dtype=torch.float64)
    y = h.sample_base((100,), generator=gen, dtype=torch.float64)
    u = h.random_tangent(x, generator=gen)
    torch.testing.assert_close(h.expmap(x, u), lor.expmap(x, u), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(h.dist(x, y), lor.dist(x, y), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(h.inner(x, u, u), lor.inner(x, u, u), rtol=1e-12, atol=1e-12)


@FAST
@given(seed=seeds)
def test_projections_inner_and_triangle_inequality(seed):
    h = Hyperbolic(3)
    gen = generator(seed)
    x, y, z = (h.sample_base((64,), generator=gen, dtype=torch.float64) for _ in range(3))
    a = 3 * torch.randn(64, 4, generator=gen, dtype=torch.float64)
    p = h.projx(a)
    h.check_point(p)
    torch.testing.assert_close(h.projx(p), p, rtol=1e-15, atol=1e-15)
    u = h.proju(x, a)
    torch.testing.assert_close(h.proju(x, u), u, rtol=1e-12, atol=1e-12)
    # Minkowski-orthogonal to x, up to the rounding of products of size x₀ |u|
    scale = (x.abs().amax(-1) * u.abs().amax(-1)).clamp_min(1.0)
    assert float((minkowski(x, u).abs() / scale).max()) < 1e-14
    h.check_tangent(x, u)
    v = h.random_tangent(x, generator=gen)
    torch.testing.assert_close(h.inner(x, u, v), h.inner(x, v, u))
    assert bool((h.inner(x, u) > 0).all())  # the induced metric is positive on T_x
    dxy, dyz, dxz = h.dist(x, y), h.dist(y, z), h.dist(x, z)
    assert bool((dxz <= dxy + dyz + 1e-10).all())
    torch.testing.assert_close(dxy, h.dist(y, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3])
def test_divergence_of_gradient_is_the_laplacian(n):
    # The docstring's rule: div v = tr(J P) with P = proju (oblique in Euclidean terms).
    # For f = x₀ = cosh r, grad f = P(G⁻¹ ∇f) = proju(x, −e₀) and Δf = n cosh r = n x₀.
    h = Hyperbolic(n)
    x = h.sample_base((20,), generator=generator(4), dtype=torch.float64)
    e0 = h.origin(dtype=torch.float64)

    def grad_f(p):
        return h.proju(p, -e0.expand_as(p))

    for xi in x:
        jac = torch.func.jacrev(grad_f)(xi)
        proj = torch.func.jacrev(lambda a, xi=xi: h.proju(xi, a))(torch.zeros_like(xi))
        div = torch.trace(jac @ proj)
        assert float(div) == pytest.approx(n * float(xi[0]), rel=1e-10)
        # the symmetric form tr(Pᵀ J P) is a different number: P is not Euclidean-orthogonal
        if float(xi[1:].norm()) > 0.1:
            assert abs(float(torch.trace(proj.T @ jac @ proj)) - n * float(xi[0])) > 1e-6


def test_coincident_points_give_zero_and_finite_gradients():
    h = Hyperbolic(2)
    for dtype in (torch.float32, torch.float64):
        x = h.sample_base((500,), generator=generator(5), dtype=dtype)
        assert bool((h.dist(x, x) == 0).all()) and bool((h.logmap(x, x) == 0).all())
        xg = x.clone().requires_grad_(True)
        yg = x.clone().requires_grad_(True)
        (h.dist(xg, yg).sum() + h.logmap(xg, yg).pow(2).sum()).backward()
        assert bool(torch.isfinite(xg.grad).all() and torch.isfinite(yg.grad).all())
        ug = torch.zeros_like(x, requires_grad=True)
        h.expmap(x, ug).sum().backward()
        assert bool(torch.isfinite(ug.grad).all())


def test_large_norms_are_finite_or_a_clear_error():
    h = Hyperbolic(2)
    o64 = h.origin(3, dtype=torch.float64)
    u = torch.tensor([[0.0, 100.0, 0.0], [0.0, 0.0, 300.0], [0.0, 200.0, 100.0]],
                     dtype=torch.float64)
    y = h.expmap(o64, u)
    assert bool(torch.isfinite(y).all())
    h.check_point(y)
    torch.testing.assert_close(h.dist(o64, y), u.norm(dim=-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(h.logmap_origin(y), u[:, 1:], rtol=1e-12, atol=0)
    # two far points: their distance, through the cancellation-prone Minkowski form
    far = points_at_radius(h, 50, 150.0, 6)
    other = points_at_radius(h, 50, 150.0, 7)
    d = h.dist(far, other)
    assert bool(torch.isfinite(d).all()) and bool(torch.isfinite(h.logmap(far, other)).all())
    assert bool((d <= 300.0 + 1e-9).all())
    # float32 overflows beyond r ≈ 43: a clear error, not inf/NaN
    o32 = h.origin(1)
    with pytest.raises(ValueError, match="overflowed in torch.float32"):
        h.expmap(o32, torch.tensor([[0.0, 60.0, 0.0]]))
    assert Hyperbolic.max_radius(torch.float32) == pytest.approx(43.4, abs=0.1)
    # the largest float32 points still give finite distances, logmaps and norms
    p = points_at_radius(h, 20, 40.0, 8, dtype=torch.float32)
    q = points_at_radius(h, 20, 40.0, 9, dtype=torch.float32)
    assert bool(torch.isfinite(h.dist(p, q)).all())
    assert bool(torch.isfinite(h.logmap(p, q)).all())
    assert bool(torch.isfinite(h.norm(p, h.logmap(p, q))).all())


def test_wrapped_normal_samples_are_gaussian_in_normal_coordinates():
    h = Hyperbolic(3, base_scale=0.7)
    N = 100_000
    z = h.sample_base((N,), generator=generator(10), dtype=torch.float64)
    h.check_point(z)
    v = h.logmap_origin(z) / 0.7
    # v ~ N(0, I): sample mean sd 1/sqrt(N), sample covariance entry sd ≤ sqrt(2/N)
    assert float(v.mean(0).abs().max()) < 5 / math.sqrt(N)
    cov = v.T @ v / N
    assert float((cov - torch.eye(3, dtype=torch.float64)).abs().max()) < 5 * math.sqrt(2 / N)
    torch.testing.assert_close(h.logmap_origin(z), h.logmap(h.origin(N, dtype=torch.float64), z)
                               [..., 1:], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("n", "scale"), [(2, 1.0), (3, 0.6), (3, 1.5)])
def test_base_density_integrates_to_one(n, scale):
    # geodesic polar coordinates about the origin: dvol = sinh^{n-1}(r) dr dΩ_{n-1}, and the
    # density is radial, so ∫ p dvol = vol(S^{n-1}) ∫ p(r) sinh^{n-1}(r) dr (midpoint rule)
    h = Hyperbolic(n, base_scale=scale)
    k, r_max = 20000, 12 * scale
    r = (torch.arange(k, dtype=torch.float64) + 0.5) * r_max / k
    v = torch.zeros(k, n, dtype=torch.float64)
    v[:, 0] = r
    logp = h.base_log_prob(h.expmap_origin(v))
    sphere_area = 2 * math.pi ** (n / 2) / math.gamma(n / 2)
    integral = sphere_area * float((logp.exp() * torch.sinh(r) ** (n - 1)).sum() * r_max / k)
    assert integral == pytest.approx(1.0, rel=1e-6)


def test_base_log_prob_is_finite_far_out():
    h = Hyperbolic(4)
    v = torch.zeros(3, 4, dtype=torch.float64)
    v[:, 0] = torch.tensor([50.0, 200.0, 300.0])
    lp = h.base_log_prob(h.expmap_origin(v))
    assert bool(torch.isfinite(lp).all())
    # −r²/2 − 3 (r − log 2r) − 2 log 2π for large r
    r = v[:, 0]
    expected = -r**2 / 2 - 3 * (r - torch.log(2 * r)) - 2 * math.log(2 * math.pi)
    torch.testing.assert_close(lp, expected, rtol=1e-12, atol=1e-9)


def test_check_point_and_arguments():
    h = Hyperbolic(2)
    with pytest.raises(ValueError, match=r"x₀ = sqrt\(1 \+ ‖x_s‖²\)"):
        h.check_point(torch.tensor([[-1.0, 0.0, 0.0]]))  # lower sheet
    with pytest.raises(ValueError, match="tolerance"):
        h.check_point(torch.tensor([[1.01, 0.0, 0.0]]))
    h.check_point(torch.tensor([[math.sqrt(1 + 1e10), 1e5, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="n .* must be an int ≥ 1"):
        Hyperbolic(0)
    with pytest.raises(ValueError, match="base_scale"):
        Hyperbolic(2, base_scale=-1.0)
    assert repr(Hyperbolic(2)) == "Hyperbolic(2)" and Hyperbolic(2).dim == 2
    assert Hyperbolic(2).point_shape == (3,)
    assert Hyperbolic(2).sample_base((4, 5), dtype=torch.float64).shape == (4, 5, 3)
    assert Hyperbolic(2).metric_logdet(torch.zeros(4, 3)).shape == (4,)


def test_roundtrip_table_against_geoopt(capsys):
    """Print flowmatch vs geoopt.Lorentz on the round trip at small |u| (points of the base).

    Only flowmatch's rows are asserted, against the documented bound (r ≤ ~4 here).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import geoopt
    h, lor = Hyperbolic(2), geoopt.Lorentz()
    x64 = h.sample_base((1000,), generator=generator(20), dtype=torch.float64)
    v = unit_tangent(h, x64, 21)
    radius = float(h.logmap_origin(x64).norm(dim=-1).max())
    lines = [f"{'dtype':>8} {'|u|':>8} {'flowmatch':>11} {'geoopt':>11}"]
    for dtype, eps in ((torch.float64, 2.0**-53), (torch.float32, 2.0**-24)):
        x = x64.to(dtype)
        for scale in (1e-6, 1e-4, 1e-2, 1.0):
            u = (scale * v).to(dtype)
            ours = float(relative_error(h.logmap(x, h.expmap(x, u)), u).max())
            theirs = float(relative_error(lor.logmap(x, lor.expmap(x, u)), u).max())
            lines.append(f"{str(dtype)[6:]:>8} {scale:8.0e} {ours:11.2e} {theirs:11.2e}")
            assert ours <= roundtrip_bound(eps, radius, scale)
    with capsys.disabled():
        print(f"\nmax relative error of logmap(x, expmap(x, u)) on H², 1000 base points "
              f"(radius ≤ {radius:.1f})")
        print("\n".join(lines))

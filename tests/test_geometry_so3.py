"""SO(3): Rodrigues maps across scales, the angle-π cut locus, Haar base, volume."""

from __future__ import annotations

import math

import pytest
import torch
from geometry_strategies import FAST, generator, log_uniform, relative_error, seeds
from hypothesis import given

from flowmatch.geometry import SO3
from flowmatch.geometry.so3 import hat, quaternion_to_matrix, vee

G = SO3()


def rotations(batch: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return G.sample_base((batch,), generator=generator(seed), dtype=torch.float64).to(dtype)


def axes(batch: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    w = torch.randn(batch, 3, generator=generator(seed), dtype=torch.float64)
    return (w / w.norm(dim=-1, keepdim=True)).to(dtype)


def bound(eps: float, angle: float) -> float:
    """The sphere's round-trip law, max(1e-3 or 1e-12, 20 ε/|u|), holds here as well."""
    return max(1e-3 if eps > 1e-10 else 1e-12, 20 * eps / angle)


@FAST
@given(seed=seeds, angle=log_uniform(1e-8, math.pi - 1e-6))
def test_logmap_inverts_expmap_float64(seed, angle):
    r = rotations(32, seed)
    u = r @ hat(angle * axes(32, seed + 1))
    q = G.expmap(r, u)
    G.check_point(q)
    assert float(relative_error(G.logmap(r, q), u, 2).max()) <= bound(2.0**-53, angle)
    assert float(((G.dist(r, q) - angle).abs() / angle).max()) <= bound(2.0**-53, angle)
    # expmap is R · matrix_exp(Ω)
    torch.testing.assert_close(q, r @ torch.linalg.matrix_exp(hat(angle * axes(32, seed + 1))),
                               rtol=0, atol=1e-14)


@pytest.mark.parametrize("angle", [1e-6, 1e-4, 1e-2, 1.0, 1.5, 1.6, 3.0, math.pi - 1e-3])
def test_float32_roundtrip_meets_the_sphere_requirement(angle):
    r = rotations(2000, 1, dtype=torch.float32)
    u = r @ hat(angle * axes(2000, 2, dtype=torch.float32))
    err = relative_error(G.logmap(r, G.expmap(r, u)), u, 2)
    assert float(err.max()) <= bound(2.0**-24, angle)


@FAST
@given(seed=seeds)
def test_expmap_inverts_logmap_and_metric_properties(seed):
    r, q, s = rotations(64, seed), rotations(64, seed + 1), rotations(64, seed + 2)
    v = G.logmap(r, q)
    G.check_tangent(r, v)
    torch.testing.assert_close(G.expmap(r, v), q, rtol=0, atol=1e-12)
    d = G.dist(r, q)
    torch.testing.assert_close(G.norm(r, v), d, rtol=1e-12, atol=1e-12)
    # dist is the rotation angle: cos θ = (tr RᵀQ − 1)/2
    cos = ((r.transpose(-1, -2) @ q).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    torch.testing.assert_close(torch.cos(d), cos, rtol=0, atol=1e-12)
    assert bool((G.dist(r, s) <= d + G.dist(q, s) + 1e-12).all())
    # bi-invariance: left and right translations are isometries
    a = rotations(64, seed + 3)
    torch.testing.assert_close(G.dist(a @ r, a @ q), d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(G.dist(r @ a, q @ a), d, rtol=1e-10, atol=1e-12)


@FAST
@given(seed=seeds)
def test_projections_and_inner(seed):
    gen = generator(seed)
    r = rotations(16, seed)
    z = torch.randn(16, 3, 3, generator=gen, dtype=torch.float64)
    u = G.proju(r, z)
    torch.testing.assert_close(G.proju(r, u), u, rtol=0, atol=1e-14)
    rtu = r.transpose(-1, -2) @ u
    torch.testing.assert_close(rtu, -rtu.transpose(-1, -2), rtol=0, atol=1e-14)  # RᵀU skew
    # orthogonal projection: the residual is Frobenius-orthogonal to every tangent vector
    w = G.random_tangent(r, generator=gen)
    assert float(((z - u) * w).sum((-1, -2)).abs().max()) < 1e-12
    torch.testing.assert_close(G.inner(r, u, w), G.inner(r, w, u))
    assert bool((G.inner(r, u) > 0).all())
    torch.testing.assert_close(G.norm(r, r @ hat(vee(rtu))), vee(rtu).norm(dim=-1))
    # projx: nearest rotation; fixed points are rotations; det −1 inputs are repaired
    p = G.projx(z)
    G.check_point(p)
    torch.testing.assert_close(G.projx(p), p, rtol=0, atol=1e-12)
    others = rotations(16, seed + 5)
    assert bool(((z - p).flatten(1).norm(dim=-1)
                 <= (z - others).flatten(1).norm(dim=-1) + 1e-12).all())
    reflect = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    G.check_point(G.projx(r @ reflect + 1e-3 * z))


def test_coincident_points_are_exact_with_finite_gradients():
    for dtype in (torch.float32, torch.float64):
        r = rotations(500, 3, dtype=dtype)
        assert bool((G.dist(r, r) == 0).all()) and bool((G.logmap(r, r) == 0).all())
        x = r.clone().requires_grad_(True)
        y = r.clone().requires_grad_(True)
        (G.dist(x, y).sum() + G.logmap(x, y).pow(2).sum()).backward()
        assert bool(torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all())
        u = torch.zeros_like(r, requires_grad=True)
        G.expmap(r, u).sum().backward()
        assert bool(torch.isfinite(u.grad).all())


def test_angle_pi_is_finite_consistent_and_reaches_the_point():
    r = rotations(300, 4)
    a = axes(300, 5)
    q = r @ torch.linalg.matrix_exp(hat(math.pi * a))  # rotation by exactly π about a
    v = G.logmap(r, q)
    assert bool(torch.isfinite(v).all())
    torch.testing.assert_close(G.norm(r, v), torch.full((300,), math.pi, dtype=torch.float64),
                               rtol=0, atol=1e-7)
    torch.testing.assert_close(G.expmap(r, v), q, rtol=0, atol=1e-7)
    omega = vee(r.transpose(-1, -2) @ v) / math.pi
    # the axis is ±a; both reach q, the returned one is one of them
    assert bool(((omega * a).sum(-1).abs() > 1 - 1e-6).all())
    x = r.clone().requires_grad_(True)
    y = q.clone().requires_grad_(True)
    (G.logmap(x, y).sum() + G.dist(x, y).sum()).backward()
    assert bool(torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all())


def test_near_pi_axis_sign_follows_the_rotation():
    # just short of π the geodesic is unique: logmap must return +a, not −a
    r = rotations(200, 6)
    a = axes(200, 7)
    for gap in (1e-2, 1e-5, 1e-7):
        u = r @ hat((math.pi - gap) * a)
        torch.testing.assert_close(G.logmap(r, G.expmap(r, u)), u, rtol=0, atol=1e-8)


def test_haar_samples_are_uniform():
    N = 100_000
    r = G.sample_base((N,), generator=generator(8), dtype=torch.float64)
    G.check_point(r)
    # Haar: E[R] = 0 and E[R_ij²] = 1/3 (each entry has variance 1/3; 5-sigma bounds)
    assert float(r.mean(0).abs().max()) < 5 * math.sqrt(1 / 3 / N)
    assert float((r.pow(2).mean(0) - 1 / 3).abs().max()) < 5 * math.sqrt(0.1 / N)
    # the rotation angle has density (1 − cos θ)/π on [0, π]: compare the CDF
    # F(θ) = (θ − sin θ)/π at a few points (binomial sd ≤ 0.5/sqrt(N))
    theta = G.dist(torch.eye(3, dtype=torch.float64).expand_as(r), r)
    for t in (0.5, 1.0, 2.0, 3.0):
        emp = float((theta < t).double().mean())
        assert abs(emp - (t - math.sin(t)) / math.pi) < 2.5 / math.sqrt(N)
    # left-invariance: A R has the same angle distribution about A
    a = rotations(1, 9)[0]
    theta_a = G.dist(a.expand_as(r), a @ r)
    torch.testing.assert_close(theta_a, theta, rtol=0, atol=1e-10)


def test_volume_from_the_metric_matches_8_pi_squared():
    # Independent of the stated formula: the Riemannian volume element of exponential
    # coordinates ω ↦ exp([ω]ₓ), computed with autograd from expmap and inner, integrated over
    # the ball |ω| < π (which covers SO(3) once up to measure zero).
    eye = torch.eye(3, dtype=torch.float64)

    def chart(w):
        return G.expmap(eye, hat(w))

    def volume_element(w):
        jac = torch.func.jacrev(chart)(w)  # [3, 3, 3]: ∂R/∂ω_k
        gram = torch.stack([torch.stack([G.inner(eye, jac[..., i], jac[..., j])
                                         for j in range(3)]) for i in range(3)])
        return torch.linalg.det(gram).sqrt()

    # the element depends on |ω| only (check at a few directions), so integrate radially
    k = 150  # midpoint rule: relative error ≈ (π/k)²/24 · O(1) ≈ 2e-5
    thetas = (torch.arange(k, dtype=torch.float64) + 0.5) * math.pi / k
    elems = []
    for i, t in enumerate(thetas):
        direction = axes(1, 100 + i)[0]
        elems.append(volume_element(t * direction))
    elems = torch.stack(elems)
    closed = 2 * (1 - torch.cos(thetas)) / thetas**2
    torch.testing.assert_close(elems, closed, rtol=1e-9, atol=1e-12)
    vol = float((4 * math.pi * thetas**2 * elems).sum() * math.pi / k)
    assert vol == pytest.approx(8 * math.pi**2, rel=1e-4)
    r = rotations(3, 10)
    torch.testing.assert_close(G.base_log_prob(r).exp() * vol,
                               torch.ones(3, dtype=torch.float64), rtol=1e-4, atol=0)


def test_quaternion_to_matrix_and_check_point():
    q = torch.tensor([math.cos(0.25), 0.0, 0.0, math.sin(0.25)], dtype=torch.float64)
    expected = torch.linalg.matrix_exp(hat(torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)))
    torch.testing.assert_close(quaternion_to_matrix(q), expected)
    with pytest.raises(ValueError, match=r"RᵀR = I and det R = \+1"):
        G.check_point(-torch.eye(3).expand(2, 3, 3))  # det −1
    with pytest.raises(ValueError, match="tolerance"):
        G.check_point(1.01 * torch.eye(3))
    with pytest.raises(ValueError, match="trailing shape"):
        G.check_point(torch.eye(4))
    assert repr(G) == "SO3()" and G.dim == 3 and G.point_shape == (3, 3)
    assert G.base_log_prob(rotations(5, 0)).shape == (5,)
    assert G.sample_base((2, 4), dtype=torch.float32).dtype == torch.float32

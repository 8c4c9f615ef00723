"""Geodesic conditional paths: endpoints, tangency, closed-form velocity, and a training run."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowmatch.geometry import Euclidean
from flowmatch.geometry.sphere import Sphere
from flowmatch.geometry.torus import FlatTorus
from flowmatch.paths import CondOTScheduler, CosineScheduler, PolynomialScheduler
from flowmatch.paths.geodesic import GeodesicPath

D64 = torch.float64
SCHEDULERS = [CondOTScheduler(), PolynomialScheduler(2.0), PolynomialScheduler(0.5)]


def _pair(geometry, n=64, seed=0, dtype=D64):
    gen = torch.Generator().manual_seed(seed)
    return (geometry.sample_base(n, generator=gen, dtype=dtype),
            geometry.sample_base(n, generator=gen, dtype=dtype))


def _so3():
    from flowmatch.geometry.so3 import SO3

    return SO3()


def _spd():
    from flowmatch.geometry.spd import SPD

    return SPD(3)


def _hyperbolic():
    from flowmatch.geometry.hyperbolic import Hyperbolic

    return Hyperbolic(3)


GEOMETRIES = {"sphere": lambda: Sphere(3), "sphere5": lambda: Sphere(5),
              "torus": lambda: FlatTorus(7), "euclidean": lambda: Euclidean(4), "so3": _so3,
              "spd": _spd, "hyperbolic": _hyperbolic}


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("velocity", ["logmap", "jvp"])
def test_path_hits_both_ends_with_tangent_velocity(name, velocity):
    g = GEOMETRIES[name]()
    x0, x1 = _pair(g)
    path = GeodesicPath(g, PolynomialScheduler(2.0), velocity=velocity)
    n = x0.shape[0]
    s0 = path.sample(x0, x1, torch.zeros(n, dtype=D64))
    s1 = path.sample(x0, x1, torch.ones(n, dtype=D64))
    # on the torus compare through the logmap: 0 and 2π are the same point
    assert float(g.dist(s0.x_t, x0).max()) < 1e-10
    assert float(g.dist(s1.x_t, x1).max()) < 1e-10
    t = torch.rand(n, dtype=D64)
    s = path.sample(x0, x1, t)
    g.check_point(s.x_t, "x_t")
    scale = 1 + float(s.dx_t.abs().max())
    assert float((s.dx_t - g.proju(s.x_t, s.dx_t)).abs().max()) < 1e-12 * scale
    assert s.t.shape == (n,)


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=repr)
def test_velocity_is_time_derivative_of_the_path(name, scheduler):
    # central finite difference in float64: error O(h²) ≈ 1e-10 for h = 1e-5
    g = GEOMETRIES[name]()
    x0, x1 = _pair(g, seed=1)
    path = GeodesicPath(g, scheduler)
    t = 0.05 + 0.9 * torch.rand(x0.shape[0], dtype=D64)
    h = 1e-5
    xp, xm = path.sample(x0, x1, t + h).x_t, path.sample(x0, x1, t - h).x_t
    # ambient central difference; on the flat torus the (exact) logmap undoes the 2π wrap
    fd = (g.logmap(xm, xp) if name == "torus" else xp - xm) / (2 * h)
    dx = path.sample(x0, x1, t).dx_t
    assert float((fd - dx).abs().max()) < 1e-6 * (1 + float(dx.abs().max()))


@settings(max_examples=30, deadline=None)
@given(t=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_closed_form_velocity_matches_forward_mode(t, seed):
    g = Sphere(3)
    x0, x1 = _pair(g, n=16, seed=seed)
    tt = torch.full((16,), t, dtype=D64)
    a = GeodesicPath(g, PolynomialScheduler(1.5)).sample(x0, x1, tt)
    b = GeodesicPath(g, PolynomialScheduler(1.5), velocity="jvp").sample(x0, x1, tt)
    assert float((a.x_t - b.x_t).abs().max()) < 1e-12
    assert float((a.dx_t - b.dx_t).abs().max()) < 1e-9


def test_condot_has_constant_speed_equal_to_the_distance():
    g = Sphere(3)
    x0, x1 = _pair(g, n=256, seed=2)
    t = torch.rand(256, dtype=D64)
    s = GeodesicPath(g).sample(x0, x1, t)
    torch.testing.assert_close(g.norm(s.x_t, s.dx_t), g.dist(x0, x1), atol=1e-9, rtol=1e-9)
    # and x_t splits the geodesic in the ratio t : (1 − t)
    torch.testing.assert_close(g.dist(x0, s.x_t), t * g.dist(x0, x1), atol=1e-9, rtol=1e-9)


def test_euclidean_geodesic_path_is_the_straight_line():
    g = Euclidean(5)
    x0, x1 = _pair(g, n=32)
    t = torch.rand(32, dtype=D64)
    s = GeodesicPath(g).sample(x0, x1, t)
    torch.testing.assert_close(s.x_t, t[:, None] * x1 + (1 - t[:, None]) * x0)
    torch.testing.assert_close(s.dx_t, x1 - x0)


def test_torus_path_takes_the_short_way_round():
    g = FlatTorus(1)
    x0 = torch.tensor([[0.1]], dtype=D64)
    x1 = torch.tensor([[2 * math.pi - 0.1]], dtype=D64)
    s = GeodesicPath(g).sample(x0, x1, torch.tensor([0.25], dtype=D64))
    # from 0.1 down through 0 to 2π − 0.1: speed −0.2, a quarter of the way is at 0.05
    torch.testing.assert_close(s.dx_t, torch.tensor([[-0.2]], dtype=D64))
    torch.testing.assert_close(g.logmap(torch.zeros(1, 1, dtype=D64), s.x_t),
                               torch.tensor([[0.05]], dtype=D64))


def test_nearly_equal_endpoints_and_float32_give_finite_velocity():
    g = Sphere(3)
    x1 = g.sample_base(128, generator=torch.Generator().manual_seed(3))
    x0 = g.projx(x1 + 1e-6 * torch.randn(x1.shape))
    s = GeodesicPath(g).sample(x0, x1, torch.rand(128))
    assert torch.isfinite(s.dx_t).all()
    assert float((s.dx_t - g.logmap(x1, x0)).abs().max()) < 1e-5


def test_bad_arguments_raise():
    g = Sphere(3)
    with pytest.raises(TypeError, match="ConvexScheduler"):
        GeodesicPath(g, CosineScheduler())
    with pytest.raises(ValueError, match="velocity"):
        GeodesicPath(g, velocity="autodiff")
    x0, x1 = _pair(g, n=4)
    with pytest.raises(ValueError, match="x0 must lie on"):
        GeodesicPath(g).sample(2 * x0, x1, torch.rand(4, dtype=D64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GeodesicPath(g).sample(x0, x1, torch.full((4,), 1.5, dtype=D64))
    with pytest.raises(ValueError, match="same shape"):
        GeodesicPath(g).sample(x0[:3], x1, torch.rand(4, dtype=D64))


def _vmf_sample(mu: torch.Tensor, kappa: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """Exact von Mises–Fisher sampling on S² (w = 1 + log(u + (1 − u) e^{−2κ}) / κ)."""
    u = torch.rand(n, generator=gen, dtype=D64)
    w = 1 + torch.log(u + (1 - u) * math.exp(-2 * kappa)) / kappa
    phi = 2 * math.pi * torch.rand(n, generator=gen, dtype=D64)
    r = (1 - w**2).clamp_min(0).sqrt()
    z = torch.stack([r * torch.cos(phi), r * torch.sin(phi), w], -1)  # about the north pole
    # rotate e_z onto mu with the Householder reflection sending e_z to mu
    e = torch.tensor([0.0, 0.0, 1.0], dtype=D64)
    v = e - mu
    if float(v.norm()) < 1e-12:
        return z
    v = v / v.norm()
    return z - 2 * (z @ v)[:, None] * v


def test_short_sphere_training_run_learns_the_density():
    """Riemannian CFM on a von Mises–Fisher target: held-out NLL falls well below uniform's.

    The uniform density on S² has NLL log 4π ≈ 2.53; the vMF(κ = 8) target has entropy
    log(4π sinh κ / κ) − κ (coth κ − 1/κ) ≈ 0.76 nats, and the 512-point test mean has a
    standard error ≈ 0.04. 400 Adam steps (≈ 2 s) on a small MLP must reach NLL < 1.2
    (measured 0.74 with these seeds); a broken path, solver or likelihood stays near 2.5.
    """
    from flowmatch.solvers.riemannian import RiemannianODESolver
    from flowmatch.training.loss import cfm_loss

    torch.manual_seed(0)
    g = Sphere(3)
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.6, 0.0, 0.8], dtype=D64)
    data = _vmf_sample(mu, 8.0, 4096, gen).float()
    test = _vmf_sample(mu, 8.0, 512, gen).float()
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                              torch.nn.SiLU(), torch.nn.Linear(64, 3))

    def field(x, t):
        return net(torch.cat([x, t[:, None]], -1))

    path = GeodesicPath(g)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(400):
        x1 = data[torch.randint(0, data.shape[0], (256,), generator=gen)]
        x0 = g.sample_base(256, generator=gen)
        s = path.sample(x0, x1, torch.rand(256, generator=gen))
        pred = g.proju(s.x_t, field(s.x_t, s.t))
        loss = cfm_loss(pred, s.dx_t, geometry=g, x_t=s.x_t)  # metric norm ‖u − u_t‖²_g
        opt.zero_grad()
        loss.backward()
        opt.step()
    solver = RiemannianODESolver(field, g)
    _, log_p = solver.log_likelihood(test, method="midpoint", num_steps=20)
    nll = float(-log_p.mean())
    assert nll < 1.2, nll
    # and samples concentrate near the mode: mean cosine to mu far above uniform's 0
    samples = solver.sample(g.sample_base(512, generator=gen), method="midpoint", num_steps=20)
    assert float((samples.double() @ mu).mean()) > 0.7

"""Product of the Riemannian geometries with Euclidean factors, with dict points."""

from __future__ import annotations

import math

import pytest
import torch
from geometry_strategies import FAST, generator, seeds
from hypothesis import given

from flowmatch.geometry import SO3, SPD, Euclidean, FlatTorus, Hyperbolic, Product, Sphere


def mixed() -> Product:
    return Product(direction=Sphere(3), angles=FlatTorus(2), shift=Euclidean(4))


@FAST
@given(seed=seeds)
def test_maps_act_factorwise_and_reductions_sum(seed):
    prod = mixed()
    gen = generator(seed)
    x = prod.sample_base(32, generator=gen, dtype=torch.float64)
    y = prod.sample_base(32, generator=gen, dtype=torch.float64)
    prod.check_point(x)
    v = prod.logmap(x, y)
    prod.check_tangent(x, v)
    back = prod.expmap(x, v)
    for k in x:
        torch.testing.assert_close(back[k], y[k], rtol=0, atol=1e-10)
    # the product metric is the sum of the factor metrics
    d = prod.dist(x, y)
    parts = [g.dist(x[k], y[k]) for k, g in prod.factors.items()]
    torch.testing.assert_close(d, torch.stack(parts).pow(2).sum(0).sqrt())
    torch.testing.assert_close(prod.norm(x, v), d, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(prod.inner(x, v),
                               sum(g.inner(x[k], v[k]) for k, g in prod.factors.items()))
    z = prod.sample_base(32, generator=gen, dtype=torch.float64)
    assert bool((prod.dist(x, z) <= d + prod.dist(y, z) + 1e-12).all())
    # base density: independent factors
    torch.testing.assert_close(
        prod.base_log_prob(x),
        -math.log(4 * math.pi) - 2 * math.log(2 * math.pi)
        + torch.distributions.Normal(torch.zeros((), dtype=torch.float64), 1.0)
        .log_prob(x["shift"]).sum(-1))
    assert prod.dim == 2 + 2 + 4


def test_projections_are_factorwise_and_idempotent():
    prod = mixed()
    gen = generator(1)
    a = {"direction": 3 * torch.randn(8, 3, generator=gen, dtype=torch.float64),
         "angles": 20 * torch.randn(8, 2, generator=gen, dtype=torch.float64),
         "shift": torch.randn(8, 4, generator=gen, dtype=torch.float64)}
    x = prod.projx(a)
    prod.check_point(x)
    again = prod.projx(x)
    for k in x:
        torch.testing.assert_close(again[k], x[k])
    u = prod.proju(x, a)
    uu = prod.proju(x, u)
    for k in u:
        torch.testing.assert_close(uu[k], u[k])
    assert float((u["direction"] * x["direction"]).sum(-1).abs().max()) < 1e-12


def test_coincident_points_have_zero_distance_and_finite_gradients():
    prod = Product(direction=Sphere(3), angles=FlatTorus(2), rotation=SO3(),
                   hyper=Hyperbolic(2))
    x = prod.sample_base(16, generator=generator(2), dtype=torch.float64)
    xg = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    yg = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    d = prod.dist(xg, yg)
    assert bool((d == 0).all())
    d.sum().backward()
    for k in x:
        assert bool(torch.isfinite(xg[k].grad).all() and torch.isfinite(yg[k].grad).all()), k
    u = {k: torch.zeros_like(v, requires_grad=True) for k, v in x.items()}
    prod.norm(x, u).sum().backward()
    for k in u:
        assert bool(torch.isfinite(u[k].grad).all()), k


def test_factors_with_different_batch_shapes():
    # a crystal-like product: one lattice per structure, one coordinate row per atom
    prod = Product(frac=FlatTorus(3, period=1.0), lattice=Euclidean(6), orient=SO3())
    x = prod.sample_base({"frac": (7,), "lattice": (2,), "orient": (2,)},
                         generator=generator(3), dtype=torch.float64)
    assert x["frac"].shape == (7, 3) and x["lattice"].shape == (2, 6)
    assert x["orient"].shape == (2, 3, 3)
    prod.check_point(x)
    per = prod.dist_per_factor(x, x)
    assert per["frac"].shape == (7,) and per["orient"].shape == (2,)
    with pytest.raises(ValueError, match="batch shapes"):
        prod.dist(x, x)
    lp = prod.base_log_prob_per_factor(x)
    torch.testing.assert_close(lp["frac"], torch.zeros(7, dtype=torch.float64))
    torch.testing.assert_close(lp["orient"], torch.full((2,), -math.log(8 * math.pi**2),
                                                        dtype=torch.float64))


def test_metric_logdet_sums_the_factors():
    prod = Product(cov=SPD(2), direction=Sphere(3))
    x = prod.sample_base(5, generator=generator(4), dtype=torch.float64)
    torch.testing.assert_close(prod.metric_logdet(x), -3 * torch.logdet(x["cov"]))


def test_check_point_names_the_factor_and_rule():
    prod = mixed()
    x = prod.sample_base(4, generator=generator(5))
    x["angles"] = x["angles"].clone()
    x["angles"][1, 0] = -0.01
    with pytest.raises(ValueError, match=r"x\['angles'\].*every coordinate in \[0, 6.28"):
        prod.check_point(x)
    x = prod.sample_base(4, generator=generator(5))
    x["direction"] = 1.01 * x["direction"]
    with pytest.raises(ValueError, match=r"x\['direction'\].*‖x‖ = 1"):
        prod.check_point(x)
    with pytest.raises(ValueError, match="missing"):
        prod.check_point({"direction": x["direction"]})


def test_sampling_is_reproducible_from_the_generator():
    prod = Product(direction=Sphere(4), angles=FlatTorus(3), rot=SO3(), cov=SPD(2),
                   hyper=Hyperbolic(3))
    a = prod.sample_base((3, 2), generator=generator(6), dtype=torch.float64)
    b = prod.sample_base((3, 2), generator=generator(6), dtype=torch.float64)
    prod.check_point(a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert prod.base_log_prob(a).shape == (3, 2)
    assert prod.dim == 3 + 3 + 3 + 3 + 3

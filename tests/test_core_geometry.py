"""Euclidean geometry, the geoopt adapter and Product points."""

from __future__ import annotations

import math

import geoopt
import pytest
import torch

from flowmatch.geometry import Euclidean, GeooptGeometry, Product, as_geometry


def test_euclidean_maps_are_flat():
    g = Euclidean((2, 3))
    x, u = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    torch.testing.assert_close(g.logmap(x, g.expmap(x, u)), u)
    torch.testing.assert_close(g.dist(x, x + u), u.flatten(1).norm(dim=-1))
    torch.testing.assert_close(g.inner(x, u, u), u.flatten(1).pow(2).sum(-1))
    assert g.dim == 6


def test_euclidean_base_density_is_standard_normal():
    g = Euclidean(3, base_scale=2.0)
    x = torch.randn(10, 3, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 2.0).log_prob(x).sum(-1)
    torch.testing.assert_close(g.base_log_prob(x), expected)
    gen = torch.Generator().manual_seed(0)
    s = g.sample_base((20000,), generator=gen, dtype=torch.float64)
    assert s.shape == (20000, 3)
    assert abs(float(s.std()) - 2.0) < 0.05


def test_euclidean_check_point_names_the_problem():
    g = Euclidean(3)
    with pytest.raises(ValueError, match="trailing shape"):
        g.check_point(torch.randn(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        g.check_point(torch.tensor([[0.0, float("nan"), 1.0]]))


def test_geoopt_manifold_is_usable_as_geometry():
    sphere = as_geometry(geoopt.Sphere(), point_shape=3)
    assert isinstance(sphere, GeooptGeometry)
    x = sphere.projx(torch.randn(5, 3, dtype=torch.float64))
    u = sphere.proju(x, 0.3 * torch.randn(5, 3, dtype=torch.float64))
    y = sphere.expmap(x, u)
    sphere.check_point(y)
    torch.testing.assert_close(sphere.dist(x, y), u.norm(dim=-1))
    with pytest.raises(ValueError, match="lie on"):
        sphere.check_point(2 * x)
    uniform = GeooptGeometry(geoopt.Sphere(), 3, dim=2, volume=4 * math.pi)
    torch.testing.assert_close(uniform.base_log_prob(x),
                               torch.full((5,), -math.log(4 * math.pi), dtype=torch.float64))


def test_as_geometry_rejects_other_objects():
    with pytest.raises(TypeError, match="Geometry"):
        as_geometry(torch.nn.Linear(2, 2))


def test_product_maps_factorwise_with_different_batch_shapes():
    prod = Product(lattice=Euclidean(6), coords=Euclidean(3))
    x = prod.sample_base({"lattice": (2,), "coords": (7,)})
    assert x["lattice"].shape == (2, 6) and x["coords"].shape == (7, 3)
    u = {k: torch.randn_like(v) for k, v in x.items()}
    y = prod.expmap(x, u)
    back = prod.logmap(x, y)
    for k in x:
        torch.testing.assert_close(back[k], u[k])
    with pytest.raises(ValueError, match="batch shapes"):
        prod.inner(x, u)
    per = prod.inner_per_factor(x, u)
    assert per["lattice"].shape == (2,) and per["coords"].shape == (7,)


def test_product_reductions_sum_over_factors():
    prod = Product(a=Euclidean(2), b=Euclidean(3))
    x = prod.sample_base(4, dtype=torch.float64)
    y = prod.sample_base(4, dtype=torch.float64)
    d2 = sum(prod.factors[k].dist(x[k], y[k]) ** 2 for k in x)
    torch.testing.assert_close(prod.dist(x, y), d2.sqrt())
    torch.testing.assert_close(
        prod.base_log_prob(x), prod["a"].base_log_prob(x["a"]) + prod["b"].base_log_prob(x["b"])
    )
    assert prod.dim == 5


def test_product_rejects_missing_or_extra_factors():
    prod = Product(a=Euclidean(2), b=Euclidean(3))
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        prod.check_point({"a": torch.zeros(1, 2)})
    with pytest.raises(TypeError, match="Geometry"):
        Product(a=Euclidean(2), b="sphere")


def test_euclidean_dist_and_norm_have_finite_gradients_at_zero():
    g = Euclidean(3)
    x = torch.randn(4, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(g.dist(x, x.detach()).sum(), x)
    assert bool(torch.isfinite(grad).all())
    u = torch.zeros(4, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(g.norm(x.detach(), u).sum(), u)
    assert bool(torch.isfinite(grad).all())


def test_check_point_names_the_rule_and_the_worst_index():
    from flowmatch.geometry import Sphere

    x = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    x[3] *= 1.1
    with pytest.raises(ValueError, match=r"‖x‖ = 1.*index 3"):
        Sphere(3).check_point(x)


def test_product_with_a_discrete_factor_maps_only_continuous_ones():
    from flowmatch.geometry import Discrete

    prod = Product(pos=Euclidean(2), label=Discrete(4, source="uniform"))
    x = prod.sample_base(5, dtype=torch.float64)
    y = prod.sample_base(5, dtype=torch.float64)
    u = prod.logmap(x, y)
    assert set(u) == {"pos"}
    z = prod.expmap(x, u)
    torch.testing.assert_close(z["pos"], y["pos"])
    assert torch.equal(z["label"], x["label"])
    torch.testing.assert_close(prod.dist(x, y), (y["pos"] - x["pos"]).norm(dim=-1))
    assert set(prod.projx(x)) == {"pos", "label"}

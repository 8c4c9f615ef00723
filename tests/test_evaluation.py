"""flowmatch.evaluation: per-point NLLs of a flow against closed forms, chunking, settings."""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.evaluation import Likelihood, flow_nll
from flowmatch.geometry import Euclidean, FlatTorus
from flowmatch.geometry.sphere import Sphere
from flowmatch.models import AmbientField, TangentProjected
from flowmatch.solvers import RiemannianODESolver

D64 = torch.float64
EZ = torch.tensor([0.0, 0.0, 1.0], dtype=D64)


def zero_field(x, t):
    return torch.zeros_like(x)


def rotation_field(x, t):
    """A Killing field of S² (rotation about e_z, speed 1 + t): moves mass, keeps volume."""
    return (1 + t)[:, None] * torch.linalg.cross(EZ.to(x.dtype).expand_as(x), x, dim=-1)


def uniform_sphere(n, seed=0):
    return Sphere(3).sample_base(n, generator=torch.Generator().manual_seed(seed), dtype=D64)


# -- closed forms --------------------------------------------------------------------------
@pytest.mark.parametrize("likelihood", [Likelihood(), Likelihood("rk4", steps=4)],
                         ids=str)
def test_zero_field_on_the_sphere_scores_the_uniform_density(likelihood):
    # nothing moves, so p1 = p0 = 1 / (4π) and every point scores −log p1 = log 4π
    x = uniform_sphere(50)
    nll = flow_nll(Sphere(3), zero_field, x, likelihood, chunk=16)
    assert nll.shape == (50,)
    torch.testing.assert_close(nll, torch.full((50,), math.log(4 * math.pi), dtype=D64),
                               atol=1e-12, rtol=0)


def test_volume_preserving_rotation_keeps_the_uniform_density():
    # div of a Killing field is 0, so the uniform density is invariant under its flow
    nll = flow_nll(Sphere(3), rotation_field, uniform_sphere(40), Likelihood(tol=1e-9))
    torch.testing.assert_close(nll, torch.full((40,), math.log(4 * math.pi), dtype=D64),
                               atol=1e-8, rtol=0)


def test_constant_translation_on_the_torus_keeps_the_uniform_density():
    torus = FlatTorus(3)
    x = torus.sample_base(30, generator=torch.Generator().manual_seed(1), dtype=D64)
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=D64)
    nll = flow_nll(torus, lambda x, t: shift.expand_as(x), x, Likelihood("rk4", steps=3))
    torch.testing.assert_close(nll, torch.full((30,), 3 * math.log(2 * math.pi), dtype=D64),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("a", [-0.7, 0.4])
def test_linear_field_gives_the_scaled_gaussian(a):
    # v = a x pushes N(0, I) to N(0, e^{2a} I):
    # −log p1(x) = (d/2) log 2π + d a + |x|² / (2 e^{2a}) in d = 2 dimensions
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=D64) * 1.5
    nll = flow_nll(Euclidean(2), lambda x, t: a * x, x, Likelihood(tol=1e-10), chunk=20)
    expected = math.log(2 * math.pi) + 2 * a + (x**2).sum(-1) / (2 * math.exp(2 * a))
    torch.testing.assert_close(nll, expected, atol=1e-7, rtol=0)


# -- chunks and the solver ----------------------------------------------------------------
def small_sphere_field(seed=0):
    torch.manual_seed(seed)
    return TangentProjected(AmbientField(3, 3, hidden=16, layers=2), Sphere(3)).double()


def test_flow_nll_is_the_solver_log_likelihood_chunk_by_chunk():
    field, x = small_sphere_field(), uniform_sphere(30, seed=3)
    likelihood = Likelihood("rk4", steps=8)
    nll = flow_nll(Sphere(3), field, x, likelihood, chunk=7)
    solver = RiemannianODESolver(field, Sphere(3))
    expected = torch.cat([-solver.log_likelihood(part, method="rk4", num_steps=8)[1]
                          for part in x.split(7)])
    assert torch.equal(nll, expected)
    # a fixed-step method integrates every point alone: the chunk size changes only rounding
    torch.testing.assert_close(flow_nll(Sphere(3), field, x, likelihood, chunk=30), nll,
                               atol=1e-12, rtol=0)


def test_adaptive_and_fixed_step_agree_on_a_smooth_field():
    field, x = small_sphere_field(1), uniform_sphere(20, seed=4)
    fine = flow_nll(Sphere(3), field, x, Likelihood(tol=1e-9))
    rk4 = flow_nll(Sphere(3), field, x, Likelihood("rk4", steps=50))
    torch.testing.assert_close(rk4, fine, atol=1e-6, rtol=0)


def test_no_points_give_no_nlls():
    out = flow_nll(Sphere(3), zero_field, torch.zeros(0, 3, dtype=D64))
    assert out.shape == (0,)


# -- settings ------------------------------------------------------------------------------
def test_likelihood_settings_map_to_solver_keywords():
    assert Likelihood().solver_kwargs() == {"method": "dopri5", "atol": 1e-5, "rtol": 1e-5}
    assert Likelihood("rk4", steps=25).solver_kwargs() == {"method": "rk4", "num_steps": 25}
    assert Likelihood("rk4", steps=25).refined() == Likelihood("rk4", steps=50)
    assert Likelihood("bosh3", tol=1e-4).refined().tol == pytest.approx(1e-5)
    assert str(Likelihood()) == "dopri5, atol = rtol = 1e-05, exact divergence"
    assert str(Likelihood("rk4", steps=100)) == "rk4 x 100, exact divergence"


@pytest.mark.parametrize("kwargs,name", [
    ({"method": "rk5"}, "method"), ({"tol": 0.0}, "tol"), ({"tol": float("nan")}, "tol"),
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": True}, "steps"),
])
def test_bad_likelihood_settings_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        Likelihood(**kwargs)


@pytest.mark.parametrize("kwargs,name", [
    ({"chunk": 0}, "chunk"), ({"chunk": 1.5}, "chunk"), ({"likelihood": "dopri5"}, "likelihood"),
    ({"x": torch.tensor(1.0)}, "x"),
])
def test_bad_flow_nll_arguments_name_the_argument(kwargs, name):
    args = {"x": uniform_sphere(4), **kwargs}
    x = args.pop("x")
    with pytest.raises(ValueError, match=f"^{name} must"):
        flow_nll(Sphere(3), zero_field, x, **args)

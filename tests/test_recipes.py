"""flowmatch.training.recipes: the benchmark field and the Riemannian CFM recipe."""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.evaluation import Likelihood, flow_nll
from flowmatch.geometry import FlatTorus
from flowmatch.geometry.sphere import Sphere
from flowmatch.models import (
    AmbientField,
    RandomFourierFeatures,
    ResidualMLP,
    TangentProjected,
    TorusFourierFeatures,
)
from flowmatch.training.recipes import build_field, train_flow

SPHERE = Sphere(3)


def cap(n: int, seed: int, kappa: float = 20.0) -> torch.Tensor:
    """Points concentrated around the north pole (a von Mises–Fisher-like cap)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=gen) / math.sqrt(kappa) + torch.tensor([0.0, 0.0, 1.0])
    return z / z.norm(dim=-1, keepdim=True)


def small(**kwargs):
    return {"hidden": 16, "layers": 2, "steps": 20, "batch": 32, "lr": 1e-2, "seed": 0,
            **kwargs}


# -- build_field ---------------------------------------------------------------------------
def test_build_field_is_a_projected_ambient_field_or_residual_mlp():
    plain = build_field(SPHERE, 3, 3, hidden=8, layers=2)
    residual = build_field(SPHERE, 3, 3, hidden=8, layers=2, blocks=2)
    assert isinstance(plain, TangentProjected) and isinstance(plain.field, AmbientField)
    assert isinstance(residual.field, ResidualMLP) and len(residual.field.blocks) == 2
    x = cap(16, 0)
    for field in (plain, residual):
        u = field(x, torch.rand(16))
        assert u.shape == (16, 3) and (u * x).sum(-1).abs().max() < 1e-6


def test_build_field_takes_features_and_fewer_outputs_than_inputs():
    feats = TorusFourierFeatures(7, 4, 2.0)
    field = build_field(FlatTorus(7), feats.out_dim, 7, hidden=8, layers=1, features=feats)
    assert field(torch.rand(5, 7), torch.rand(5)).shape == (5, 7)


@pytest.mark.parametrize("blocks", [-1, 1.5])
def test_build_field_rejects_bad_blocks(blocks):
    with pytest.raises(ValueError, match="^blocks must"):
        build_field(SPHERE, 3, 3, hidden=8, layers=2, blocks=blocks)


# -- train_flow ----------------------------------------------------------------------------
def test_train_flow_returns_a_frozen_eval_field_and_its_cpu_time():
    field, cpu = train_flow(SPHERE, cap(200, 0), **small())
    assert not field.training
    assert all(not p.requires_grad for p in field.parameters())
    assert cpu >= 0
    x = cap(8, 1)
    assert field(x, torch.rand(8)).shape == (8, 3)


def test_train_flow_is_reproducible_from_its_seed():
    data = cap(200, 0)
    a, _ = train_flow(SPHERE, data, **small(seed=5))
    torch.manual_seed(123)  # the global state before the call does not matter
    b, _ = train_flow(SPHERE, data, **small(seed=5))
    c, _ = train_flow(SPHERE, data, **small(seed=6))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, q)
                   for p, q in zip(a.parameters(), c.parameters(), strict=True))


@pytest.mark.parametrize("options", [{"marginal_target": "all"}, {"marginal_target": 16},
                                     {"time_power": 3.0}, {"data_noise": 0.05},
                                     {"weight_decay": 0.1}, {"blocks": 1}])
def test_every_option_trains_and_changes_the_field(options):
    data = cap(100, 0)
    base, _ = train_flow(SPHERE, data, **small())
    field, _ = train_flow(SPHERE, data, **small(**options))
    x, t = cap(8, 1), torch.rand(8)
    assert torch.isfinite(field(x, t)).all()
    assert not torch.equal(field(x, t), base(x, t))


def test_in_dim_defaults_to_the_features_width():
    feats = RandomFourierFeatures(3, 4, 5.0)
    field, _ = train_flow(SPHERE, cap(100, 0), features=feats, **small(steps=10))
    assert field.field.in_dim == feats.out_dim


def test_trained_flow_beats_the_uniform_density_on_held_out_points():
    # a cap of κ = 20 has differential entropy ≈ 1 − log(κ/2π) ≈ −0.16 nats (the lowest NLL
    # any model can reach), the uniform density log 4π ≈ 2.53: 300 steps get within a few
    # tenths of the bound (−0.12 when written)
    field, _ = train_flow(SPHERE, cap(2000, 0), **small(hidden=32, steps=300, batch=128,
                                                        lr=5e-3))
    nll = flow_nll(SPHERE, field, cap(200, 1), Likelihood("rk4", steps=20))
    assert float(nll.mean()) < 0.5


@pytest.mark.parametrize("kwargs,name", [
    ({"time_power": 0.0}, "time_power"), ({"time_power": float("inf")}, "time_power"),
    ({"data_noise": -0.1}, "data_noise"), ({"marginal_target": "some"}, "marginal_target"),
    ({"steps": 0}, "steps"), ({"blocks": -2}, "blocks"), ({"hidden": 0}, "hidden"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        train_flow(SPHERE, cap(10, 0), **small(**kwargs))


def test_empty_training_set_is_rejected():
    with pytest.raises(ValueError, match="^train must"):
        train_flow(SPHERE, torch.zeros(0, 3), **small())

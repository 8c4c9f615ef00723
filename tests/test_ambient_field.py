"""AmbientField: shapes, its composition of existing pieces, time broadcasting, bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowmatch.geometry.sphere import Sphere
from flowmatch.models import (
    AmbientField,
    RandomFourierFeatures,
    SinusoidalTimeEmbedding,
    TangentProjected,
    TorusFourierFeatures,
)


def test_shapes_on_the_sphere_and_the_torus():
    field = AmbientField(3, hidden=16, layers=2)
    assert field(torch.randn(5, 3), torch.rand(5)).shape == (5, 3)
    # T⁷: 14 features (cos, sin of every angle) in, 7 velocity components out
    torus = AmbientField(14, 7, hidden=16, layers=2, features=TorusFourierFeatures(7))
    assert torus(torch.rand(5, 7) * 6, torch.rand(5)).shape == (5, 7)


def test_is_an_mlp_on_features_and_the_time_embedding():
    # f(x, t) = net([φ(x), e(t)]) with e the sinusoidal embedding of scale 20, max period 100
    feats = RandomFourierFeatures(3, 4, 5.0)
    field = AmbientField(feats.out_dim, 3, hidden=8, layers=3, features=feats)
    x, t = torch.randn(6, 3), torch.rand(6)
    e = SinusoidalTimeEmbedding(32, scale=20.0, max_period=100.0)(t)
    torch.testing.assert_close(field(x, t), field.net(torch.cat([feats(x), e], -1)))
    linears = [m for m in field.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(11 + 32, 8), (8, 8),
                                                                    (8, 8), (8, 3)]


def test_weights_are_drawn_in_layer_order():
    # the same draws as the stack built by hand: fields saved before the move stay loadable
    # and retrained fields stay bit-identical
    torch.manual_seed(3)
    field = AmbientField(5, 2, hidden=7, layers=2)
    torch.manual_seed(3)
    by_hand = nn.Sequential(nn.Linear(5 + 32, 7), nn.SiLU(), nn.Linear(7, 7), nn.SiLU(),
                            nn.Linear(7, 2))
    assert list(field.state_dict()) == ["net." + k for k in by_hand.state_dict()]
    for a, b in zip(field.net.parameters(), by_hand.parameters(), strict=True):
        assert torch.equal(a, b)


def test_features_travel_in_the_state_dict():
    field = AmbientField(14, 7, hidden=8, layers=1, features=TorusFourierFeatures(7, 2, 1.0))
    assert "features.frequencies" in field.state_dict()


def test_scalar_time_is_broadcast_and_samples_do_not_mix():
    field = AmbientField(3, hidden=16, layers=2)
    x = torch.randn(4, 3)
    full = field(x, torch.full((4,), 0.3))
    torch.testing.assert_close(field(x, torch.tensor(0.3)), full)
    torch.testing.assert_close(field(x, 0.3), full)
    torch.testing.assert_close(field(x[1:2], torch.full((1,), 0.3)), full[1:2])


def test_tangent_projected_on_the_sphere_is_tangent():
    g = Sphere(3)
    x = g.sample_base(32, generator=torch.Generator().manual_seed(0))
    u = TangentProjected(AmbientField(3, hidden=16, layers=2), g)(x, torch.rand(32))
    assert (u * x).sum(-1).abs().max() < 1e-6


def test_periodic_features_make_a_field_on_the_torus():
    # θ and θ + 2π are the same point of T², and the field sees the same features there
    field = AmbientField(4, 2, hidden=8, layers=2, features=TorusFourierFeatures(2))
    x, t = torch.rand(5, 2) * 6, torch.rand(5)
    torch.testing.assert_close(field(x + 2 * torch.pi, t), field(x, t), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs,name", [
    ({"in_dim": 0}, "in_dim"), ({"out_dim": -1}, "out_dim"), ({"hidden": 0}, "hidden"),
    ({"layers": 0}, "layers"), ({"layers": 2.0}, "layers"), ({"hidden": True}, "hidden"),
    ({"time_embed_dim": 0}, "time_embed_dim"), ({"features": 3}, "features"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        AmbientField(**{"in_dim": 3, **kwargs})


def test_inputs_of_the_wrong_width_are_rejected():
    with pytest.raises(ValueError, match=r"x must have shape \[B, in_dim\] = \[2, 3\]"):
        AmbientField(3)(torch.randn(2, 4), torch.rand(2))
    field = AmbientField(5, 2, features=TorusFourierFeatures(2))
    with pytest.raises(ValueError, match=r"features\(x\) must have shape \[B, in_dim\]"):
        field(torch.rand(2, 2), torch.rand(2))
    with pytest.raises(ValueError, match="time has 3 entries"):
        AmbientField(3)(torch.randn(2, 3), torch.rand(3))

"""Velocity-field networks and wrappers: shapes, conditioning, guidance maths, conversions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from flowmatch.geometry import Euclidean, FlatTorus, as_geometry
from flowmatch.models import (
    MLP,
    ClassifierFreeGuidance,
    PredictionConverter,
    ResidualMLP,
    SinusoidalTimeEmbedding,
    TangentProjected,
    TimeResidualBlock,
    TorusFourierFeatures,
    drop_condition,
)
from flowmatch.paths import AffinePath, CondOTPath, CosineScheduler, VPScheduler


# -- time embedding ---------------------------------------------------------------------------
def test_time_embedding_matches_formula_and_is_bounded():
    emb = SinusoidalTimeEmbedding(8, scale=10.0, max_period=100.0)
    t = torch.tensor([0.0, 0.3, 1.0])
    out = emb(t)
    assert out.shape == (3, 8)
    k = torch.arange(4, dtype=torch.float64)
    freqs = 100.0 ** (-k / 4)
    expected = torch.cat([torch.cos(10 * t[:, None].double() * freqs),
                          torch.sin(10 * t[:, None].double() * freqs)], -1)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=0)
    # each (cos, sin) pair lies on the unit circle: the features never blow up with t
    torch.testing.assert_close(out[:, :4] ** 2 + out[:, 4:] ** 2, torch.ones(3, 4))


def test_time_embedding_odd_dim_pads_and_rejects_bad_input():
    out = SinusoidalTimeEmbedding(7)(torch.rand(5))
    assert out.shape == (5, 7) and torch.all(out[:, -1] == 0)
    with pytest.raises(ValueError, match="dim"):
        SinusoidalTimeEmbedding(1)
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        SinusoidalTimeEmbedding(8)(torch.rand(2, 3))


# -- MLP --------------------------------------------------------------------------------------
def test_mlp_shapes_scalar_time_and_point_shape():
    model = MLP(6, hidden=32, layers=2, point_shape=(2, 3))
    x = torch.randn(5, 2, 3)
    t = torch.rand(5)
    assert model(x, t).shape == (5, 2, 3)
    # a shared scalar time is the same as that time repeated for every sample
    torch.testing.assert_close(model(x, torch.tensor(0.4)), model(x, torch.full((5,), 0.4)))
    # the output of sample i depends only on sample i (no mixing across the batch)
    torch.testing.assert_close(model(x[:2], t[:2]), model(x, t)[:2])


def test_mlp_architecture_depth_and_width():
    model = MLP(3, hidden=16, layers=3, activation=nn.Tanh)
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    assert len(linears) == 4 and all(m.out_features == 16 for m in linears[:-1])
    assert linears[-1].out_features == 3
    assert sum(isinstance(m, nn.Tanh) for m in model.net) == 3


def test_mlp_rejects_bad_shapes_and_unconditional_cond():
    model = MLP(2, hidden=16, layers=2)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        model(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="t must be a scalar or of shape"):
        model(torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(4, 2), torch.rand(4), cond=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="point_shape"):
        MLP(5, point_shape=(2, 3))
    with pytest.raises(ValueError, match="at most one"):
        MLP(2, cond_dim=3, num_classes=4)


def test_mlp_misspelled_keyword_raises_type_error():
    model = MLP(2, hidden=16, layers=2, num_classes=3)
    with pytest.raises(TypeError):
        model(torch.randn(4, 2), torch.rand(4), cnd=torch.zeros(4, dtype=torch.long))
    wrapped = TangentProjected(model, Euclidean(2))
    with pytest.raises(TypeError):
        wrapped(torch.randn(4, 2), torch.rand(4), cnd=torch.zeros(4, dtype=torch.long))


def test_mlp_class_conditioning_null_class_and_range_check():
    model = MLP(2, hidden=16, layers=2, num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    null = model.null_cond.expand(4)
    torch.testing.assert_close(model(x, t), model(x, t, cond=null))
    a = model(x, t, cond=torch.tensor([0, 0, 0, 0]))
    b = model(x, t, cond=torch.tensor([1, 1, 1, 1]))
    assert not torch.allclose(a, b)  # the condition reaches the output
    with pytest.raises(ValueError, match=r"classes in \[0, 3\]"):
        model(x, t, cond=torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(x, t, cond=torch.zeros(4))


def test_mlp_vector_conditioning_null_is_zero():
    model = MLP(2, hidden=16, layers=2, cond_dim=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    torch.testing.assert_close(model(x, t), model(x, t, cond=torch.zeros(4, 3)))
    with pytest.raises(ValueError, match=r"cond must have shape \[B, cond_dim\]"):
        model(x, t, cond=torch.zeros(4, 2))


# -- residual MLP -----------------------------------------------------------------------------
def test_residual_mlp_shapes_scalar_time_and_no_batch_mixing():
    model = ResidualMLP(4, 3, hidden=16, blocks=3)
    assert len(model.blocks) == 3 and model.out.out_features == 3
    x, t = torch.randn(5, 4), torch.rand(5)
    assert model(x, t).shape == (5, 3)
    assert ResidualMLP(4, hidden=8, blocks=1)(x, t).shape == (5, 4)  # out_dim defaults to in_dim
    torch.testing.assert_close(model(x, torch.tensor(0.4)), model(x, torch.full((5,), 0.4)))
    torch.testing.assert_close(model(x, 0.4), model(x, torch.full((5,), 0.4)))
    torch.testing.assert_close(model(x[:2], t[:2]), model(x, t)[:2])


def test_time_residual_block_is_the_identity_plus_its_branch():
    torch.manual_seed(0)
    block = TimeResidualBlock(6, 4)
    h, e = torch.randn(3, 6), torch.randn(3, 4)
    branch = block.outer(nn.functional.silu(block.inner(nn.functional.silu(h)) + block.time(e)))
    torch.testing.assert_close(block(h, e), h + branch)
    with torch.no_grad():
        block.outer.weight.zero_()
        block.outer.bias.zero_()
    torch.testing.assert_close(block(h, e), h)  # a zeroed branch passes h through unchanged


def test_residual_mlp_feeds_time_to_every_block():
    torch.manual_seed(0)
    model = ResidualMLP(2, hidden=8, blocks=2)
    x = torch.randn(4, 2)
    t = torch.rand(4, requires_grad=True)
    model(x, t).sum().backward()
    for block in model.blocks:
        assert block.time.weight.grad is not None and block.time.weight.grad.abs().sum() > 0
    assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0  # f is differentiable in t


def test_residual_mlp_on_periodic_features_is_a_field_on_the_torus():
    torch.manual_seed(0)
    feats = TorusFourierFeatures(3, 8, 2.0)
    model = TangentProjected(ResidualMLP(feats.out_dim, 3, hidden=16, blocks=2, features=feats),
                             FlatTorus(3))
    x, t = torch.rand(6, 3) * 2 * math.pi, torch.rand(6)
    shift = 2 * math.pi * torch.randint(-2, 3, (6, 3)).float()
    # integer-frequency features: θ and θ + 2π m give the same velocity
    torch.testing.assert_close(model(x + shift, t), model(x, t), atol=1e-4, rtol=1e-4)


def test_residual_mlp_rejects_bad_arguments_and_shapes():
    for kwargs in ({"hidden": 0}, {"blocks": 0}, {"time_embed_dim": 0}, {"blocks": True}):
        with pytest.raises(ValueError):
            ResidualMLP(3, **kwargs)
    model = ResidualMLP(3, hidden=8, blocks=1)
    with pytest.raises(ValueError, match=r"x must have shape \[B, in_dim\] = \[2, 3\]"):
        model(torch.randn(2, 4), torch.rand(2))
    with pytest.raises(ValueError, match="time has 3 entries but the data has batch size 2"):
        model(torch.randn(2, 3), torch.rand(3))
    feats = TorusFourierFeatures(2, 4)
    with pytest.raises(ValueError, match=r"features\(x\) must have shape"):
        ResidualMLP(5, hidden=8, blocks=1, features=feats)(torch.rand(2, 2), torch.rand(2))


def test_residual_mlp_learns_a_concentrated_law_on_the_torus():
    """A short Riemannian CFM run moves uniform noise on T² onto a bump of radius ≈ 0.2."""
    from flowmatch.paths import GeodesicPath
    from flowmatch.solvers import RiemannianODESolver
    from flowmatch.training import fit

    g = FlatTorus(2)
    centre = torch.tensor([1.0, 4.0])

    def data(n: int, gen: torch.Generator) -> torch.Tensor:
        return g.projx(centre + 0.2 * torch.randn(n, 2, generator=gen))

    torch.manual_seed(0)
    feats = TorusFourierFeatures(2)
    model = TangentProjected(ResidualMLP(feats.out_dim, 2, hidden=32, blocks=2,
                                         features=feats), g)
    x0 = g.sample_base((512,), generator=torch.Generator().manual_seed(1))

    def spread(field: nn.Module) -> float:
        with torch.no_grad():
            x1 = RiemannianODESolver(field, g).sample(x0, method="midpoint", num_steps=20)
        return float(g.dist(x1, centre.expand_as(x1)).mean())

    before = spread(model)
    result = fit(model, data, GeodesicPath(g), g, steps=1000, batch_size=128, lr=3e-3, seed=0,
                 ema_decay=None, progress=False)
    after = spread(result.model)
    # uniform points lie ≈ 2.3 from the centre on average, the target's 0.2 √(π/2) ≈ 0.25;
    # measured: 2.46 before, 0.30 after
    assert before > 1.8 and after < 0.4, (before, after)


# -- classifier-free guidance -----------------------------------------------------------------
@pytest.mark.parametrize("batched", [True, False])
def test_cfg_scale_zero_and_one_are_the_plain_fields(batched):
    model = MLP(2, hidden=16, layers=2, num_classes=3)
    x, t = torch.randn(6, 2), torch.rand(6)
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    null = model.null_cond if batched else None
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, null_cond=null)(x, t, cond=cond),
                               model(x, t, cond=cond), rtol=0, atol=0)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, null_cond=null)(x, t, cond=cond),
                               model(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("w", [-0.5, 0.5, 3.0])
def test_cfg_is_the_linear_combination_with_one_batched_pass(w):
    model = MLP(2, hidden=16, layers=2, num_classes=3)
    x, t = torch.randn(5, 2), torch.rand(5)
    cond = torch.tensor([0, 1, 2, 1, 0])
    calls = []
    model.register_forward_hook(lambda m, args, kwargs_out: calls.append(args[0].shape[0]))
    guided = ClassifierFreeGuidance(model, w, null_cond=model.null_cond)(x, t, cond=cond)
    assert calls == [10]  # one forward on the doubled batch
    u_c, u_u = model(x, t, cond=cond), model(x, t)
    torch.testing.assert_close(guided, u_u + w * (u_c - u_u), atol=1e-6, rtol=1e-6)
    # a shared scalar time works in the batched path too
    guided_scalar = ClassifierFreeGuidance(model, w, null_cond=model.null_cond)(
        x, torch.tensor(0.25), cond=cond)
    u_c, u_u = model(x, torch.tensor(0.25), cond=cond), model(x, torch.tensor(0.25))
    torch.testing.assert_close(guided_scalar, u_u + w * (u_c - u_u), atol=1e-6, rtol=1e-6)


def test_cfg_rejects_bad_scale_and_cond_rows():
    model = MLP(2, hidden=16, layers=2, num_classes=3)
    with pytest.raises(ValueError, match="scale must be finite"):
        ClassifierFreeGuidance(model, float("nan"))
    with pytest.raises(ValueError, match="one row per sample"):
        ClassifierFreeGuidance(model, 2.0)(torch.randn(4, 2), torch.rand(4),
                                           cond=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError):
        ClassifierFreeGuidance(model, 2.0)(torch.randn(4, 2), torch.rand(4),
                                           condition=torch.zeros(4, dtype=torch.long))


def test_drop_condition_rate_and_values():
    g = torch.Generator().manual_seed(0)
    cond = torch.zeros(20_000, dtype=torch.long)
    out = drop_condition(cond, 0.3, torch.tensor(7), generator=g)
    assert set(out.unique().tolist()) == {0, 7}
    # Binomial(20000, 0.3): standard deviation 0.0032; 5σ keeps the test deterministic yet tight
    assert abs(float((out == 7).float().mean()) - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 20_000)
    vec = drop_condition(torch.ones(1000, 3), 0.5, torch.zeros(3), generator=g)
    rows = vec.sum(-1)
    assert set(rows.unique().tolist()) == {0.0, 3.0}  # whole rows are dropped, never parts
    assert drop_condition(cond, 0.0, torch.tensor(7)) is cond
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        drop_condition(cond, 1.5, torch.tensor(7))


# -- wrappers ---------------------------------------------------------------------------------
def test_tangent_projected_lands_in_tangent_space():
    import geoopt

    sphere = as_geometry(geoopt.Sphere())
    model = MLP(3, hidden=16, layers=2)
    field = TangentProjected(model, sphere)
    x = sphere.projx(torch.randn(8, 3))
    u = field(x, torch.rand(8))
    torch.testing.assert_close((u * x).sum(-1), torch.zeros(8), atol=1e-6, rtol=0)
    # projection is idempotent: the tangent part of the raw output is what comes back
    torch.testing.assert_close(sphere.proju(x, u), u, atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="Geometry"):
        TangentProjected(model, geoopt.Sphere())


class _Oracle(nn.Module):
    """Returns a fixed prediction regardless of input (to test conversions in isolation)."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, t):
        return self.value


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t=st.floats(0.02, 0.98),
       scheduler=st.sampled_from(["condot", "cosine", "vp"]))
def test_prediction_converter_recovers_the_conditional_velocity(seed, t, scheduler):
    # On one conditional path (x0, x1), the exact x1 (or x0) prediction must convert to the exact
    # conditional velocity dx_t = α̇ x1 + σ̇ x0 that AffinePath.sample returns.
    path = {"condot": CondOTPath(), "cosine": AffinePath(CosineScheduler()),
            "vp": AffinePath(VPScheduler())}[scheduler]
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    tt = torch.full((4,), t, dtype=torch.float64)
    sample = path.sample(x0, x1, tt)
    for prediction, value in (("x1", x1), ("x0", x0), ("epsilon", x0), ("velocity", sample.dx_t)):
        u = PredictionConverter(_Oracle(value), path, prediction)(sample.x_t, tt)
        torch.testing.assert_close(u, sample.dx_t, atol=1e-9, rtol=1e-7)


def test_prediction_converter_time_eps_and_validation():
    path = CondOTPath()
    x = torch.randn(3, 2)
    u_end = PredictionConverter(_Oracle(torch.zeros(3, 2)), path, "x1")(x, torch.ones(3))
    assert not torch.isfinite(u_end).all()  # σ_1 = 0: the exact conversion is singular at t = 1
    safe = PredictionConverter(_Oracle(torch.zeros(3, 2)), path, "x1", time_eps=1e-3)
    # float32 holds 1 - 0.999 only to ~1e-4 relative accuracy
    torch.testing.assert_close(safe(x, torch.ones(3)), -x / 1e-3, rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="prediction must be one of"):
        PredictionConverter(_Oracle(x), path, "score")
    with pytest.raises(TypeError, match="AffinePath"):
        PredictionConverter(_Oracle(x), object(), "x1")
    with pytest.raises(ValueError, match="time_eps"):
        PredictionConverter(_Oracle(x), path, "x1", time_eps=0.7)

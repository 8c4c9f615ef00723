"""Classifier-free guidance of product fields (continuous and discrete factors, one scale)."""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.geometry import Euclidean, Product
from flowmatch.geometry.discrete import Discrete
from flowmatch.models import DiscreteGuidance, ProductGuidance
from flowmatch.paths import AffinePath, CondOTScheduler, ProductPath
from flowmatch.paths.mixture import MixtureDiscretePath
from flowmatch.solvers.product import ProductSolver

PI = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MU = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [-1.0, -1.5]], dtype=torch.float64)
S = 0.3
K = 3


def exact_field(x, t, cond):
    """The exact joint field of the mixture Σ_k π_k δ_k ⊗ N(μ_k, S²) (cond NaN), or of its
    component k = cond (a one-hot π): what a perfectly trained conditional network returns."""
    pos, label = x["pos"], x["label"]
    tt = t[:, None]
    var = (1 - tt) ** 2 + tt**2 * S**2
    rate = (-(1 - tt) + tt * S**2) / var
    diff = pos[:, None, :] - tt[:, :, None] * MU[None]
    prior = PI.log().expand(pos.shape[0], K).clone()
    known_class = ~torch.isnan(cond)
    one_hot = torch.full((pos.shape[0], K), -1e30, dtype=torch.float64)
    one_hot.scatter_(1, torch.nan_to_num(cond).long()[:, None], 0.0)
    prior = torch.where(known_class[:, None], one_hot, prior)
    log_post = prior - 0.5 * diff.pow(2).sum(-1) / var - math.log(2 * math.pi) - var.log()
    masked = label == K
    known = torch.full_like(log_post, -1e30)
    known.scatter_(1, label.clamp_max(K - 1)[:, None], 0.0)
    log_post = torch.where(masked[:, None], log_post, known)
    post = torch.softmax(log_post, dim=-1)
    u_k = MU[None] + rate[:, :, None] * diff
    return {"pos": (post[:, :, None] * u_k).sum(1), "label": log_post}


def random_field(x, t, cond):
    """Outputs that depend on cond in an arbitrary (non-linear) way."""
    c = torch.nan_to_num(cond, nan=-3.0)[:, None]
    return {"pos": torch.sin(x["pos"] * c) + t[:, None], "label": torch.cos(c * x["w"]) * 3}


def test_scales_zero_and_one_are_the_single_passes():
    x = {"pos": torch.randn(5, 2, dtype=torch.float64), "w": torch.randn(5, K, dtype=torch.float64)}
    t, cond = torch.rand(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    null = torch.full_like(cond, math.nan)
    for w, c in ((0.0, null), (1.0, cond)):
        out = ProductGuidance(random_field, w, null_cond=math.nan, discrete=["label"])(
            x, t, cond=cond)
        expected = random_field(x, t, c)
        for name in expected:
            torch.testing.assert_close(out[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("w", [0.5, 2.0, 4.0])
def test_guided_outputs_mix_velocities_linearly_and_posteriors_geometrically(w):
    x = {"pos": torch.randn(6, 2, dtype=torch.float64), "w": torch.randn(6, K, dtype=torch.float64)}
    t, cond = torch.rand(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    out = ProductGuidance(random_field, w, null_cond=math.nan, discrete=["label"])(x, t, cond=cond)
    c, u = random_field(x, t, cond), random_field(x, t, torch.full_like(cond, math.nan))
    torch.testing.assert_close(out["pos"], u["pos"] + w * (c["pos"] - u["pos"]))
    # softmax of the guided logits ∝ p_c^w p_∅^(1−w)
    p_c, p_u = torch.softmax(c["label"], -1), torch.softmax(u["label"], -1)
    expected = p_c**w * p_u ** (1 - w)
    torch.testing.assert_close(torch.softmax(out["label"], -1),
                               expected / expected.sum(-1, keepdim=True))
    # the same as the discrete wrapper with its scale w − 1 (there w = 0 means conditional)
    if w >= 1:
        def conditional(x_, t_, cond):
            return random_field(x, t_, cond)["label"]

        alone = DiscreteGuidance(conditional, w - 1, {"cond": torch.full_like(cond, math.nan)})
        torch.testing.assert_close(torch.softmax(out["label"], -1),
                                   torch.softmax(alone(x, t, cond=cond), -1))


def test_guided_point_mass_flow_ends_at_the_extrapolated_point():
    # u(x, t | c) = (c − x)/(1 − t) carries any x to c; u(x, t | ∅) carries it to 0, so the
    # guided field (w c − x)/(1 − t) ends at w c; Euler's last step lands on it exactly.
    geometry = Product(pos=Euclidean(3))
    path = ProductPath(pos=AffinePath(CondOTScheduler()))

    def field(x, t, cond):
        target = torch.nan_to_num(cond)
        return {"pos": (target - x["pos"]) / (1 - t[:, None])}

    cond = torch.randn(4, 3, dtype=torch.float64)
    x0 = {"pos": torch.randn(4, 3, dtype=torch.float64)}
    for w in (0.0, 1.0, 2.5):
        guided = ProductGuidance(field, w, null_cond=math.nan)
        x1 = ProductSolver(guided, geometry, path).sample(x0, num_steps=7, cond=cond)
        torch.testing.assert_close(x1["pos"], w * cond, atol=1e-12, rtol=0)


def test_guidance_of_the_exact_joint_field_picks_the_class_and_its_positions():
    geometry = Product(pos=Euclidean(2), label=Discrete(K, source="mask"))
    path = ProductPath(pos=AffinePath(CondOTScheduler()),
                       label=MixtureDiscretePath(CondOTScheduler()))
    n = 4000
    g = torch.Generator().manual_seed(0)
    x0 = {"pos": torch.randn(n, 2, generator=g, dtype=torch.float64),
          "label": torch.full((n,), K, dtype=torch.long)}
    target = torch.full((n,), 2.0, dtype=torch.float64)  # the rarest class, π = 0.2
    fractions = {}
    for w in (0.0, 1.0, 3.0):
        solver = ProductSolver(ProductGuidance(exact_field, w, null_cond=math.nan,
                                               discrete=["label"]), geometry, path)
        x1 = solver.sample(x0, num_steps=200, generator=g, cond=target)
        hit = x1["label"] == 2
        fractions[w] = float(hit.double().mean())
        if w == 1:  # the conditional flow: class 2's component exactly
            mean = x1["pos"][hit].mean(0)
            torch.testing.assert_close(mean, MU[2], atol=0.05, rtol=0)
    assert abs(fractions[0.0] - 0.2) < 0.03, fractions  # unconditional: the prior's share
    assert fractions[1.0] > 0.99 and fractions[3.0] > 0.99, fractions


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="finite"):
        ProductGuidance(random_field, math.inf, null_cond=math.nan)
    with pytest.raises(TypeError, match="sequence of factor names"):
        ProductGuidance(random_field, 2.0, null_cond=math.nan, discrete="label")
    x = {"pos": torch.randn(2, 2), "w": torch.randn(2, K)}
    with pytest.raises(ValueError, match="not among"):
        ProductGuidance(random_field, 2.0, null_cond=math.nan, discrete=["types"])(
            x, torch.rand(2), cond=torch.rand(2))

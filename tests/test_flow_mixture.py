"""Mixtures of flows: log Σ_k w_k p_k and sampling by member draws."""

from __future__ import annotations

import math

import pytest
import torch
from test_likelihood import GaussianCondOTField, gaussian_log_prob, std_normal_log_prob

from flowmatch.geometry import Sphere
from flowmatch.solvers import FlowMixture, ODESolver, RiemannianODESolver, mixture_log_prob

D64 = torch.float64
MEMBERS = [(torch.tensor([2.0, 0.0], dtype=D64), 0.5), (torch.tensor([-1.0, 1.5], dtype=D64), 0.3)]


def gaussian_mixture(weights):
    solvers = [ODESolver(GaussianCondOTField(mu, s)) for mu, s in MEMBERS]
    return FlowMixture(solvers, weights)


@pytest.mark.parametrize("weights", [None, [0.2, 0.8], [3.0, 1.0]])
def test_log_likelihood_is_the_mixture_of_the_gaussians(weights) -> None:
    # each member pushes N(0, I) to N(μ_k, s_k² I) exactly, so the mixture is a Gaussian mixture
    mix = gaussian_mixture(weights)
    x = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.5, 0.7], [4.0, -3.0]], dtype=D64)
    log_p = mix.log_likelihood(x, std_normal_log_prob, method="dopri5", atol=1e-10, rtol=1e-10)
    w = torch.tensor([0.5, 0.5] if weights is None else weights, dtype=D64)
    w = w / w.sum()
    exact = torch.logsumexp(torch.stack([w[k].log() + gaussian_log_prob(x, mu, s)
                                         for k, (mu, s) in enumerate(MEMBERS)]), dim=0)
    torch.testing.assert_close(log_p, exact, atol=1e-7, rtol=0)


def test_samples_pick_members_by_weight_and_follow_them() -> None:
    mix = gaussian_mixture([0.25, 0.75])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(20000, 2, dtype=D64, generator=gen)
    x1, z = mix.sample(x0, generator=gen, method="rk4", num_steps=20, return_components=True)
    frac = (z == 1).double().mean()
    # binomial standard error sqrt(0.25 · 0.75 / 20000) ≈ 0.003
    assert abs(float(frac) - 0.75) < 0.015
    for k, (mu, s) in enumerate(MEMBERS):
        # member k maps x0 to μ_k + s_k x0 exactly (CondOT marginal between Gaussians)
        torch.testing.assert_close(x1[z == k], mu + s * x0[z == k], atol=1e-6, rtol=0)


def test_sampling_is_reproducible_with_a_generator() -> None:
    mix = gaussian_mixture(None)
    x0 = torch.randn(64, 2, dtype=D64)
    a = mix.sample(x0, generator=torch.Generator().manual_seed(3), method="euler", num_steps=4)
    b = mix.sample(x0, generator=torch.Generator().manual_seed(3), method="euler", num_steps=4)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_identical_members_change_nothing_on_the_sphere() -> None:
    # the zero field keeps the uniform law: log p = −log 4π for one member and for a mixture
    sphere = Sphere(3)
    solver = RiemannianODESolver(lambda x, t: torch.zeros_like(x), sphere)
    x = sphere.sample_base(16, generator=torch.Generator().manual_seed(0), dtype=D64)
    mix = FlowMixture([solver, solver, solver], [1.0, 2.0, 3.0])
    log_p = mix.log_likelihood(x, method="rk4", num_steps=4)
    torch.testing.assert_close(log_p, torch.full_like(log_p, -math.log(4 * math.pi)))


def test_mixture_log_prob_is_stable_and_uniform_by_default() -> None:
    # members far in the tail: exp(−1e4) underflows, the logsumexp does not
    lp = torch.tensor([[-1e4, -3.0], [-1e4 - math.log(3.0), -3.0]], dtype=D64)
    out = mixture_log_prob(lp)
    torch.testing.assert_close(out, torch.tensor([-1e4 + math.log(2 / 3), -3.0], dtype=D64))
    torch.testing.assert_close(mixture_log_prob(lp[:1]), lp[0])


@pytest.mark.parametrize("weights,match", [([1.0], "one number per member"),
                                           ([1.0, -1.0], "finite and positive"),
                                           ([1.0, float("nan")], "finite and positive")])
def test_bad_weights_are_refused(weights, match) -> None:
    with pytest.raises(ValueError, match=match):
        gaussian_mixture(weights)


def test_bad_members_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one solver"):
        FlowMixture([])
    with pytest.raises(ValueError, match="no sample and log_likelihood"):
        FlowMixture([object()])
    with pytest.raises(ValueError, match=r"shape \[K, B\]"):
        mixture_log_prob(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        mixture_log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="return_intermediates"):
        gaussian_mixture(None).sample(torch.zeros(2, 2, dtype=D64), return_intermediates=True)

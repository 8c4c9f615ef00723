"""Metric-induced discrete paths: endpoints, kinetic-optimal rates, sampler and negative ELBO.

Chi-square tests use fixed seeds and accept at p > 1e-3; the sampler's is paired with a
configuration that must be rejected, so it has the power to fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from flowmatch.geometry.discrete import Discrete
from flowmatch.models.discrete import DiscreteMLP
from flowmatch.paths.metric_induced import (
    BetaScheduler,
    LikelihoodOffset,
    MetricExactPosterior,
    MetricInducedPath,
    PowerBetaScheduler,
    ordinal_distance,
)
from flowmatch.solvers.metric_induced import MetricInducedSolver, metric_induced_step
from flowmatch.training.discrete_loss import discrete_cross_entropy
from flowmatch.training.metric_induced_loss import metric_induced_kl_loss, metric_induced_nelbo

K = 5
# a correlated joint law of two tokens over K values (rows: first token)
Q = torch.tensor([[0.20, 0.02, 0.01, 0.00, 0.05],
                  [0.02, 0.10, 0.03, 0.01, 0.00],
                  [0.00, 0.03, 0.04, 0.06, 0.02],
                  [0.01, 0.00, 0.05, 0.15, 0.02],
                  [0.06, 0.00, 0.01, 0.02, 0.09]], dtype=torch.float64)
Q = Q / Q.sum()
PI = torch.tensor([0.4, 0.05, 0.1, 0.3, 0.15], dtype=torch.float64)
SCHEDULERS = [PowerBetaScheduler(1.0, 1.0), PowerBetaScheduler(0.3, 2.0),
              PowerBetaScheduler(2.0, 0.7)]


def random_distance(k: int, seed: int) -> torch.Tensor:
    """A non-symmetric distance: positive off the diagonal, zero on it."""
    d = torch.rand(k, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    d = 0.2 + 2 * d
    return d.fill_diagonal_(0.0)


def paths():
    return [MetricInducedPath.ordinal(K, SCHEDULERS[0]),
            MetricInducedPath(random_distance(K, 1), SCHEDULERS[1]),
            MetricInducedPath.ordinal(K, SCHEDULERS[2], power=2.0)]


def chi2_pvalue(cells: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square p-value of the cell counts against ``probs``; cells of probability 0 must
    stay empty (they would make the statistic 0/0)."""
    counts = torch.bincount(cells, minlength=probs.numel()).double()
    probs = probs.flatten()
    if bool((counts[probs == 0] > 0).any()):
        return 0.0
    keep = probs > 0
    return float(stats.chisquare(counts[keep].numpy(),
                                 (probs[keep] / probs[keep].sum() * len(cells)).numpy()).pvalue)


def marginal_path(path: MetricInducedPath, target: torch.Tensor, t: float) -> torch.Tensor:
    """p_t(x) = Σ_{x₁} target(x₁) Π_i p_t(xⁱ | x₁ⁱ) for a 1- or 2-token target table."""
    cond = path.log_probs(torch.arange(K).unsqueeze(0), t).exp()[0]  # [x₁, x]
    if target.dim() == 1:
        return target @ cond
    return torch.einsum("ab,ax,by->xy", target, cond, cond)


# -- scheduler ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", SCHEDULERS)
def test_scheduler_endpoints_and_derivative(sched):
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    assert float(sched.beta(torch.tensor(0.0, dtype=torch.float64))) == 0.0
    assert math.isinf(float(sched.beta(torch.tensor(1.0, dtype=torch.float64))))
    eps = 1e-6
    fd = (sched.beta(t + eps) - sched.beta(t - eps)) / (2 * eps)
    torch.testing.assert_close(sched.d_beta(t), fd, rtol=1e-6, atol=1e-8)
    assert bool((sched.d_beta(t) > 0).all())


@pytest.mark.parametrize(("c", "a"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (float("inf"), 1.0),
                                      (1.0, float("nan"))])
def test_scheduler_rejects_bad_parameters(c, a):
    with pytest.raises(ValueError, match="must be a positive finite number"):
        PowerBetaScheduler(c, a)


# -- the conditional path ----------------------------------------------------------------------
@pytest.mark.parametrize("path", paths(), ids=["ordinal", "random", "squared"])
def test_path_is_uniform_at_t0_and_a_point_mass_at_t1(path):
    x1 = torch.arange(K).unsqueeze(0)  # [1, K]: every data token
    p0 = path.log_probs(x1, 0.0).exp()[0]
    torch.testing.assert_close(p0, torch.full((K, K), 1.0 / K, dtype=torch.float64))
    eye = torch.eye(K, dtype=torch.float64)
    torch.testing.assert_close(path.log_probs(x1, 1.0).exp()[0], eye)
    # the approach to δ_{x₁} is continuous: the mass off x₁ shrinks monotonically to ~0
    off = [float((path.log_probs(x1, t).exp()[0] * (1 - eye)).sum(-1).max())
           for t in (0.3, 0.6, 0.8, 0.9999)]
    assert all(b < a for a, b in zip(off, off[1:], strict=False))
    assert off[-1] < 1e-6


def test_sample_draws_the_boltzmann_law_and_ends_at_x1():
    path = paths()[1]
    g = torch.Generator().manual_seed(0)
    n = 20_000
    x1 = torch.full((n,), 3)
    t = torch.full((n,), 0.4)
    x_t = path.sample(None, x1, t, generator=g).x_t
    expect = path.log_probs(torch.tensor([3]), 0.4).exp()[0]
    assert chi2_pvalue(x_t, expect) > 1e-3
    # a wrong temperature must be rejected (power)
    assert chi2_pvalue(x_t, path.log_probs(torch.tensor([3]), 0.5).exp()[0]) < 1e-3
    x1 = torch.randint(K, (7, 3), generator=g)
    s = path.sample(torch.zeros_like(x1), x1, torch.ones(7), generator=g)
    assert torch.equal(s.x_t, x1) and s.dx_t is None


# -- kinetic-optimal conditional rates ---------------------------------------------------------
@pytest.mark.parametrize("path", paths(), ids=["ordinal", "random", "squared"])
@pytest.mark.parametrize("t", [0.05, 0.3, 0.6, 0.9])
def test_conditional_rates_solve_the_kolmogorov_forward_equation(path, t):
    states = torch.arange(K)
    eps = 1e-6
    for x1 in range(K):
        # u[z, x] = rate z → x given x₁; the forward equation is ∂_t p(x) = Σ_z u[z, x] p(z)
        u = path.conditional_rates(states, torch.full((K,), x1), t)
        p = path.log_probs(torch.tensor([x1]), t).exp()[0]
        dp = (path.log_probs(torch.tensor([x1]), t + eps).exp()[0]
              - path.log_probs(torch.tensor([x1]), t - eps).exp()[0]) / (2 * eps)
        torch.testing.assert_close(u.t() @ p, dp, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("path", paths(), ids=["ordinal", "random", "squared"])
def test_conditional_rates_are_a_generator_that_only_moves_towards_x1(path):
    g = torch.Generator().manual_seed(1)
    x_t = torch.randint(K, (6, 4), generator=g)
    x1 = torch.randint(K, (6, 4), generator=g)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.98
    u = path.conditional_rates(x_t, x1, t)
    assert u.shape == (6, 4, K)
    torch.testing.assert_close(u.sum(-1), torch.zeros(6, 4, dtype=u.dtype), atol=1e-12, rtol=0)
    off = u.scatter(-1, x_t.unsqueeze(-1), 0.0)
    assert bool((off >= 0).all())
    d = path.distance
    closer = d.t()[x1] < d[x_t, x1].unsqueeze(-1)  # d(y, x₁) < d(x_t, x₁)
    assert bool(((off > 0) == closer).all())  # every closer token is reachable, no other


# -- marginal rates from a posterior -----------------------------------------------------------
@pytest.mark.parametrize("path", paths(), ids=["ordinal", "random", "squared"])
def test_marginal_rates_are_the_posterior_average_of_conditional_rates(path):
    sp = Discrete(K, "uniform")
    g = torch.Generator().manual_seed(2)
    x_t = torch.randint(K, (8, 3), generator=g)
    logits = torch.randn(8, 3, K, generator=g, dtype=torch.float64) * 2
    for t in (0.02, 0.4, 0.95):  # t > 0: β̇₀ = ∞ for the a < 1 scheduler
        u = path.rates(logits, x_t, t, sp)
        q = logits.softmax(-1)
        expect = sum(q[..., y:y + 1] * path.conditional_rates(x_t, torch.full_like(x_t, y), t)
                     for y in range(K))
        torch.testing.assert_close(u, expect, rtol=1e-10, atol=1e-12)
        scale = float(u.abs().max())
        torch.testing.assert_close(u.sum(-1), torch.zeros(8, 3, dtype=u.dtype),
                                   atol=1e-12 * scale, rtol=0)
        assert bool((u.scatter(-1, x_t.unsqueeze(-1), 0.0) >= 0).all())


def test_shared_and_per_token_intensities_agree():
    path = paths()[1]
    g = torch.Generator().manual_seed(3)
    x_t = torch.randint(K, (50, 2), generator=g)
    probs = torch.randn(50, 2, K, generator=g, dtype=torch.float64).softmax(-1)
    shared = path.marginal_intensity(probs, x_t, 0.8)
    beta = torch.full((50, 2), 0.8, dtype=torch.float64)
    beta[0, 0] = 0.8 + 1e-13  # forces the per-token route
    torch.testing.assert_close(path.marginal_intensity(probs, x_t, beta), shared, rtol=1e-9,
                               atol=1e-12)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.85])
def test_exact_posterior_rates_generate_the_marginal_path(t):
    # with the exact posterior the marginal rates must move p_t(x) = Σ π(x₁) p_t(x | x₁)
    path = paths()[1]
    sp = Discrete(K, "uniform")
    states = torch.arange(K)
    post = MetricExactPosterior(PI, path)
    u = path.rates(post(states.unsqueeze(1), torch.full((K,), t, dtype=torch.float64))[:, 0],
                   states, t, sp)
    eps = 1e-6
    dp = (marginal_path(path, PI, t + eps) - marginal_path(path, PI, t - eps)) / (2 * eps)
    torch.testing.assert_close(u.t() @ marginal_path(path, PI, t), dp, rtol=1e-5, atol=1e-7)


def test_likelihood_offset_can_represent_the_exact_posterior():
    # for a one-token target the exact posterior is π(y) p_t(x_t | y): a network that outputs
    # log π(y) − log Z_t(y) (a function of t and y only) is exact behind LikelihoodOffset
    path = paths()[0]
    x = torch.arange(K).repeat(3).unsqueeze(1)
    t = torch.tensor([0.2] * K + [0.6] * K + [0.9] * K, dtype=torch.float64)

    def net(x, t):
        norm = path.log_likelihood(x, t) - path.log_likelihood(x, t, normalised=False)
        return PI.log() + norm

    got = LikelihoodOffset(net, path)(x, t).log_softmax(-1)
    torch.testing.assert_close(got, MetricExactPosterior(PI, path)(x, t), rtol=1e-10,
                               atol=1e-10)


# -- sampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["marginal", "sample_x1"])
def test_exact_posterior_sampler_reproduces_a_correlated_target(method):
    path = MetricInducedPath.ordinal(K, PowerBetaScheduler(1.0, 1.0))
    sp = Discrete(K, "uniform")
    solver = MetricInducedSolver(MetricExactPosterior(Q, path), sp, path)
    g = torch.Generator().manual_seed(4)
    n = 12_000
    x0 = sp.sample_base((n, 2), generator=g)
    # intermediates at t = 0.5 test the jumps themselves; at t = 1 the whole chain
    xs = solver.sample(x0, time_grid=[0.0, 0.5, 1.0], num_steps=100, method=method,
                       return_intermediates=True, generator=g)
    assert xs.shape == (3, n, 2) and solver.nfe == 100
    assert chi2_pvalue(xs[1, :, 0] * K + xs[1, :, 1], marginal_path(path, Q, 0.5)) > 1e-3
    assert chi2_pvalue(xs[2, :, 0] * K + xs[2, :, 1], Q) > 1e-3
    # power: two steps cannot build the correlation (the last step draws tokens independently)
    x_few = solver.sample(x0, num_steps=2, method=method, generator=g)
    assert chi2_pvalue(x_few[:, 0] * K + x_few[:, 1], Q) < 1e-3


def test_step_to_t1_draws_from_the_posterior_and_validates():
    path = paths()[0]
    sp = Discrete(K, "uniform")
    x_t = torch.zeros(4, 3, dtype=torch.long)
    logits = torch.full((4, 3, K), -1e9)
    logits[..., 2] = 0.0
    out = metric_induced_step(x_t, logits, 0.9, 0.1, path, sp)
    assert torch.equal(out, torch.full_like(x_t, 2))
    with pytest.raises(ValueError, match="t \\+ h ≤ 1"):
        metric_induced_step(x_t, logits, 0.9, 0.2, path, sp)
    with pytest.raises(ValueError, match="method must be one of"):
        metric_induced_step(x_t, logits, 0.1, 0.1, path, sp, method="euler")


# -- the negative ELBO -------------------------------------------------------------------------
def nelbo_by_quadrature(path: MetricInducedPath, model_target: torch.Tensor, n: int = 2000):
    """NELBO(x₁) for every x₁ of a one-token model: exact expectation over x_t, trapezoid in t."""
    sp = Discrete(K, "uniform")
    post = MetricExactPosterior(model_target, path)
    ts = torch.linspace(0, 1, n + 1, dtype=torch.float64)[:-1]
    T, xt = ts.repeat_interleave(K), torch.arange(K).repeat(n)
    logits = post(xt.unsqueeze(1), T)
    out = []
    for x1v in range(K):
        x1 = torch.full_like(xt, x1v)
        w = path.log_probs(x1.unsqueeze(1), T).exp()[:, 0].gather(-1, xt.unsqueeze(1))[:, 0]
        ell = metric_induced_kl_loss(logits, x1.unsqueeze(1), xt.unsqueeze(1), T, path, sp,
                                     reduction="none")[:, 0]
        # states of probability 0 (underflow at large β) contribute nothing
        f = torch.where(w > 0, w * ell, 0.0).reshape(n, K).sum(-1)
        f = torch.cat([f, f.new_zeros(1)])  # the integrand vanishes as t → 1
        out.append(float(torch.trapezoid(f, dx=1.0 / n)))
    return torch.tensor(out, dtype=torch.float64)


def test_nelbo_bounds_the_model_nll_and_does_not_depend_on_the_scheduler():
    wrong = torch.tensor([0.1, 0.3, 0.1, 0.3, 0.2], dtype=torch.float64)
    results = []
    for sched in SCHEDULERS[:2]:
        path = MetricInducedPath(random_distance(K, 5), sched)
        right_model, wrong_model = nelbo_by_quadrature(path, PI), nelbo_by_quadrature(path, wrong)
        # the model CTMC of an exact posterior for law m ends at m: NELBO(x₁) ≥ −log m(x₁)
        assert bool((right_model >= -PI.log() - 1e-6).all())
        assert bool((wrong_model >= -wrong.log() - 1e-6).all())
        results.append(right_model)
    # every rate is β̇ × f(β): the bound is an integral over β, the same for any scheduler
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)


def test_monte_carlo_nelbo_matches_quadrature():
    path = MetricInducedPath.ordinal(K, PowerBetaScheduler(1.0, 1.0))
    sp = Discrete(K, "uniform")
    exact = nelbo_by_quadrature(path, PI)
    g = torch.Generator().manual_seed(6)
    x1 = torch.tensor([0, 3]).repeat(1500).unsqueeze(1)
    model = MetricExactPosterior(PI, path)
    est = metric_induced_nelbo(model, x1, path, sp, num_times=16, generator=g)
    for v in (0, 3):
        e = est[x1[:, 0] == v]
        assert abs(float(e.mean()) - float(exact[v])) < 4 * float(e.std()) / math.sqrt(len(e))
    # one time per stratum for the whole batch: unbiased too, with noise shared by the batch,
    # so compare the average of independent repeats
    reps = torch.stack([metric_induced_nelbo(model, x1[:2], path, sp, num_times=8,
                                             shared_time=True, generator=g)
                        for _ in range(100)])
    err = (reps.mean(0) - exact[x1[:2, 0]]).abs()
    assert bool((err < 4 * reps.std(0) / math.sqrt(100)).all())


def test_kl_loss_is_non_negative_and_vanishes_for_the_point_mass_posterior():
    path = paths()[1]
    sp = Discrete(K, "uniform")
    g = torch.Generator().manual_seed(7)
    x1 = torch.randint(K, (30, 2), generator=g)
    t = torch.rand(30, generator=g) * 0.95
    x_t = path.sample(None, x1, t, generator=g).x_t
    logits = torch.randn(30, 2, K, generator=g, requires_grad=True)
    loss = metric_induced_kl_loss(logits, x1, x_t, t, path, sp, reduction="none")
    assert loss.shape == (30, 2) and bool((loss >= -1e-6).all())
    loss.mean().backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    # the posterior δ_{x₁} reproduces the conditional rates exactly
    exact = torch.full((30, 2, K), -1e4).scatter(-1, x1.unsqueeze(-1), 0.0)
    assert float(metric_induced_kl_loss(exact, x1, x_t, t, path, sp).abs()) < 1e-6


@pytest.mark.parametrize("offset", [False, True], ids=["plain", "likelihood_offset"])
def test_cross_entropy_training_approaches_the_exact_posterior(offset):
    # the cross-entropy of the exact posterior on the same batches is the floor of the loss
    path = MetricInducedPath.ordinal(K, PowerBetaScheduler(1.0, 1.0))
    sp = Discrete(K, "uniform")
    torch.manual_seed(0)
    net = DiscreteMLP(2, K, K, hidden=64, layers=2, embed_dim=16)
    model = LikelihoodOffset(net, path) if offset else net
    exact = MetricExactPosterior(Q, path)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(8)
    gaps = []
    for _ in range(300):
        c = torch.multinomial(Q.flatten(), 256, replacement=True, generator=g)
        x1 = torch.stack([c // K, c % K], 1)
        t = torch.rand(256, generator=g)
        x_t = path.sample(None, x1, t, generator=g).x_t
        loss = discrete_cross_entropy(model(x_t, t), x1, x_t, sp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        floor = discrete_cross_entropy(exact(x_t, t.double()).float(), x1, x_t, sp)
        gaps.append(float(loss.detach() - floor))
    first, last = sum(gaps[:30]) / 30, sum(gaps[-100:]) / 100
    assert last < 0.03 and last < first - 0.02


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("distance", "match"), [
    (torch.zeros(3, 4), "square tensor"),
    (torch.zeros(1, 1), "K ≥ 2"),
    (ordinal_distance(3) + torch.eye(3), "zero on the diagonal"),
    (ordinal_distance(3) * torch.tensor([[1.0, 0, 1], [1, 1, 1], [1, 1, 1]]), "positive off"),
    (ordinal_distance(3) - 2 * (1 - torch.eye(3, dtype=torch.float64)), "positive off"),
    (ordinal_distance(3).fill_diagonal_(float("nan")), "finite"),
])
def test_bad_distance_matrices_are_rejected(distance, match):
    with pytest.raises(ValueError, match=match):
        MetricInducedPath(distance)


def test_bad_arguments_get_clear_errors():
    path = MetricInducedPath.ordinal(K)
    sp = Discrete(K, "uniform")
    x = torch.zeros(2, 3, dtype=torch.long)
    logits = torch.zeros(2, 3, K)
    with pytest.raises(TypeError, match="BetaScheduler"):
        MetricInducedPath.ordinal(K, scheduler=object())
    with pytest.raises(TypeError, match="tensor"):
        MetricInducedPath([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="vocab_size must be an integer ≥ 2"):
        ordinal_distance(1)
    with pytest.raises(ValueError, match="tokens in \\[0, 4\\]"):
        path.sample(None, torch.full((2, 3), K), torch.zeros(2))
    with pytest.raises(ValueError, match="integer tensor"):
        path.sample(None, torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        path.sample(None, x, torch.full((2,), 1.5))
    with pytest.raises(ValueError, match="same shape"):
        path.sample(torch.zeros(2, 2, dtype=torch.long), x, torch.zeros(2))
    with pytest.raises(ValueError, match="'uniform'"):
        path.rates(logits, x, 0.5, Discrete(K, "mask"))
    with pytest.raises(ValueError, match="'uniform'"):
        MetricInducedSolver(lambda x, t: logits, Discrete(K + 1, "uniform"), path)
    with pytest.raises(TypeError, match="MetricInducedPath"):
        MetricInducedSolver(lambda x, t: logits, sp, object())
    with pytest.raises(ValueError, match="NaN"):
        path.rates(torch.full((2, 3, K), float("nan")), x, 0.5, sp)
    with pytest.raises(ValueError, match="shape \\(2, 3, 5\\)"):
        path.rates(torch.zeros(2, 3, K + 1), x, 0.5, sp)
    with pytest.raises(ValueError, match="t in \\[0, 1\\)"):
        path.rates(logits, x, 1.0, sp)
    with pytest.raises(ValueError, match="finite β̇"):
        MetricInducedPath.ordinal(K, PowerBetaScheduler(1.0, 0.5)).conditional_rates(x, x, 0.0)
    with pytest.raises(ValueError, match="t must lie in \\[0, 1\\)"):
        metric_induced_kl_loss(logits, x, x, torch.ones(2), path, sp)
    with pytest.raises(ValueError, match="num_times"):
        metric_induced_nelbo(lambda x, t: logits, x, path, sp, num_times=0)
    with pytest.raises(ValueError, match="method must be one of"):
        MetricInducedSolver(lambda x, t: logits, sp, path).sample(x, method="exact")


def test_base_scheduler_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        BetaScheduler()

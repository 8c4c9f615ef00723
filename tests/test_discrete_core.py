"""Discrete flow matching core: the Discrete space, mixture paths, rates and losses.

Statistical tests use fixed seeds; thresholds are p-values of 1e-3 (a correct implementation
fails one such test with probability 1e-3 for a fresh seed, never for the fixed one).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from flowmatch.geometry.discrete import Discrete
from flowmatch.geometry.product import Product
from flowmatch.models.discrete import ExactPosterior
from flowmatch.paths.mixture import MixtureDiscretePath, posterior_probs, source_jump_rate
from flowmatch.paths.schedulers import (
    CondOTScheduler,
    CosineConvexScheduler,
    CosineScheduler,
    PolynomialScheduler,
)
from flowmatch.training.discrete_loss import (
    discrete_cross_entropy,
    discrete_nelbo,
    generalized_kl_loss,
)

SOURCES = ["mask", "uniform", [0.5, 0.2, 0.2, 0.1]]


def space_for(source, K=4):
    return Discrete(K, source)


# -- the space --------------------------------------------------------------------------------
@pytest.mark.parametrize("source", SOURCES)
def test_sample_base_follows_the_source(source):
    sp = space_for(source)
    g = torch.Generator().manual_seed(1)
    x = sp.sample_base((4000, 5), generator=g, dtype=torch.float32)  # float dtype: Product use
    assert x.dtype == torch.int64 and x.shape == (4000, 5)
    sp.check_point(x)
    counts = torch.bincount(x.flatten(), minlength=sp.num_states).double()
    expected = sp.source_probs * x.numel()
    support = expected > 0
    assert counts[~support].sum() == 0
    if support.sum() > 1:
        p = stats.chisquare(counts[support].numpy(), expected[support].numpy()).pvalue
        assert p > 1e-3


def test_mask_vocabulary_layout():
    sp = Discrete(5, "mask")
    assert sp.mask_token == 5 and sp.num_states == 6 and sp.is_discrete and sp.point_shape == ()
    assert torch.equal(sp.sample_base(3), torch.full((3,), 5))
    lp = sp.base_log_prob(torch.tensor([5, 0]))
    assert lp[0] == 0 and lp[1] == -math.inf
    assert Discrete(5, "uniform").mask_token is None
    assert torch.allclose(Discrete(5, "uniform").base_log_prob(torch.tensor([3])),
                          torch.tensor([-math.log(5)]))


def test_check_point_names_the_problem():
    sp = Discrete(4, "mask")
    sp.check_point(torch.tensor([0, 3, 4]))  # the mask token is a valid state
    with pytest.raises(ValueError, match=r"data tokens in \[0, 3\].*\[0, 4\]"):
        sp.check_point(torch.tensor([0, 4]), "x1", allow_mask=False)
    with pytest.raises(ValueError, match=r"states in \[0, 4\].*\[-1, 2\]"):
        sp.check_point(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="integer token ids"):
        sp.check_point(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="vocab_size"):
        Discrete(0)
    with pytest.raises(ValueError, match="shape \\[4\\]"):
        Discrete(4, [0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        Discrete(2, [0.5, 0.6])
    with pytest.raises(ValueError, match="'mask', 'uniform'"):
        Discrete(2, "masked")


def test_check_logits():
    sp = Discrete(4, "uniform")
    x = torch.zeros(2, 3, dtype=torch.long)
    sp.check_logits(torch.zeros(2, 3, 4), x)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\).*\(2, 3, 5\)"):
        sp.check_logits(torch.zeros(2, 3, 5), x)
    bad = torch.zeros(2, 3, 4)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        sp.check_logits(bad, x)
    ok = torch.zeros(2, 3, 4)
    ok[..., 1:] = float("-inf")
    sp.check_logits(ok, x)  # −inf forbids a token; allowed
    ok[0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match="all −inf"):
        sp.check_logits(ok, x)


def test_product_with_a_discrete_factor():
    from flowmatch.geometry.euclidean import Euclidean

    prod = Product(pos=Euclidean(3), types=Discrete(7, "mask"))
    x = prod.sample_base({"pos": (5,), "types": (5,)}, dtype=torch.float64)
    assert x["pos"].dtype == torch.float64 and x["types"].dtype == torch.int64
    prod.check_point(x)
    assert list(prod.discrete_factors) == ["types"]


# -- the path ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", [CondOTScheduler(), PolynomialScheduler(3),
                                       CosineConvexScheduler()])
def test_path_keeps_data_with_probability_kappa(scheduler):
    path = MixtureDiscretePath(scheduler)
    n = 20000
    x0 = torch.full((n, 2), 9)
    x1 = torch.randint(9, (n, 2))
    g = torch.Generator().manual_seed(2)
    for tv in (0.0, 0.3, 0.8, 1.0):
        t = torch.full((n,), tv)
        s = path.sample(x0, x1, t, generator=g)
        assert s.dx_t is None
        from_data = s.x_t == x1
        assert torch.all(from_data | (s.x_t == x0))
        k = float(scheduler.kappa(torch.tensor(tv)))
        hits = int(from_data.sum())
        if k in (0.0, 1.0):
            assert hits == int(k * 2 * n)
        else:
            assert stats.binomtest(hits, 2 * n, k).pvalue > 1e-3


def test_path_time_is_per_sample():
    # t = [0, 1] must act on whole rows even when B equals the token count
    path = MixtureDiscretePath(CondOTScheduler())
    x0, x1 = torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long)
    s = path.sample(x0, x1, torch.tensor([0.0, 1.0]))
    assert torch.equal(s.x_t, torch.tensor([[0, 0], [1, 1]]))


def test_path_rejects_bad_input():
    path = MixtureDiscretePath(CondOTScheduler())
    with pytest.raises(TypeError, match="ConvexScheduler"):
        MixtureDiscretePath(CosineScheduler())
    x = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        path.sample(x, x[:, :2], torch.rand(4))
    with pytest.raises(ValueError, match="integer token"):
        path.sample(x.float(), x, torch.rand(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        path.sample(x, x, torch.full((4,), 1.5))
    with pytest.raises(ValueError, match="3 entries"):
        path.sample(x, x, torch.rand(3))


# -- rates ------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(source=st.sampled_from(range(3)), K=st.integers(2, 6), t=st.floats(0.0, 0.99),
       eta=st.floats(0.0, 5.0), seed=st.integers(0, 10_000), keep=st.booleans())
def test_rates_are_a_generator_matrix(source, K, t, eta, seed, keep):
    # off-diagonal rates ≥ 0 and every row sums to zero, for any posterior and state
    src = ["mask", "uniform", None][source]
    if src is None:
        src = torch.softmax(torch.randn(K, generator=torch.Generator().manual_seed(seed)), 0)
    sp = Discrete(K, src)
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randint(sp.num_states, (3, 4), generator=g)
    logits = 3 * torch.randn(3, 4, K, generator=g, dtype=torch.float64)
    u = MixtureDiscretePath(PolynomialScheduler(2)).rates(logits, x_t, t, sp, eta=eta,
                                                          keep_unmasked=keep)
    assert u.shape == (3, 4, sp.num_states)
    off = u.masked_fill(torch.nn.functional.one_hot(x_t, sp.num_states).bool(), 0.0)
    assert float(off.min()) >= 0.0
    scale = 1 + float(u.abs().max())
    assert torch.allclose(u.sum(-1), torch.zeros(()).double(), atol=1e-9 * scale)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("stochastic", [{}, {"eta": 1.7}, {"corrector": 0.8},
                                        {"corrector": lambda t: 12 * t**2 * (1 - t) ** 0.25}])
def test_rates_transport_the_marginals_exactly(source, stochastic):
    # One token, target q: p_t = κ_t q + (1 − κ_t) p₀, so d/dt p_t = κ̇_t (q − p₀). With the exact
    # posterior the rate matrix Q_t must satisfy p_t Q_t = d/dt p_t — for every η / corrector,
    # since the extra term is in detailed balance and carries no flux.
    sp = space_for(source)
    sched = PolynomialScheduler(3)
    path = MixtureDiscretePath(sched)
    q = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    exact = ExactPosterior(q, sp, sched)
    states = torch.arange(sp.num_states).unsqueeze(-1)  # every state as a batch of 1-token x
    p0 = sp.source_probs
    q_full = torch.nn.functional.pad(q, (0, sp.num_states - 4))
    for t in (0.05, 0.3, 0.6, 0.95):
        k, dk = float(sched.kappa(torch.tensor(t))), float(sched.d_kappa(torch.tensor(t)))
        p_t = k * q_full + (1 - k) * p0
        logits = exact(states, torch.full((sp.num_states,), t)).double()
        logits = torch.nan_to_num(logits, nan=0.0)  # rows of states p_t never visits
        Q = path.rates(logits, states, t, sp, **stochastic)[:, 0, :]
        flux = p_t @ Q
        assert torch.allclose(flux, dk * (q_full - p0), atol=1e-5), (t, flux, dk * (q_full - p0))


def test_campbell_rates_for_the_mask_path():
    # κ_t = t, mask source: unmasking rate (1 + η t)/(1 − t) · p(y), re-masking rate η.
    sp, eta, t = Discrete(3, "mask"), 0.7, 0.4
    logits = torch.log(torch.tensor([[[0.2, 0.3, 0.5]], [[0.6, 0.2, 0.2]]]))
    x = torch.tensor([[3], [1]])
    u = MixtureDiscretePath(CondOTScheduler()).rates(logits, x, t, sp, eta=eta)
    expect_masked = (1 + eta * t) / (1 - t) * torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(u[0, 0, :3], expect_masked)
    assert torch.allclose(u[1, 0], torch.tensor([0.0, -eta, 0.0, eta]))  # keep_unmasked


def test_corrector_and_eta_parametrise_the_same_rate():
    sched = PolynomialScheduler(3)
    t = torch.tensor(0.4)
    k, dk = float(sched.kappa(t)), float(sched.d_kappa(t))
    c = 12 * 0.4**2 * 0.6**0.25
    assert math.isclose(source_jump_rate(k, dk, 0.4, corrector=c), c * dk / k)
    assert source_jump_rate(0.0, 0.0, 0.0, corrector=5.0) == 0.0  # κ = 0: still at the source
    with pytest.raises(ValueError, match="not both"):
        source_jump_rate(k, dk, 0.4, eta=1.0, corrector=1.0)
    with pytest.raises(ValueError, match="eta must be"):
        source_jump_rate(k, dk, 0.4, eta=-1.0)
    with pytest.raises(ValueError, match="c_t must be"):
        source_jump_rate(k, dk, 0.4, corrector=lambda s: -1.0)


def test_keep_unmasked_posterior():
    sp = Discrete(3, "mask")
    logits = torch.zeros(1, 2, 3)
    p = posterior_probs(logits, torch.tensor([[3, 1]]), sp)
    assert torch.allclose(p, torch.tensor([[[1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]]]))


# -- losses -----------------------------------------------------------------------------------
def _two_token_target():
    q = torch.tensor([[0.30, 0.02, 0.08], [0.05, 0.25, 0.05], [0.10, 0.05, 0.10]],
                     dtype=torch.float64)
    return q / q.sum()


def test_generalized_kl_is_nonnegative_and_zero_only_at_the_truth():
    sp = Discrete(5, "uniform")
    path = MixtureDiscretePath(CondOTScheduler())
    g = torch.Generator().manual_seed(3)
    x1 = torch.randint(5, (64, 3), generator=g)
    x_t = torch.randint(5, (64, 3), generator=g)
    t = torch.rand(64, generator=g) * 0.99
    ell = generalized_kl_loss(torch.randn(64, 3, 5, generator=g), x1, x_t, t, path, sp,
                              reduction="none")
    assert ell.shape == (64, 3) and float(ell.min()) >= 0
    # a posterior putting all mass on x1 has zero loss
    sharp = torch.nn.functional.one_hot(x1, 5) * 50.0
    assert float(generalized_kl_loss(sharp, x1, x_t, t, path, sp).abs()) < 1e-6


def test_nelbo_is_tight_for_the_exact_mask_posterior():
    # With the exact posterior, the masked-diffusion bound averages exact any-order
    # autoregressive likelihoods: NELBO(x1) = −log q(x1). The uniform source's bound is looser.
    q = _two_token_target()
    g = torch.Generator().manual_seed(4)
    cells = torch.tensor([[a, b] for a in range(3) for b in range(3)])
    x1 = cells.repeat(400, 1)
    target = -q.flatten().log().float()
    for source in ("mask", "uniform"):
        sp = Discrete(3, source)
        sched = PolynomialScheduler(2)
        path = MixtureDiscretePath(sched)
        nelbo = discrete_nelbo(ExactPosterior(q, sp, sched), x1, path, sp, num_times=16,
                               generator=g).view(400, 9)
        mean, sem = nelbo.mean(0), nelbo.std(0) / math.sqrt(400)
        if source == "mask":
            assert torch.all((mean - target).abs() < 4 * sem + 1e-3), (mean, target, sem)
        else:
            entropy = float((q * -q.log()).sum())
            avg = float((mean.double() * q.flatten()).sum())
            assert avg > entropy + 0.02, (avg, entropy)


def test_cross_entropy_keep_unmasked_and_bad_input():
    sp = Discrete(3, "mask")
    x1 = torch.tensor([[0, 2]])
    x_t = torch.tensor([[3, 2]])
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]]))
    ce = discrete_cross_entropy(logits, x1, x_t, sp, reduction="none")
    assert torch.allclose(ce, torch.tensor([[math.log(2), 0.0]]))
    with pytest.raises(ValueError, match="data tokens"):
        discrete_cross_entropy(logits, torch.tensor([[3, 2]]), x_t, sp)
    with pytest.raises(ValueError, match="shape"):
        discrete_cross_entropy(logits[..., :2], x1, x_t, sp)
    nan = logits.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        discrete_cross_entropy(nan, x1, x_t, sp)
    with pytest.raises(ValueError, match="reduction"):
        discrete_cross_entropy(logits, x1, x_t, sp, reduction="avg")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        generalized_kl_loss(logits, x1, x_t, torch.ones(1), MixtureDiscretePath(
            CondOTScheduler()), sp)

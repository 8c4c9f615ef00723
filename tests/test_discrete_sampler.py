"""The CTMC sampler: it reproduces known targets, respects the mask path, and its options work.

Chi-square tests use fixed seeds and accept at p > 1e-3; each is paired with a configuration
that must be rejected, so the test has the power to fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from flowmatch.geometry.discrete import Discrete
from flowmatch.models.discrete import DiscreteGuidance, DiscreteMLP, ExactPosterior
from flowmatch.paths.mixture import MixtureDiscretePath
from flowmatch.paths.schedulers import CondOTScheduler, CosineConvexScheduler, PolynomialScheduler
from flowmatch.solvers.ctmc import (
    DiscreteSolver,
    ctmc_step,
    filter_logits,
    jump_probabilities,
    sample_categorical,
)

# a correlated joint distribution of two tokens over three values
Q = torch.tensor([[0.30, 0.02, 0.08], [0.05, 0.25, 0.05], [0.10, 0.05, 0.10]],
                 dtype=torch.float64)
Q = Q / Q.sum()


def chi2_pvalue(samples: torch.Tensor, q: torch.Tensor) -> float:
    K = q.shape[0]
    cells = samples[:, 0] * K + samples[:, 1]
    counts = torch.bincount(cells, minlength=K * K).double()
    return float(stats.chisquare(counts.numpy(), (q.flatten() * len(cells)).numpy()).pvalue)


SOURCES = ["mask", "uniform", [0.6, 0.3, 0.1]]
OPTIONS = [{}, {"eta": 2.0}, {"corrector": lambda t: 3 * t * (1 - t)}]
# the diagonal of sources × options runs always (≈ 5 s each on a quiet core), the rest
# with the slow tests
CASES = [pytest.param(s, o, marks=() if i == j else pytest.mark.slow)
         for i, s in enumerate(SOURCES) for j, o in enumerate(OPTIONS)]


@pytest.mark.parametrize(("source", "options"), CASES)
def test_exact_posterior_reproduces_a_correlated_target(source, options):
    sp = Discrete(3, source)
    sched = PolynomialScheduler(2)
    solver = DiscreteSolver(ExactPosterior(Q, sp, sched), sp, MixtureDiscretePath(sched))
    g = torch.Generator().manual_seed(5)
    n = 12_000
    x0 = sp.sample_base((n, 2), generator=g)
    # τ-leaping error is O(h): both tokens jumping in one step draws them independently. With
    # 300 steps that mass is ~0.3 %, below what 12,000 samples resolve.
    x1 = solver.sample(x0, num_steps=300, generator=g, **options)
    assert solver.nfe == 300
    assert chi2_pvalue(x1, Q) > 1e-3
    # one step draws every token from its marginal at once: the chi-square must reject that
    x1_coarse = solver.sample(x0, num_steps=1, generator=g, **options)
    assert chi2_pvalue(x1_coarse, Q) < 1e-6


@pytest.mark.parametrize("grid", [[0.0, 1.0], [0.0, 0.9, 0.99, 1.0], [0.0, 0.5, 1.0]])
@pytest.mark.parametrize("options", [{}, {"eta": 5.0}, {"corrector": 2.0}])
def test_mask_path_unmasks_every_token_by_t1(grid, options):
    sp = Discrete(6, "mask")
    net = DiscreteMLP(7, sp.num_states, 6, hidden=32, layers=2, embed_dim=8)
    solver = DiscreteSolver(net, sp, MixtureDiscretePath(CosineConvexScheduler()))
    x0 = sp.sample_base((64, 7))
    for steps in (None, 3, 17):
        xs = solver.sample(x0, time_grid=grid, num_steps=steps, return_intermediates=True,
                           **options)
        assert xs.shape == (len(grid), 64, 7)
        assert torch.equal(xs[0], x0)
        assert not bool((xs[-1] == sp.mask_token).any())


def test_unmasked_tokens_stay_put_without_stochasticity():
    sp = Discrete(5, "mask")
    net = DiscreteMLP(4, sp.num_states, 5, hidden=32, layers=2, embed_dim=8)
    solver = DiscreteSolver(net, sp, MixtureDiscretePath(CondOTScheduler()))
    grid = torch.linspace(0, 1, 21)
    xs = solver.sample(sp.sample_base((128, 4)), time_grid=grid, return_intermediates=True)
    for a, b in zip(xs[:-1], xs[1:], strict=True):
        was_unmasked = a != sp.mask_token
        assert torch.equal(b[was_unmasked], a[was_unmasked])
    # the number of masked tokens follows 1 − κ_t = 1 − t on average
    frac = (xs == sp.mask_token).double().mean((1, 2))
    assert torch.allclose(frac, 1 - grid.double(), atol=0.08)


def test_intermediates_and_reproducibility():
    sp = Discrete(5, "uniform")
    net = DiscreteMLP(3, 5, 5, hidden=32, layers=2, embed_dim=8)
    solver = DiscreteSolver(net, sp, PolynomialScheduler(1.5))
    x0 = sp.sample_base((32, 3))
    a = solver.sample(x0, time_grid=[0, 0.3, 1], step_size=0.1, return_intermediates=True,
                      generator=torch.Generator().manual_seed(0))
    assert solver.nfe == 3 + 7  # ceil(0.3/0.1) + ceil(0.7/0.1)
    b = solver.sample(x0, time_grid=[0, 0.3, 1], step_size=0.1,
                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[-1], b)


def test_jump_probabilities():
    sched = PolynomialScheduler(2)
    # forward only: exactly (κ_{t+h} − κ_t)/(1 − κ_t), and 1 on the step that reaches t = 1
    p, q = jump_probabilities(sched, 0.5, 0.1, 0.0)
    assert math.isclose(p, (0.36 - 0.25) / 0.75) and q == 0
    assert jump_probabilities(sched, 0.9, 0.1, 3.0) == (1.0, 0.0)
    # small h: probabilities ≈ rates × h
    t, h, b = 0.4, 1e-6, 2.0
    k, dk = 0.16, 0.8
    p, q = jump_probabilities(sched, t, h, b)
    assert math.isclose(p / h, dk / (1 - k) + b * k / (1 - k), rel_tol=1e-4)
    assert math.isclose(q / h, b, rel_tol=1e-4)
    with pytest.raises(ValueError, match="κ_t = 1"):
        jump_probabilities(sched, 1.0, 0.1, 0.0)


def test_sample_categorical_matches_probabilities_and_skips_forbidden_tokens():
    g = torch.Generator().manual_seed(6)
    p = torch.tensor([0.5, 0.0, 0.3, 0.2])
    logits = p.log().expand(50_000, 4)
    x = sample_categorical(logits, generator=g)
    counts = torch.bincount(x, minlength=4).double()
    assert counts[1] == 0
    keep = p > 0
    pv = stats.chisquare(counts[keep].numpy(), (p[keep].double() * 50_000).numpy()).pvalue
    assert pv > 1e-3


def test_filter_logits():
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.15, 0.25]]))
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2[0, [0, 2]]).all() and torch.isfinite(top2[0, [1, 3]]).all()
    # nucleus 0.7: 0.5 + 0.25 reaches it, so the two least likely tokens go
    nuc = filter_logits(logits, top_p=0.7)
    assert torch.isinf(nuc[0, [0, 2]]).all() and torch.isfinite(nuc[0, [1, 3]]).all()
    assert torch.isfinite(filter_logits(logits, top_p=0.4)[0, 1])  # the top token always stays
    cold = torch.softmax(filter_logits(logits, temperature=0.5), -1)
    assert torch.allclose(cold, torch.softmax(2 * logits, -1))
    per_token = filter_logits(logits.expand(2, 4), temperature=torch.tensor([1.0, 0.5]))
    assert torch.allclose(per_token[1], 2 * logits[0]) and torch.allclose(per_token[0], logits[0])
    for bad in ({"top_k": 0}, {"top_p": 0.0}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            filter_logits(logits, **bad)


def test_top_k_one_is_greedy():
    sp = Discrete(4, "mask")
    logits = torch.randn(256, 3, 4)
    x = torch.full((256, 3), 4)
    out = ctmc_step(x, logits, 0.5, 0.5, CondOTScheduler(), sp, top_k=1)  # final step
    assert torch.equal(out, logits.argmax(-1))


def test_discrete_guidance():
    torch.manual_seed(0)
    sp = Discrete(5, "mask")
    net = DiscreteMLP(2, 6, 5, hidden=16, layers=2, embed_dim=4, num_classes=3)
    x, t, label = sp.sample_base((8, 2)), torch.rand(8), torch.randint(3, (8,))
    guided = DiscreteGuidance(net, 2.0, null_cond={"label": None})
    lc = torch.log_softmax(net(x, t, label=label), -1)
    lu = torch.log_softmax(net(x, t), -1)
    assert torch.allclose(guided(x, t, label=label), 3 * lc - 2 * lu, atol=1e-5)
    assert torch.allclose(DiscreteGuidance(net, 0.0, {"label": None})(x, t, label=label), lc)
    solver = DiscreteSolver(guided, sp, CondOTScheduler())
    out = solver.sample(x, num_steps=4, label=label)
    assert out.shape == x.shape and not bool((out == 5).any())
    with pytest.raises(TypeError):
        solver.sample(x, num_steps=2, lable=label)  # a misspelled keyword is not swallowed


def test_solver_rejects_bad_input():
    sp = Discrete(4, "uniform")
    net = DiscreteMLP(2, 4, 4, hidden=8, layers=1, embed_dim=4)
    solver = DiscreteSolver(net, sp, CondOTScheduler())
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        solver.sample(torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="integer"):
        solver.sample(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="increase strictly"):
        solver.sample(sp.sample_base((2, 2)), time_grid=[0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="not both"):
        solver.sample(sp.sample_base((2, 2)), num_steps=2, step_size=0.1)
    wrong_vocab = DiscreteSolver(DiscreteMLP(2, 4, 5, hidden=8, layers=1, embed_dim=4), sp,
                                 CondOTScheduler())
    with pytest.raises(ValueError, match="data vocabulary size 4"):
        wrong_vocab.sample(sp.sample_base((2, 2)))
    nan_net = DiscreteSolver(lambda x, t: torch.full((*x.shape, 4), float("nan")), sp,
                             CondOTScheduler())
    with pytest.raises(ValueError, match="NaN"):
        nan_net.sample(sp.sample_base((2, 2)))
    with pytest.raises(ValueError, match="t \\+ h ≤ 1"):
        ctmc_step(sp.sample_base((2, 2)), torch.zeros(2, 2, 4), 0.9, 0.2, CondOTScheduler(), sp)


def test_confidence_unmasking_schedule():
    sp = Discrete(6, "mask")
    sched = PolynomialScheduler(2)
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(50, 10, 6, generator=g)
    x = torch.full((50, 10), 6)
    x[:, :3] = 2  # three tokens already unmasked
    out = ctmc_step(x, logits, 0.3, 0.2, sched, sp, unmasking="confidence", generator=g)
    assert torch.equal(out[:, :3], x[:, :3])
    p = (0.25 - 0.09) / 0.91
    newly = ((x == 6) & (out != 6)).sum(1)
    # ⌊7p + u⌋: the count is one of the two integers around 7p, with mean 7p
    assert set(newly.tolist()) <= {math.floor(7 * p), math.ceil(7 * p)}
    assert abs(newly.double().mean() - 7 * p) < 0.3
    # the chosen ones are the most confident drawn tokens: under top_k=1 (greedy draws) they
    # are the masked positions with the largest maximum posterior probability
    greedy = ctmc_step(x, logits, 0.3, 0.2, sched, sp, unmasking="confidence", top_k=1,
                       generator=g)
    conf = torch.softmax(logits, -1).amax(-1).masked_fill(x != 6, -1.0)
    for row in range(50):
        picked = ((x[row] == 6) & (greedy[row] != 6)).nonzero().flatten()
        if len(picked):
            top = conf[row].topk(len(picked)).indices
            assert set(picked.tolist()) == set(top.tolist())
    net = DiscreteMLP(5, 7, 6, hidden=16, layers=1, embed_dim=4)
    final = DiscreteSolver(net, sp, sched).sample(sp.sample_base((8, 5)), num_steps=7,
                                                   unmasking="confidence")
    assert not bool((final == 6).any())
    with pytest.raises(ValueError, match="mask source"):
        ctmc_step(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 4), 0.1, 0.1, sched,
                  Discrete(4, "uniform"), unmasking="confidence")
    with pytest.raises(ValueError, match="'random' or 'confidence'"):
        ctmc_step(x, logits, 0.3, 0.2, sched, sp, unmasking="greedy")

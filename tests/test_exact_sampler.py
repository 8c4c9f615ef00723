"""The exact law of the CTMC sampler on enumerable state spaces (flowmatch.solvers.exact)."""

import math

import pytest
import torch
from scipy import stats

from flowmatch.geometry.discrete import Discrete
from flowmatch.models.discrete import DiscreteMLP, ExactPosterior
from flowmatch.paths.mixture import MixtureDiscretePath
from flowmatch.paths.schedulers import PolynomialScheduler
from flowmatch.solvers.ctmc import DiscreteSolver
from flowmatch.solvers.exact import all_states, sampler_distribution


def random_net(space: Discrete, length: int, seed: int) -> DiscreteMLP:
    torch.manual_seed(seed)
    net = DiscreteMLP(length, space.num_states, space.vocab_size, hidden=16, layers=2,
                      embed_dim=4)
    with torch.no_grad():  # sharpen the random posterior so the steps matter
        net.head.weight.mul_(5.0)
    return net.eval()


def empirical(x: torch.Tensor, n: int) -> torch.Tensor:
    flat = (x * torch.tensor([n ** (x.shape[1] - 1 - i) for i in range(x.shape[1])])).sum(1)
    return torch.bincount(flat, minlength=n ** x.shape[1]).double()


def test_all_states_row_major():
    states = all_states(Discrete(2, "mask"), 2)
    assert states.tolist() == [[a, b] for a in range(3) for b in range(3)]
    assert all_states(Discrete(2, "mask"), 2, include_mask=False).shape == (4, 2)


@pytest.mark.parametrize(("source", "corrector"),
                         [("mask", None), ("uniform", None), ("mask", 2.0), ("uniform", 1.0)])
def test_matches_the_sampler_frequencies(source, corrector):
    # the exact law must agree with 40,000 runs of DiscreteSolver (chi-square), with few, coarse
    # steps so the law differs clearly from the target and from the one-step law
    space = Discrete(3, source)
    path = MixtureDiscretePath(PolynomialScheduler(2))
    net = random_net(space, 2, seed=1)
    q = sampler_distribution(net, space, path, 2, num_steps=4, corrector=corrector)
    assert q.shape == (space.num_states,) * 2
    assert math.isclose(float(q.sum()), 1.0, abs_tol=1e-12) and bool((q >= 0).all())
    g = torch.Generator().manual_seed(2)
    n = 40_000
    x = DiscreteSolver(net, space, path).sample(space.sample_base((n, 2), generator=g),
                                                num_steps=4, corrector=corrector, generator=g)
    counts = empirical(x, space.num_states)
    keep = q.reshape(-1) > 1e-9
    assert float(counts[~keep].sum()) == 0.0
    p = stats.chisquare(counts[keep].numpy(), (q.reshape(-1)[keep] * n).numpy()).pvalue
    assert p > 1e-3
    # and the test has power: a different step count gives a law the samples reject
    q8 = sampler_distribution(net, space, path, 2, num_steps=8, corrector=corrector).reshape(-1)
    p8 = stats.chisquare(counts[keep].numpy(), (q8[keep] / q8[keep].sum() * n).numpy()).pvalue
    assert p8 < 1e-6


def test_exact_posterior_converges_to_the_target():
    # with the exact posterior the sampler's law tends to the target as the steps grow
    space = Discrete(4, "uniform")
    path = MixtureDiscretePath(PolynomialScheduler(1))
    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 4, generator=g, dtype=torch.float64) ** 3
    target /= target.sum()
    post = ExactPosterior(target, space, path.scheduler)
    tv = []
    for steps in (2, 8, 64):
        q = sampler_distribution(lambda x, t: post(x, t).float(), space, path, 2,
                                 num_steps=steps)
        tv.append(0.5 * float((q - target).abs().sum()))
    assert tv[0] > tv[1] > tv[2] and tv[2] < 0.02


def test_mask_source_ends_unmasked():
    space = Discrete(3, "mask")
    q = sampler_distribution(random_net(space, 2, 0), space, MixtureDiscretePath(
        PolynomialScheduler(1)), 2, num_steps=3)
    assert float(q[space.mask_token].sum() + q[:, space.mask_token].sum()) == 0.0


def test_bad_input():
    space = Discrete(3, "uniform")
    path = MixtureDiscretePath(PolynomialScheduler(1))
    net = random_net(space, 2, 0)
    with pytest.raises(ValueError, match="max_states"):
        sampler_distribution(net, space, path, 2, num_steps=2, max_states=8)
    with pytest.raises(ValueError, match="initial must have shape"):
        sampler_distribution(net, space, path, 2, num_steps=2, initial=torch.ones(9) / 9)
    with pytest.raises(TypeError, match="Discrete"):
        sampler_distribution(net, "uniform", path, 2, num_steps=2)
    with pytest.raises(ValueError, match="logits"):
        sampler_distribution(lambda x, t: torch.zeros(x.shape[0], 2, 5), space, path, 2,
                             num_steps=2)

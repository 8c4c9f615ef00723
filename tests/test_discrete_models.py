"""Token networks, training on a small discrete task, and the bracket-language data set."""

from __future__ import annotations

import collections
import math

import pytest
import torch
from scipy import stats

from flowmatch.data.brackets import brackets_entropy, is_valid_brackets, sample_brackets
from flowmatch.geometry.discrete import Discrete
from flowmatch.models.discrete import DiscreteMLP, DiscreteTransformer
from flowmatch.paths.mixture import MixtureDiscretePath
from flowmatch.paths.schedulers import PolynomialScheduler
from flowmatch.solvers.ctmc import DiscreteSolver
from flowmatch.training.discrete_loss import (
    discrete_cross_entropy,
    discrete_nelbo,
    generalized_kl_loss,
)


def shifted_pairs(n: int, K: int, generator) -> torch.Tensor:
    """x = (a, a + 1 mod K) with a uniform: entropy log K, fully determined second token."""
    a = torch.randint(K, (n,), generator=generator)
    return torch.stack([a, (a + 1) % K], 1)


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("loss_name", ["ce", "gkl"])
def test_training_decreases_the_loss_and_the_nelbo(source, loss_name):
    torch.manual_seed(0)
    K = 8
    sp = Discrete(K, source)
    path = MixtureDiscretePath(PolynomialScheduler(1))
    net = DiscreteMLP(2, sp.num_states, K, hidden=64, layers=2, embed_dim=16)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    evalset = shifted_pairs(512, K, g)
    nelbo0 = float(discrete_nelbo(net, evalset, path, sp, num_times=8, generator=g).mean())
    losses = []
    for _ in range(300):
        x1 = shifted_pairs(256, K, g)
        t = torch.rand(256, generator=g) * 0.999
        x_t = path.sample(sp.sample_base(x1.shape, generator=g), x1, t, generator=g).x_t
        logits = net(x_t, t)
        if loss_name == "ce":
            loss = discrete_cross_entropy(logits, x1, x_t, sp)
        else:
            loss = generalized_kl_loss(logits, x1, x_t, t, path, sp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first - 0.15, (first, last)
    nelbo1 = float(discrete_nelbo(net, evalset, path, sp, num_times=8, generator=g).mean())
    # the data entropy log 8 = 2.08 nats is the floor; an untrained net sits near 2 log 8
    assert nelbo1 < nelbo0 - 0.8 and nelbo1 > math.log(K) - 0.1, (nelbo0, nelbo1)
    # and the trained sampler mostly produces valid pairs
    x = DiscreteSolver(net, sp, path).sample(sp.sample_base((512, 2), generator=g),
                                             num_steps=50, generator=g)
    assert float(((x[:, 1] - x[:, 0]) % K == 1).double().mean()) > 0.8


def test_networks_shapes_and_time_dependence():
    mlp = DiscreteMLP(3, 9, 8, hidden=16, layers=2, embed_dim=4)
    tr = DiscreteTransformer(10, 9, 8, dim=16, heads=2, layers=1)
    x = torch.randint(9, (4, 3))
    t = torch.tensor([0.1, 0.2, 0.3, 0.9])
    for net in (mlp, tr):
        out = net(x, t)
        assert out.shape == (4, 3, 8)
        assert not torch.allclose(out, net(x, 1 - t))
    with pytest.raises(ValueError, match="exactly 3 tokens"):
        mlp(torch.randint(9, (4, 2)), t)
    with pytest.raises(ValueError, match="t must have shape"):
        tr(x, t[:2])
    with pytest.raises(ValueError, match="num_classes"):
        mlp(x, t, label=torch.zeros(4, dtype=torch.long))


def test_brackets_are_valid_and_uniform():
    g = torch.Generator().manual_seed(7)
    x = sample_brackets(6000, length=6, num_types=2, generator=g)
    assert x.shape == (6000, 6) and bool(is_valid_brackets(x, 2).all())
    counts = collections.Counter(map(tuple, x.tolist()))
    n_words = 5 * 2**3  # Catalan(3) shapes × 2 types per pair
    assert len(counts) == n_words
    assert math.isclose(brackets_entropy(6, 2), math.log(n_words))
    pv = stats.chisquare(list(counts.values())).pvalue  # uniform over all valid words
    assert pv > 1e-3
    long = sample_brackets(500, length=64, num_types=8, generator=g)
    assert bool(is_valid_brackets(long, 8).all()) and int(long.max()) < 16


def test_bracket_validity_catches_errors():
    ok = torch.tensor([[0, 2, 3, 1], [0, 1, 2, 3]])  # ( [ ] )   ( ) [ ]
    assert is_valid_brackets(ok, 2).tolist() == [True, True]
    bad = torch.tensor([
        [0, 2, 1, 3],  # ( [ ) ]: crossed types
        [1, 0, 3, 2],  # ) ( ] [: closes before opening
        [0, 0, 1, 2],  # ( ( ) [: left open
        [0, 1, 2, 4],  # token 4 is outside the 2-type vocabulary (e.g. a mask)
    ])
    assert is_valid_brackets(bad, 2).tolist() == [False] * 4
    with pytest.raises(ValueError, match="even"):
        sample_brackets(3, length=5)


def test_valid_prefix_length():
    from flowmatch.data.brackets import valid_prefix_length

    x = torch.tensor([
        [0, 2, 3, 1],  # valid: 4
        [0, 2, 1, 3],  # ( [ ) : breaks at position 2
        [1, 0, 0, 1],  # starts with a close: 0
        [0, 0, 0, 1],  # ( ( ( cannot close in 4: breaks at position 2
    ])
    assert valid_prefix_length(x, 2).tolist() == [4, 2, 0, 2]
    g = torch.Generator().manual_seed(9)
    data = sample_brackets(200, 64, 8, generator=g)
    assert bool((valid_prefix_length(data, 8) == 64).all())

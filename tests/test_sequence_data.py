"""Bracket languages with letters and a depth bound: sampler, checker, counts and entropy.

An independent pure-Python checker enumerates every sequence of a small vocabulary, so the
vectorised checker, the exact count N_L(0) and the sampler's uniformity are all tested against
brute force.
"""

from __future__ import annotations

import collections
import itertools
import math

import pytest
import torch
from scipy import stats

from flowmatch.data.brackets import (
    brackets_entropy,
    count_brackets,
    is_valid_brackets,
    sample_brackets,
    valid_prefix_length,
)


def _valid(seq: tuple[int, ...], types: int, letters: int, depth: int | None) -> bool:
    """Reference checker: a plain stack, written independently of the vectorised one."""
    stack: list[int] = []
    for tok in seq:
        if tok >= 2 * types + letters or tok < 0:
            return False
        if tok >= 2 * types:
            continue
        if tok % 2 == 0:
            stack.append(tok // 2)
            if depth is not None and len(stack) > depth:
                return False
        elif not stack or stack.pop() != tok // 2:
            return False
    return not stack


def _prefix(seq: tuple[int, ...], types: int, letters: int, depth: int | None) -> int:
    """Reference valid-prefix length: the longest prefix some valid sequence extends."""
    vocab = range(2 * types + letters)
    n = len(seq)
    best = 0
    for k in range(n + 1):
        tails = itertools.product(vocab, repeat=n - k)
        if any(_valid(seq[:k] + tail, types, letters, depth) for tail in tails):
            best = k
    return best


LANGUAGES = [(1, 1, 2, 6), (2, 1, None, 5), (1, 2, 1, 6), (2, 0, 2, 6), (2, 0, None, 6)]


@pytest.mark.parametrize("types,letters,depth,length", LANGUAGES)
def test_checker_and_count_match_brute_force(types, letters, depth, length):
    vocab = 2 * types + letters
    every = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    ref = torch.tensor([_valid(tuple(s), types, letters, depth) for s in every.tolist()])
    got = is_valid_brackets(every, types, num_letters=letters, max_depth=depth)
    assert torch.equal(got, ref)
    n_valid = int(ref.sum())
    assert count_brackets(length, types, num_letters=letters, max_depth=depth) == n_valid
    assert math.isclose(brackets_entropy(length, types, num_letters=letters, max_depth=depth),
                        math.log(n_valid), rel_tol=1e-12)


@pytest.mark.parametrize("types,letters,depth,length", LANGUAGES)
def test_sampler_is_uniform_over_valid_sequences(types, letters, depth, length):
    g = torch.Generator().manual_seed(3)
    n_valid = count_brackets(length, types, num_letters=letters, max_depth=depth)
    x = sample_brackets(40 * n_valid, length, types, num_letters=letters, max_depth=depth,
                        generator=g)
    assert bool(is_valid_brackets(x, types, num_letters=letters, max_depth=depth).all())
    counts = collections.Counter(map(tuple, x.tolist()))
    assert len(counts) == n_valid  # every valid sequence appears
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3


def test_unbounded_without_letters_is_catalan_times_types():
    m = 32
    catalan = math.comb(2 * m, m) // (m + 1)
    assert count_brackets(64, 8) == catalan * 8**m
    assert math.isclose(brackets_entropy(64, 8), math.log(catalan) + m * math.log(8))


def test_long_sequences_respect_depth_and_letters():
    g = torch.Generator().manual_seed(5)
    x = sample_brackets(400, 64, 3, num_letters=10, max_depth=3, generator=g)
    assert x.shape == (400, 64) and int(x.max()) < 16
    assert bool(is_valid_brackets(x, 3, num_letters=10, max_depth=3).all())
    assert bool((valid_prefix_length(x, 3, num_letters=10, max_depth=3) == 64).all())
    # the bound is attained but never exceeded
    opens = (x < 6) & (x % 2 == 0)
    closes = (x < 6) & (x % 2 == 1)
    depth = (opens.long() - closes.long()).cumsum(1)
    assert int(depth.max()) == 3 and int(depth.min()) == 0
    # a tighter bound rejects some of them; without letters, letters are out of vocabulary
    assert not bool(is_valid_brackets(x, 3, num_letters=10, max_depth=2).all())
    assert not bool(is_valid_brackets(x, 3).any())


def test_valid_prefix_matches_brute_force():
    g = torch.Generator().manual_seed(11)
    types, letters, depth = 1, 1, 2
    x = torch.randint(0, 2 * types + letters + 1, (60, 5), generator=g)  # + an extra "mask" id
    ref = [_prefix(tuple(s), types, letters, depth) for s in x.tolist()]
    assert valid_prefix_length(x, types, num_letters=letters, max_depth=depth).tolist() == ref


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_letters"):
        sample_brackets(2, 8, 2, num_letters=-1)
    with pytest.raises(ValueError, match="max_depth"):
        count_brackets(8, 2, max_depth=0)
    with pytest.raises(ValueError, match="even"):
        sample_brackets(2, 7, 2)
    assert sample_brackets(2, 7, 2, num_letters=1).shape == (2, 7)  # letters allow odd lengths
    with pytest.raises(ValueError, match="shape"):
        is_valid_brackets(torch.zeros(4, dtype=torch.long), 2)

"""Balanced bracket sequences (a Dyck language with several bracket types, optionally with
free letter tokens and a depth bound): token data whose validity is exactly checkable.

With T bracket types and F letters the vocabulary has 2T + F tokens: token 2i opens a bracket of
type i, token 2i + 1 closes it, and tokens 2T, …, 2T + F − 1 are letters, allowed anywhere. A
sequence is *valid* when every closing token matches the most recent unclosed opening token of
the same type, nothing is left open and (with ``max_depth`` D) no more than D brackets are ever
open at once. Without letters the length must be even.

:func:`sample_brackets` draws sequences uniformly among all valid ones of the length: with
N_r(d) the number of valid completions of r tokens from open depth d,

    N_0(d) = δ(d, 0),   N_r(d) = F N_{r−1}(d) + T N_{r−1}(d + 1) [d < D] + N_{r−1}(d − 1) [d > 0],

the next token is a letter, an opening or a closing bracket with probabilities proportional to
the three terms (a letter's and an opening's type uniform; a closing's type is forced). The
entropy of the data is therefore exactly log N_L(0) nats (:func:`brackets_entropy`); without
letters or depth bound N_L(0) = C_{L/2} T^{L/2}, C_n the Catalan number.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_language(num_types: int, num_letters: int, max_depth: int | None) -> None:
    if not (isinstance(num_types, int) and num_types >= 1):
        raise ValueError(f"num_types must be a positive integer, got {num_types!r}")
    if not (isinstance(num_letters, int) and num_letters >= 0):
        raise ValueError(f"num_letters must be a non-negative integer, got {num_letters!r}")
    if max_depth is not None and not (isinstance(max_depth, int) and max_depth >= 1):
        raise ValueError(f"max_depth must be None or an integer ≥ 1, got {max_depth!r}")


def _check_args(length: int, num_types: int, num_letters: int = 0,
                max_depth: int | None = None) -> None:
    _check_language(num_types, num_letters, max_depth)
    if not (isinstance(length, int) and length >= 1):
        raise ValueError(f"length must be a positive integer, got {length!r}")
    if num_letters == 0 and length % 2:
        raise ValueError(f"length must be an even integer ≥ 2 without letters, got {length!r}")


def count_brackets(length: int = 64, num_types: int = 8, *, num_letters: int = 0,
                   max_depth: int | None = None) -> int:
    """The number N_L(0) of valid sequences of ``length`` tokens (an exact integer)."""
    _check_args(length, num_types, num_letters, max_depth)
    return _completions(length, num_types, num_letters, max_depth)[length][0]


def _completions(length: int, num_types: int, num_letters: int,
                 max_depth: int | None) -> list[list[int]]:
    """N[r][d]: valid completions of r tokens from open depth d (d ≤ min(length, D) + 1)."""
    top = length if max_depth is None else min(length, max_depth)
    N = [[0] * (top + 2) for _ in range(length + 1)]
    N[0][0] = 1
    for r in range(1, length + 1):
        for d in range(top + 1):
            N[r][d] = (num_letters * N[r - 1][d]
                       + (num_types * N[r - 1][d + 1] if d < top else 0)
                       + (N[r - 1][d - 1] if d >= 1 else 0))
    return N


def sample_brackets(n: int, length: int = 64, num_types: int = 8, *, num_letters: int = 0,
                    max_depth: int | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
    """``n`` uniformly random valid sequences: int64 [n, length], vocabulary 2·num_types + F."""
    _check_args(length, num_types, num_letters, max_depth)
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    N = _completions(length, num_types, num_letters, max_depth)
    top = len(N[0]) - 2
    # P(letter), P(open) given r tokens left at depth d, as float tables [length + 1, top + 2];
    # Python's int / int is correctly rounded even when the counts exceed the float range
    p_letter = torch.zeros(length + 1, top + 2, dtype=torch.float64)
    p_open = torch.zeros(length + 1, top + 2, dtype=torch.float64)
    for r in range(1, length + 1):
        for d in range(top + 1):
            if N[r][d]:
                p_letter[r, d] = num_letters * N[r - 1][d] / N[r][d]
                p_open[r, d] = num_types * N[r - 1][d + 1] / N[r][d] if d < top else 0.0
    out = torch.empty(n, length, dtype=torch.int64)
    stack = torch.zeros(n, top + 1, dtype=torch.int64)
    depth = torch.zeros(n, dtype=torch.int64)
    rows = torch.arange(n)
    for i in range(length):
        r = length - i
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        pl = p_letter[r, depth]
        letter = u < pl
        opens = ~letter & (u < pl + p_open[r, depth])
        closes = ~letter & ~opens
        kind = torch.randint(num_types, (n,), generator=generator)
        letter_id = 2 * num_types + torch.randint(max(num_letters, 1), (n,), generator=generator)
        # an open pushes a fresh type; a close pops the type on top of the stack
        kind = torch.where(opens, kind, stack[rows, (depth - 1).clamp_min(0)])
        out[:, i] = torch.where(letter, letter_id, 2 * kind + closes.long())
        slot = depth.clamp_max(top)
        stack[rows, slot] = torch.where(opens, kind, stack[rows, slot])
        depth = depth + opens.long() - closes.long()
    return out


def _scan(tokens: Tensor, num_types: int, num_letters: int, max_depth: int | None
          ) -> tuple[Tensor, Tensor]:
    """Per-position completability of each prefix: (alive [n, L] bool, final depth [n])."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape [n, L], got {tuple(tokens.shape)}")
    n, length = tokens.shape
    _check_language(num_types, num_letters, max_depth)
    tokens = tokens.long()
    vocab = 2 * num_types + num_letters
    cap = length if max_depth is None else max_depth
    stack = torch.full((n, length + 1), -1, dtype=torch.int64)
    depth = torch.zeros(n, dtype=torch.int64)
    alive = torch.ones(n, dtype=torch.bool)
    alive_at = torch.empty(n, length, dtype=torch.bool)
    rows = torch.arange(n)
    for i in range(length):
        tok = tokens[:, i]
        bracket = (tok >= 0) & (tok < 2 * num_types)
        kind, closes = tok // 2, bracket & (tok % 2 == 1)
        opens = bracket & ~closes
        top = stack[rows, (depth - 1).clamp_min(0)]
        ok = (tok >= 0) & (tok < vocab) & (~closes | ((depth > 0) & (top == kind)))
        new_depth = depth + opens.long() - closes.long()
        # the depth bound, and the remaining positions must be able to close what is open
        ok &= (new_depth <= cap) & (new_depth <= length - i - 1)
        alive &= ok
        alive_at[:, i] = alive
        slot = depth.clamp(0, length)
        stack[rows, slot] = torch.where(opens, kind, stack[rows, slot])
        depth = new_depth.clamp_min(0)
    return alive_at, depth


def is_valid_brackets(tokens: Tensor, num_types: int = 8, *, num_letters: int = 0,
                      max_depth: int | None = None) -> Tensor:
    """Bool [n]: whether each row of ``tokens`` [n, L] is a valid sequence of the language.

    Tokens outside [0, 2·num_types + num_letters) (e.g. a leftover mask token) make a row
    invalid.
    """
    alive, depth = _scan(tokens, num_types, num_letters, max_depth)
    if tokens.shape[1] == 0:
        return depth == 0
    return alive[:, -1] & (depth == 0)


def brackets_entropy(length: int = 64, num_types: int = 8, *, num_letters: int = 0,
                     max_depth: int | None = None) -> float:
    """Entropy (nats) of the uniform distribution over valid sequences: log N_L(0)."""
    return math.log(count_brackets(length, num_types, num_letters=num_letters,
                                   max_depth=max_depth))


def valid_prefix_length(tokens: Tensor, num_types: int = 8, *, num_letters: int = 0,
                        max_depth: int | None = None) -> Tensor:
    """Int64 [n]: length of the longest prefix of each row that some valid sequence starts with.

    A prefix stays completable while every token is in the vocabulary, every closing token
    matches the innermost open bracket, the depth bound holds and the open depth never exceeds
    the positions left. Valid rows score L; it is a graded companion of
    :func:`is_valid_brackets`.
    """
    alive, _ = _scan(tokens, num_types, num_letters, max_depth)
    return alive.long().sum(1)

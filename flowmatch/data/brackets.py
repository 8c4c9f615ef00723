"""Balanced bracket sequences (a Dyck language with several bracket types): token data whose
validity is exactly checkable, for discrete generative models.

With T bracket types the vocabulary has 2T tokens: token 2i opens a bracket of type i and token
2i + 1 closes it. A sequence is *valid* when every closing token matches the most recent
unclosed opening token of the same type and nothing is left open. Lengths are even.

:func:`sample_brackets` draws the bracket *shape* uniformly among all Dyck words of the length
(each completion is weighted by its number of valid continuations, a ballot-number table) and
each matched pair's type uniformly: the data distribution is uniform over all valid sequences,
so its entropy is log(C_{L/2} · T^{L/2}) nats with C_n the Catalan number.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _completions(length: int) -> list[list[int]]:
    """N[r][d]: number of ways to finish a Dyck word with r steps left at depth d."""
    N = [[0] * (length + 2) for _ in range(length + 1)]
    N[0][0] = 1
    for r in range(1, length + 1):
        for d in range(0, length + 1):
            up = N[r - 1][d + 1] if d + 1 <= length else 0
            down = N[r - 1][d - 1] if d >= 1 else 0
            N[r][d] = up + down
    return N


def _check_args(length: int, num_types: int) -> None:
    if not (isinstance(length, int) and length >= 2 and length % 2 == 0):
        raise ValueError(f"length must be an even integer ≥ 2, got {length!r}")
    if not (isinstance(num_types, int) and num_types >= 1):
        raise ValueError(f"num_types must be a positive integer, got {num_types!r}")


def sample_brackets(n: int, length: int = 64, num_types: int = 8, *,
                    generator: torch.Generator | None = None) -> Tensor:
    """``n`` uniformly random valid bracket sequences: int64 [n, length], vocabulary 2·num_types."""
    _check_args(length, num_types)
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    N = _completions(length)
    # P(open | r steps left, depth d) = N[r-1][d+1] / N[r][d], as a float table [length+1, length+2]
    p_open = torch.zeros(length + 1, length + 2, dtype=torch.float64)
    for r in range(1, length + 1):
        for d in range(0, length + 1):
            if N[r][d]:
                p_open[r, d] = N[r - 1][d + 1] / N[r][d] if d + 1 <= length else 0.0
    out = torch.empty(n, length, dtype=torch.int64)
    stack = torch.zeros(n, length // 2 + 1, dtype=torch.int64)
    depth = torch.zeros(n, dtype=torch.int64)
    rows = torch.arange(n)
    for i in range(length):
        r = length - i
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        opens = u < p_open[r, depth]
        kind = torch.randint(num_types, (n,), generator=generator)
        # an open pushes a fresh type; a close pops the type on top of the stack
        top = stack[rows, (depth - 1).clamp_min(0)]
        kind = torch.where(opens, kind, top)
        out[:, i] = 2 * kind + (~opens).long()
        stack[rows, depth.clamp_max(length // 2)] = torch.where(
            opens, kind, stack[rows, depth.clamp_max(length // 2)])
        depth = depth + torch.where(opens, 1, -1)
    return out


def is_valid_brackets(tokens: Tensor, num_types: int = 8) -> Tensor:
    """Bool [n]: whether each row of ``tokens`` [n, L] is a balanced, correctly typed sequence.

    Tokens outside [0, 2·num_types) (e.g. a leftover mask token) make a row invalid.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape [n, L], got {tuple(tokens.shape)}")
    n, length = tokens.shape
    tokens = tokens.long()
    ok = ((tokens >= 0) & (tokens < 2 * num_types)).all(1)
    stack = torch.full((n, length + 1), -1, dtype=torch.int64)
    depth = torch.zeros(n, dtype=torch.int64)
    rows = torch.arange(n)
    for i in range(length):
        tok = tokens[:, i]
        kind, closes = tok // 2, (tok % 2) == 1
        top = stack[rows, (depth - 1).clamp_min(0)]
        ok &= ~closes | ((depth > 0) & (top == kind))
        stack[rows, depth] = torch.where(closes, stack[rows, depth], kind)
        depth = (depth + torch.where(closes, -1, 1)).clamp_min(0)
    return ok & (depth == 0)


def brackets_entropy(length: int = 64, num_types: int = 8) -> float:
    """Entropy (nats) of the uniform distribution over valid sequences: log(C_{L/2} T^{L/2})."""
    _check_args(length, num_types)
    m = length // 2
    catalan = math.comb(2 * m, m) // (m + 1)
    return math.log(catalan) + m * math.log(num_types)


def valid_prefix_length(tokens: Tensor, num_types: int = 8) -> Tensor:
    """Int64 [n]: length of the longest prefix of each row that some valid sequence starts with.

    A prefix stays completable while every token is in the vocabulary, every closing token
    matches the innermost open bracket, and the open depth never exceeds the positions left.
    Valid rows score L; it is a graded companion of :func:`is_valid_brackets`.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape [n, L], got {tuple(tokens.shape)}")
    n, length = tokens.shape
    tokens = tokens.long()
    stack = torch.full((n, length + 1), -1, dtype=torch.int64)
    depth = torch.zeros(n, dtype=torch.int64)
    alive = torch.ones(n, dtype=torch.bool)
    prefix = torch.zeros(n, dtype=torch.int64)
    rows = torch.arange(n)
    for i in range(length):
        tok = tokens[:, i]
        kind, closes = tok // 2, (tok % 2) == 1
        top = stack[rows, (depth - 1).clamp_min(0)]
        ok = (tok >= 0) & (tok < 2 * num_types) & (~closes | ((depth > 0) & (top == kind)))
        new_depth = depth + torch.where(closes, -1, 1)
        ok &= new_depth <= length - i - 1  # the remaining positions must be able to close
        alive &= ok
        prefix += alive.long()
        stack[rows, depth.clamp_max(length)] = torch.where(
            closes, stack[rows, depth.clamp_max(length)], kind)
        depth = new_depth.clamp_min(0)
    return prefix

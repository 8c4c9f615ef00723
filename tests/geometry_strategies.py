"""Hypothesis strategies for the geometry tests.

Points are drawn by seeding a torch generator from a hypothesis integer, so that a failing
example shrinks to a reproducible seed; scales are drawn log-uniformly across many decades.
"""

from __future__ import annotations

import math

import torch
from hypothesis import settings
from hypothesis import strategies as st

# A few dozen examples per property keeps each test file well under a minute on 2 shared cores.
FAST = settings(max_examples=40, deadline=None, derandomize=True)

seeds = st.integers(min_value=0, max_value=2**31 - 1)


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats whose logarithm is uniform in [log lo, log hi] (hypothesis also tries the ends)."""
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tangent_of_norm(geometry, x: torch.Tensor, norm: float | torch.Tensor,
                    gen: torch.Generator) -> torch.Tensor:
    """A random tangent vector at each x whose Riemannian norm is exactly ``norm``."""
    u = geometry.random_tangent(x, generator=gen)
    n = geometry.norm(x, u)
    shape = n.shape + (1,) * (u.dim() - n.dim())
    return u * (torch.as_tensor(norm, dtype=u.dtype) / n).reshape(shape)


def relative_error(a: torch.Tensor, b: torch.Tensor, event_dims: int = 1) -> torch.Tensor:
    """‖a − b‖ / ‖b‖ per batch element (Frobenius over the trailing ``event_dims`` dims)."""
    diff = (a - b).flatten(a.dim() - event_dims).norm(dim=-1)
    return diff / b.flatten(b.dim() - event_dims).norm(dim=-1)

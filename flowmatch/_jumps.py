"""Arithmetic of factorised jump processes, shared by discrete paths and their samplers.

Discrete paths (:mod:`flowmatch.paths.mixture`, :mod:`flowmatch.paths.metric_induced`) define
rates; the samplers (:mod:`flowmatch.solvers.ctmc`, :mod:`flowmatch.solvers.exact`,
:mod:`flowmatch.solvers.metric_induced`) turn them into jumps. The few formulas both sides use
live here, so neither side imports the other's internals:

* :func:`kappa_at` — κ_t and κ̇_t of a convex scheduler at one time, in float64;
* :func:`source_jump_rate` — the rate b_t of the marginal-preserving jumps back to the source;
* :func:`jump_probabilities` — a token's exact forward and source jump probabilities over one
  τ-leaping step of a mixture path;
* :func:`sample_weights` — one inverse-CDF draw per row of non-negative weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Corrector = float | Callable[[float], float]


def kappa_at(scheduler: Any, t: float) -> tuple[float, float]:
    """(κ_t, κ̇_t) of a convex scheduler (anything with ``kappa``/``d_kappa``) at the float t."""
    tt = torch.tensor([t], dtype=torch.float64)
    return float(scheduler.kappa(tt)), float(scheduler.d_kappa(tt))


def source_jump_rate(kappa: float, d_kappa: float, t: float, *, eta: float = 0.0,
                     corrector: Corrector | None = None) -> float:
    """b_t of the source jumps: η itself, or c_t κ̇_t/κ_t for a corrector coefficient c_t.

    ``corrector`` is a float or a callable t ↦ c_t (see :mod:`flowmatch.paths.mixture`). At
    κ_t = 0 the chain is still at the source distribution, where jumping to a fresh source draw
    does not change the law; the rate is then taken as 0 instead of c_t · ∞.
    """
    if corrector is not None and eta:
        raise ValueError("give either eta (Campbell et al.) or corrector (Gat et al.), not both")
    if eta:
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be finite and ≥ 0, got {eta}")
        return float(eta)
    if corrector is None:
        return 0.0
    c = float(corrector(t)) if callable(corrector) else float(corrector)
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(f"the corrector coefficient c_t must be finite and ≥ 0, got {c} at t={t}")
    if c == 0.0 or kappa <= 0.0:
        return 0.0
    return c * d_kappa / kappa


def jump_probabilities(scheduler: Any, t: float, h: float, b: float) -> tuple[float, float]:
    """(P(forward jump), P(source jump)) of one token over [t, t + h] with source rate ``b``.

    Forward: Λ_a = log[(1 − κ_t)/(1 − κ_{t+h})] + b κ_t/(1 − κ_t) h; source: Λ_b = b h. The first
    of the two clocks wins: P(event) = 1 − e^{−Λ_a − Λ_b}, split in proportion Λ_a : Λ_b.
    """
    k0, _ = kappa_at(scheduler, t)
    k1, _ = kappa_at(scheduler, min(t + h, 1.0))
    if k0 >= 1.0:
        raise ValueError(f"cannot step from t={t}: κ_t = 1 there (the path has reached the data)")
    stay_fwd = (1.0 - k1) / (1.0 - k0)  # exp(−∫ κ̇/(1 − κ)), exact
    if b == 0.0:
        return 1.0 - stay_fwd, 0.0
    if stay_fwd == 0.0:
        return 1.0, 0.0  # the step ends at κ = 1: the forward clock rings surely
    lam_a = -math.log(stay_fwd) + b * k0 / (1.0 - k0) * h
    lam_b = b * h
    p_event = -math.expm1(-lam_a - lam_b)
    return p_event * lam_a / (lam_a + lam_b), p_event * lam_b / (lam_a + lam_b)


def sample_weights(weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row of non-negative ``weights`` [..., K] (any positive row sum), ∝ weights.

    Inverse CDF: cumulative sum and binary search (≈ 25× faster than torch.multinomial here).
    """
    cdf = weights.cumsum(-1)
    flat = cdf.reshape(-1, cdf.shape[-1])
    u = torch.rand(flat.shape[0], 1, generator=generator, device=flat.device, dtype=flat.dtype)
    # right=True never lands on a zero-weight entry, even when u·total hits a tie exactly
    idx = torch.searchsorted(flat, u * flat[:, -1:], right=True)
    return idx.clamp_max(flat.shape[-1] - 1).reshape(cdf.shape[:-1])

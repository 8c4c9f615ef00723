"""Numerically careful scalar helpers shared by the Riemannian geometries.

Each is exact in value and keeps NaN out of gradients at its singular point (0 for the norm and
the even quotients), which is what makes dist(x, x) and logmap(x, x) differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Below this argument the even functions are evaluated by their Taylor series. The first omitted
# term is O(x⁸) relative, < 1e-16 at x = 1e-2, so the switch is invisible even in float64; above
# it the direct quotients lose ~ε/x² only in their *derivative*, which the maps multiply by |u|.
SERIES_CUTOFF = 1e-2


def safe_norm(u: Tensor, dim: int | tuple[int, ...] = -1, keepdim: bool = False) -> Tensor:
    """Euclidean norm, exact in value, whose gradient is 0 (not NaN) at u = 0."""
    return safe_sqrt(u.pow(2).sum(dim=dim, keepdim=keepdim))


def sinc(x: Tensor) -> Tensor:
    """sin(x)/x (x an angle, unlike ``torch.sinc``), 1 with zero derivative at x = 0."""
    small = x.abs() < SERIES_CUTOFF
    xs = torch.where(small, torch.ones_like(x), x)
    x2 = x * x
    series = 1 - x2 / 6 * (1 - x2 / 20 * (1 - x2 / 42))
    return torch.where(small, series, torch.sin(xs) / xs)


def sinhc(x: Tensor) -> Tensor:
    """sinh(x)/x, 1 with zero derivative at x = 0."""
    small = x.abs() < SERIES_CUTOFF
    xs = torch.where(small, torch.ones_like(x), x)
    x2 = x * x
    series = 1 + x2 / 6 * (1 + x2 / 20 * (1 + x2 / 42))
    return torch.where(small, series, torch.sinh(xs) / xs)


def atan_ratio(n: Tensor, c: Tensor) -> Tensor:
    """atan2(n, c) / n for n ≥ 0: the factor turning w into θ w/|w|.

    Near n = 0 with c > 0 it is the series of atan(s)/s, s = n/c (limit 1/c). At n = 0 with
    c ≤ 0 (the cut locus) the ratio is infinite; there it returns atan2(1, c), a finite stand-in
    that callers must replace (it only keeps NaN out of gradients).
    """
    c_pos = torch.where(c > 0, c, torch.ones_like(c))
    s = n / c_pos
    small = (c > 0) & (s < SERIES_CUTOFF)
    s2 = s * s
    series = (1 - s2 * (1 / 3 - s2 * (1 / 5 - s2 / 7))) / c_pos
    n_safe = torch.where(small | (n <= 0), torch.ones_like(n), n)
    return torch.where(small, series, torch.atan2(n_safe, c) / n_safe)


def safe_sqrt(sq: Tensor) -> Tensor:
    """sqrt(max(sq, 0)) with gradient 0, not NaN, where sq ≤ 0 (dist(x, x), a zero tangent)."""
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(),
                       torch.zeros_like(sq))


def posterior_weights(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over the last axis of unnormalised log weights [B, M], −inf allowed.

    Returns (w [B, M], supported [B]); a row of −inf only (no reference point explains it) gets
    w = 0 and supported = False instead of the softmax's NaN.
    """
    supported = torch.isfinite(log_w).any(-1)
    w = torch.softmax(torch.where(supported.unsqueeze(-1), log_w, 0.0), dim=-1)
    return torch.where(supported.unsqueeze(-1), w, 0.0), supported

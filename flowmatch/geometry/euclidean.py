"""Euclidean space R^{d1 × … × dk} with the standard metric."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowmatch.geometry._numerics import safe_sqrt
from flowmatch.geometry.base import Geometry, _as_shape, gaussian_log_prob


class Euclidean(Geometry):
    """Flat space of points of shape ``point_shape`` (``Euclidean(2)``, ``Euclidean((3, 8, 8))``).

    Points and tangent vectors are arbitrary finite tensors of that trailing shape; every map is
    the flat one (expmap(x, u) = x + u). The base distribution is N(0, base_scale² I).
    """

    def __init__(self, point_shape: int | Sequence[int], base_scale: float = 1.0) -> None:
        self.point_shape = _as_shape(point_shape)
        if any(s <= 0 for s in self.point_shape):
            raise ValueError(f"point_shape must be positive, got {self.point_shape}")
        if not base_scale > 0:
            raise ValueError(f"base_scale must be positive, got {base_scale}")
        self.dim = math.prod(self.point_shape)
        self.base_scale = float(base_scale)

    def _event_sum(self, x: Tensor) -> Tensor:
        k = len(self.point_shape)
        return x.flatten(x.dim() - k).sum(-1) if k else x

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        return x + u

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        return y - x

    def projx(self, x: Tensor) -> Tensor:
        return x

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return u

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        return self._event_sum(u * (u if v is None else v))

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        return safe_sqrt(self._event_sum((y - x).pow(2)))

    def point_error(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[: x.dim() - len(self.point_shape)], dtype=x.dtype,
                           device=x.device)

    def sample_base(self, shape, *, generator=None, dtype=None, device=None) -> Tensor:
        full = (*_as_shape(shape), *self.point_shape)
        return self.base_scale * torch.randn(full, generator=generator, dtype=dtype,
                                             device=device)

    def base_log_prob(self, x: Tensor) -> Tensor:
        return gaussian_log_prob(x, len(self.point_shape), self.base_scale)

    def contracted_base_log_prob(self, x: Tensor, y: Tensor, s: Tensor) -> Tensor:
        """log N(x; (1 − s) y, (s b)² I) — the law of y + s (X0 − y), X0 ~ N(0, b² I)."""
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        k = len(self.point_shape)
        s_pt = s.reshape(*s.shape, *([1] * k))
        z = (x - (1 - s_pt) * y) / s_pt
        return gaussian_log_prob(z, k, self.base_scale) - self.dim * torch.log(s)

    def __repr__(self) -> str:
        shape = self.point_shape[0] if len(self.point_shape) == 1 else self.point_shape
        extra = "" if self.base_scale == 1.0 else f", base_scale={self.base_scale:g}"
        return f"Euclidean({shape}{extra})"

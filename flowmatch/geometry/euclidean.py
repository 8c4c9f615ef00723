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
    the flat one (expmap(x, u) = x + u). The base distribution is N(base_loc, diag base_scale²):
    by default the standard normal; ``base_loc`` and ``base_scale`` may be tensors of
    ``point_shape`` (an affine transform of the standard normal, e.g. one fitted to the data
    with :meth:`fitted`). A Gaussian base on log-coordinates is a log-normal law of the
    underlying positive quantities (a crystal's log lattice lengths, say).
    """

    def __init__(self, point_shape: int | Sequence[int], base_scale: float | Tensor = 1.0, *,
                 base_loc: Tensor | Sequence[float] | None = None) -> None:
        self.point_shape = _as_shape(point_shape)
        if any(s <= 0 for s in self.point_shape):
            raise ValueError(f"point_shape must be positive, got {self.point_shape}")
        self.dim = math.prod(self.point_shape)
        if torch.is_tensor(base_scale) or isinstance(base_scale, (list, tuple)):
            scale = torch.as_tensor(base_scale, dtype=torch.float64).detach().cpu()
            if scale.shape != self.point_shape or not bool(torch.isfinite(scale).all()) \
                    or not bool((scale > 0).all()):
                raise ValueError(f"base_scale must be a positive number or a finite positive "
                                 f"tensor of shape {self.point_shape}, got {scale.tolist()}")
            self.base_scale: float | Tensor = scale
        else:
            if not base_scale > 0 or not math.isfinite(base_scale):
                raise ValueError(f"base_scale must be positive, got {base_scale}")
            self.base_scale = float(base_scale)
        if base_loc is not None:
            loc = torch.as_tensor(base_loc, dtype=torch.float64).detach().cpu()
            if loc.shape != self.point_shape or not bool(torch.isfinite(loc).all()):
                raise ValueError(f"base_loc must be a finite tensor of shape {self.point_shape}, "
                                 f"got shape {tuple(loc.shape)}")
            base_loc = loc
        self.base_loc: Tensor | None = base_loc

    @classmethod
    def fitted(cls, data: Tensor, *, min_scale: float = 1e-3) -> Euclidean:
        """Euclidean space whose base N(μ, diag σ²) has the per-coordinate mean and standard
        deviation of ``data`` [N, *point_shape] (σ floored at ``min_scale``)."""
        if not torch.is_tensor(data) or data.dim() < 1 or data.shape[0] < 2:
            raise ValueError("data must be a tensor [N, *point_shape] with N ≥ 2, got "
                             f"{getattr(data, 'shape', type(data).__name__)}")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data must be finite to fit a base distribution")
        data = data.detach().to(torch.float64)
        return cls(tuple(data.shape[1:]), data.std(0).clamp_min(min_scale),
                   base_loc=data.mean(0))

    @property
    def standard_base(self) -> bool:
        """True when the base is N(0, I) (no location, unit scale)."""
        return self.base_loc is None and not torch.is_tensor(self.base_scale) \
            and self.base_scale == 1.0

    def _scale_loc(self, like: Tensor) -> tuple[float | Tensor, float | Tensor]:
        scale = self.base_scale.to(device=like.device, dtype=like.dtype) \
            if torch.is_tensor(self.base_scale) else self.base_scale
        loc = 0.0 if self.base_loc is None else self.base_loc.to(device=like.device,
                                                                  dtype=like.dtype)
        return scale, loc

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
        z = torch.randn(full, generator=generator, dtype=dtype, device=device)
        if self.base_loc is None and not torch.is_tensor(self.base_scale):
            return self.base_scale * z
        scale, loc = self._scale_loc(z)
        return loc + scale * z

    def base_log_prob(self, x: Tensor) -> Tensor:
        if self.base_loc is None and not torch.is_tensor(self.base_scale):
            return gaussian_log_prob(x, len(self.point_shape), self.base_scale)
        scale, loc = self._scale_loc(x)
        return gaussian_log_prob((x - loc) / scale, len(self.point_shape)) \
            - self._event_sum(torch.log(scale).expand(self.point_shape))

    def contracted_base_log_prob(self, x: Tensor, y: Tensor, s: Tensor) -> Tensor:
        """log N(x; (1 − s) y + s m, (s b)² I) — the law of y + s (X0 − y), X0 ~ N(m, b² I)."""
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        k = len(self.point_shape)
        s_pt = s.reshape(*s.shape, *([1] * k))
        if self.base_loc is None and not torch.is_tensor(self.base_scale):
            z = (x - (1 - s_pt) * y) / s_pt
            return gaussian_log_prob(z, k, self.base_scale) - self.dim * torch.log(s)
        scale, loc = self._scale_loc(x)
        z = (x - (1 - s_pt) * y - s_pt * loc) / (s_pt * scale)
        log_scale = self._event_sum(torch.log(scale).expand(self.point_shape))
        return gaussian_log_prob(z, k) - self.dim * torch.log(s) - log_scale

    def __repr__(self) -> str:
        shape = self.point_shape[0] if len(self.point_shape) == 1 else self.point_shape
        if torch.is_tensor(self.base_scale) or self.base_loc is not None:
            extra = ", fitted base" if self.base_loc is not None else ", base_scale=tensor"
        else:
            extra = "" if self.base_scale == 1.0 else f", base_scale={self.base_scale:g}"
        return f"Euclidean({shape}{extra})"

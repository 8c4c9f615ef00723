"""Use a geoopt manifold wherever a flowmatch Geometry is expected."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowmatch.geometry.base import Geometry, _as_shape


class GeooptGeometry(Geometry):
    """Wrap a ``geoopt.Manifold`` as a :class:`Geometry`.

    geoopt does not know the shape of one point, nor a base distribution with a density, so both
    are given here. ``sample_base`` uses the manifold's ``random`` method when it has one;
    ``base_log_prob`` needs ``base_log_prob_fn`` (a callable of x) unless the manifold is compact
    and ``volume`` is given (uniform base: −log volume).
    """

    def __init__(
        self,
        manifold: Any,
        point_shape: int | Sequence[int] | None = None,
        dim: int | None = None,
        *,
        volume: float | None = None,
        base_log_prob_fn: Any = None,
    ) -> None:
        self.manifold = manifold
        # geoopt knows how many trailing dimensions make one point, not their sizes
        self.event_ndim = int(getattr(manifold, "ndim", 1))
        self.point_shape = _as_shape(point_shape) if point_shape is not None else ()
        if point_shape is not None and len(self.point_shape) != self.event_ndim:
            raise ValueError(
                f"{manifold} points have {self.event_ndim} trailing dimensions, "
                f"but point_shape is {self.point_shape}"
            )
        self.dim = int(dim) if dim is not None else math.prod(self.point_shape)
        self.volume = volume
        self._base_log_prob_fn = base_log_prob_fn

    def _batch(self, x: Tensor) -> tuple[int, ...]:
        return tuple(x.shape[: x.dim() - self.event_ndim])

    def _reduce(self, value: Tensor, x: Tensor) -> Tensor:
        # geoopt's keepdim reductions differ per manifold; reduce whatever remains beyond the batch
        batch = self._batch(x)
        return value.reshape(*batch, -1).sum(-1)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        return self.manifold.expmap(x, u)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        return self.manifold.logmap(x, y)

    def projx(self, x: Tensor) -> Tensor:
        return self.manifold.projx(x)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return self.manifold.proju(x, u)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        return self._reduce(self.manifold.inner(x, u, u if v is None else v, keepdim=True), x)

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        return self._reduce(self.manifold.dist(x, y, keepdim=True).pow(2), x).sqrt()

    def check_shape(self, name: str, x: Tensor) -> None:
        if self.point_shape:
            super().check_shape(name, x)
        elif x.dim() < self.event_ndim:
            raise ValueError(f"{name} must have at least {self.event_ndim} dimensions for "
                             f"{self.manifold}, got shape {tuple(x.shape)}")

    def point_error(self, x: Tensor) -> Tensor:
        ok, _ = self.manifold.check_point_on_manifold(x, explain=True, atol=0, rtol=0)
        return self._reduce((x - self.manifold.projx(x)).abs().amax(-1, keepdim=True), x) \
            if not ok else torch.zeros(self._batch(x), dtype=x.dtype, device=x.device)

    def sample_base(self, shape, *, generator=None, dtype=None, device=None) -> Tensor:
        if generator is not None:
            raise ValueError("geoopt's random() does not accept a generator; seed torch instead")
        if not self.point_shape:
            raise ValueError("sample_base needs the point_shape of the wrapped manifold")
        full = (*_as_shape(shape), *self.point_shape)
        if not hasattr(self.manifold, "random"):
            raise NotImplementedError(f"{self.manifold} has no random(); give a base sampler")
        return self.manifold.random(full, dtype=dtype, device=device)

    def base_log_prob(self, x: Tensor) -> Tensor:
        if self._base_log_prob_fn is not None:
            return self._base_log_prob_fn(x)
        if self.volume is not None:
            return torch.full(self._batch(x), -math.log(self.volume), dtype=x.dtype,
                              device=x.device)
        raise NotImplementedError(
            f"no base density for {self.manifold}: pass volume= or base_log_prob_fn="
        )

    def __repr__(self) -> str:
        return f"GeooptGeometry({self.manifold}, point_shape={self.point_shape})"


def as_geometry(space: Any, point_shape: int | Sequence[int] | None = None) -> Geometry:
    """Return ``space`` as a :class:`Geometry`, wrapping a ``geoopt.Manifold`` if needed."""
    if isinstance(space, Geometry):
        return space
    try:
        import geoopt
    except ImportError:  # pragma: no cover - geoopt is a core dependency
        geoopt = None
    if geoopt is not None and isinstance(space, geoopt.Manifold):
        return GeooptGeometry(space, point_shape)
    raise TypeError(f"expected a flowmatch Geometry or geoopt.Manifold, got {type(space).__name__}")

"""Products of geometries, with points stored as a mapping from factor name to tensor.

A crystal is (lattice) × (fractional coordinates on a torus) × (atom types): factors may have
different batch shapes (one lattice per crystal, one coordinate row per atom), so a point of a
:class:`Product` is a ``dict[str, Tensor]`` and every map acts factor by factor. Reductions
(``inner``, ``dist``, ``base_log_prob``) sum over factors when their batch shapes agree; use the
``*_per_factor`` forms otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from flowmatch.geometry._numerics import safe_sqrt
from flowmatch.geometry.base import Geometry

Point = dict[str, Tensor]


class Product(Geometry):
    """Cartesian product M₁ × … × Mₖ of named factors with the sum metric.

    Example: ``Product(coords=FlatTorus(3), lattice=Euclidean(6), types=Discrete(100))``.
    Continuous factors flow with their own exponential maps; discrete factors (``is_discrete``)
    only contribute a base distribution and are advanced by jumps.
    """

    def __init__(self, factors: Mapping[str, Geometry] | None = None, **named: Geometry) -> None:
        merged = dict(factors or {})
        for name, geometry in named.items():
            if name in merged:
                raise ValueError(f"factor {name!r} given twice")
            merged[name] = geometry
        if not merged:
            raise ValueError("a Product needs at least one factor")
        for name, geometry in merged.items():
            if not isinstance(geometry, Geometry):
                raise TypeError(
                    f"factor {name!r} must be a Geometry, got {type(geometry).__name__} "
                    "(wrap geoopt manifolds with flowmatch.geometry.as_geometry)"
                )
        self.factors: dict[str, Geometry] = merged
        self.dim = sum(g.dim for g in merged.values())

    # -- helpers ---------------------------------------------------------------------
    def _keys(self, name: str, x: Mapping[str, Tensor]) -> None:
        if not isinstance(x, Mapping):
            raise TypeError(f"{name} must be a mapping from factor name to tensor for {self}, "
                            f"got {type(x).__name__}")
        if set(x) != set(self.factors):
            missing = sorted(set(self.factors) - set(x))
            extra = sorted(set(x) - set(self.factors))
            raise ValueError(f"{name} must have factors {sorted(self.factors)}: "
                             f"missing {missing}, unexpected {extra}")

    def _sum(self, parts: dict[str, Tensor]) -> Tensor:
        shapes = {tuple(v.shape) for v in parts.values()}
        if len(shapes) != 1:
            raise ValueError(
                "factors have different batch shapes "
                f"{ {k: tuple(v.shape) for k, v in parts.items()} }; "
                "use the *_per_factor method and reduce per sample yourself"
            )
        return torch.stack(list(parts.values())).sum(0)

    @property
    def continuous_factors(self) -> dict[str, Geometry]:
        return {k: g for k, g in self.factors.items() if not g.is_discrete}

    @property
    def discrete_factors(self) -> dict[str, Geometry]:
        return {k: g for k, g in self.factors.items() if g.is_discrete}

    # -- maps ------------------------------------------------------------------------
    # Tangent vectors of a product exist only on its continuous factors: maps that return
    # tangent vectors (logmap, proju) return those factors, and point maps (expmap, projx)
    # pass discrete factors through unchanged (tokens move by jumps, not along geodesics).
    def _tangent_map(self, op: str, *points: Mapping[str, Tensor]) -> Point:
        return {k: getattr(g, op)(*(p[k] for p in points))
                for k, g in self.continuous_factors.items()}

    def expmap(self, x, u):
        out = dict(x)
        out.update(self._tangent_map("expmap", x, u))
        return out

    def logmap(self, x, y):
        return self._tangent_map("logmap", x, y)

    def projx(self, x):
        out = dict(x)
        out.update(self._tangent_map("projx", x))
        return out

    def proju(self, x, u):
        return self._tangent_map("proju", x, u)

    def inner_per_factor(self, x, u, v=None) -> Point:
        v = u if v is None else v
        return {k: g.inner(x[k], u[k], v[k]) for k, g in self.continuous_factors.items()}

    def inner(self, x, u, v=None):
        return self._sum(self.inner_per_factor(x, u, v))

    def norm(self, x, u):
        return safe_sqrt(self.inner(x, u, u))

    def dist_per_factor(self, x, y) -> Point:
        """Geodesic distance per continuous factor (discrete factors have no metric)."""
        return {k: g.dist(x[k], y[k]) for k, g in self.continuous_factors.items()}

    def dist(self, x, y):
        return safe_sqrt(self._sum({k: d.pow(2) for k, d in self.dist_per_factor(x, y).items()}))

    def metric_logdet(self, x):
        return self._sum({k: g.metric_logdet(x[k]) for k, g in self.continuous_factors.items()})

    # -- base distribution -------------------------------------------------------------
    def sample_base(self, shape, *, generator=None, dtype=None, device=None) -> Point:
        """``shape`` is one batch shape for every factor, or a mapping factor → batch shape."""
        if isinstance(shape, Mapping):
            self._keys("shape", shape)
            shapes = dict(shape)
        else:
            shapes = {k: shape for k in self.factors}
        return {
            k: g.sample_base(shapes[k], generator=generator, dtype=dtype, device=device)
            for k, g in self.factors.items()
        }

    def base_log_prob_per_factor(self, x) -> Point:
        return {k: g.base_log_prob(x[k]) for k, g in self.factors.items()}

    def base_log_prob(self, x):
        return self._sum(self.base_log_prob_per_factor(x))

    # -- validation ----------------------------------------------------------------------
    def check_point(self, x, name: str = "x") -> None:
        self._keys(name, x)
        for k, g in self.factors.items():
            g.check_point(x[k], f"{name}[{k!r}]")

    def check_tangent(self, x, u, name: str = "u") -> None:
        self._keys(name, u)
        for k, g in self.continuous_factors.items():
            g.check_tangent(x[k], u[k], f"{name}[{k!r}]")

    def point_error(self, x):
        return self._sum({k: g.point_error(x[k]) for k, g in self.factors.items()})

    def random_tangent(self, x, *, generator=None):
        return {k: g.random_tangent(x[k], generator=generator)
                for k, g in self.continuous_factors.items()}

    def __getitem__(self, name: str) -> Geometry:
        return self.factors[name]

    def __iter__(self):
        return iter(self.factors)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={g!r}" for k, g in self.factors.items())
        return f"Product({inner})"


def map_points(fn, *points: Mapping[str, Tensor] | Tensor, keys: Sequence[str] | None = None):
    """Apply ``fn`` to tensors, or factor-wise to dict points (optionally only ``keys``)."""
    if isinstance(points[0], Mapping):
        names = keys if keys is not None else list(points[0])
        return {k: fn(*(p[k] for p in points)) for k in names}
    return fn(*points)

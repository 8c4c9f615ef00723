"""Products of geometries, with points stored as a mapping from factor name to tensor.

A crystal is (lattice) × (fractional coordinates on a torus) × (atom types): factors may have
different batch shapes — one lattice row per crystal, one coordinate row per atom — so a point
of a :class:`Product` is a mapping from factor name to tensor and every map acts factor by
factor. When the factors' rows differ, a :class:`ProductPoint` says how: its ``segments``
(:class:`~flowmatch.geometry.segments.Segments`) assign the rows of the ``ragged`` factors to
samples, and the reductions (``inner``, ``dist``, ``base_log_prob``, ``point_error``) sum each
factor per sample before adding the factors, giving one value per sample ([S]).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from flowmatch.geometry._numerics import safe_sqrt
from flowmatch.geometry.base import Geometry
from flowmatch.geometry.segments import Segments

Point = dict[str, Tensor]


class ProductPoint(dict):
    """A batch of product points (or tangent vectors): factor name → tensor, plus its layout.

    Factors named in ``ragged`` hold one row per *member* (an atom) and ``segments`` says which
    sample (crystal) each row belongs to; every other factor holds one row per sample. With
    ``segments=None`` it is a plain batch whose factors all lead with the sample dimension.

    Example — two crystals of 2 and 3 atoms::

        seg = Segments.from_sizes([2, 3])
        x = ProductPoint({"lattice": torch.zeros(2, 6), "coords": torch.rand(5, 3),
                          "types": torch.tensor([8, 8, 22, 38, 8])},
                         segments=seg, ragged=("coords", "types"))
        x.num_samples  # 2

    It is a ``dict``, so code written for plain dict points keeps working; operations of
    :class:`Product` return ProductPoints with the same layout (:meth:`like`).
    """

    def __init__(self, data: Mapping[str, Tensor] | Iterable = (), *,
                 segments: Segments | None = None, ragged: Iterable[str] = ()) -> None:
        super().__init__(data)
        ragged = frozenset(ragged)
        if ragged and segments is None:
            raise ValueError(f"ragged factors {sorted(ragged)} need segments (which sample "
                             "each row belongs to)")
        if segments is not None and not isinstance(segments, Segments):
            raise TypeError(f"segments must be a Segments, got {type(segments).__name__}")
        unknown = sorted(ragged - set(self))
        if unknown:
            raise ValueError(f"ragged names factors the point does not have: {unknown}")
        self.segments = segments
        self.ragged = ragged
        if segments is not None:
            for name, value in self.items():
                rows = segments.num_rows if name in ragged else segments.num_segments
                what = "members (ragged)" if name in ragged else "samples"
                if value.dim() < 1 or value.shape[0] != rows:
                    raise ValueError(f"factor {name!r} must have {rows} rows (one per "
                                     f"{what.split()[0][:-1]}; {what}), got shape "
                                     f"{tuple(value.shape)}")

    @property
    def num_samples(self) -> int:
        """Number of samples in the batch (crystals, not atoms)."""
        if self.segments is not None:
            return self.segments.num_segments
        first = next(iter(self.values()))
        return int(first.shape[0])

    def like(self, data: Mapping[str, Tensor]) -> ProductPoint:
        """A ProductPoint with ``data`` and this point's layout (ragged factors kept by name)."""
        return ProductPoint(data, segments=self.segments,
                            ragged=self.ragged & set(data))

    def is_ragged(self, name: str) -> bool:
        return name in self.ragged

    def per_sample(self, name: str, values: Tensor) -> Tensor:
        """Per-row values of factor ``name`` summed per sample ([rows, ...] → [S, ...])."""
        if name in self.ragged:
            return self.segments.sum(values)
        return values

    def rows_of(self, name: str, per_sample: Tensor) -> Tensor:
        """A per-sample value ([S, ...]) repeated for factor ``name``'s rows (e.g. a time)."""
        if name in self.ragged:
            return self.segments.broadcast(per_sample)
        return per_sample

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> ProductPoint:
        """Move every factor (floating factors also cast to ``dtype``) and the segment index."""
        data = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                for k, v in self.items()}
        seg = self.segments.to(device) if (self.segments is not None and device is not None) \
            else self.segments
        return ProductPoint(data, segments=seg, ragged=self.ragged)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.items())
        layout = "" if self.segments is None else \
            f", {self.segments!r}, ragged={sorted(self.ragged)}"
        return f"ProductPoint({{{inner}}}{layout})"


def layout_of(x: Mapping[str, Tensor]) -> ProductPoint | None:
    """``x`` itself if it is a :class:`ProductPoint`, else None."""
    return x if isinstance(x, ProductPoint) else None


class Product(Geometry):
    """Cartesian product M₁ × … × Mₖ of named factors with the sum metric.

    Example: ``Product(coords=FlatTorus(3), lattice=Euclidean(6), types=Discrete(100))``.
    Continuous factors flow with their own exponential maps; discrete factors (``is_discrete``)
    only contribute a base distribution and are advanced by jumps.

    ``mean_free`` names flat factors (:class:`Euclidean` or :class:`FlatTorus`) whose tangent
    vectors have each sample's mean removed by :meth:`proju`: the velocity of a crystal's
    fractional coordinates then carries no global translation, which the crystal's symmetry
    makes meaningless. For a ragged factor the mean is over the sample's rows (its atoms); for a
    dense factor [B, n, *point_shape] over the n rows of each sample. This is an orthogonal
    projection of the (flat) tangent space, so the metric and the likelihood are unchanged on
    the mean-free subspace.
    """

    def __init__(self, factors: Mapping[str, Geometry] | None = None, *,
                 mean_free: Iterable[str] = (), **named: Geometry) -> None:
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
        from flowmatch.geometry.euclidean import Euclidean
        from flowmatch.geometry.torus import FlatTorus

        mean_free = tuple(mean_free) if not isinstance(mean_free, str) else (mean_free,)
        for name in mean_free:
            if name not in merged:
                raise ValueError(f"mean_free names {name!r}, which is not a factor of "
                                 f"{sorted(merged)}")
            if not isinstance(merged[name], (Euclidean, FlatTorus)):
                raise ValueError(f"mean_free factor {name!r} must be flat (Euclidean or "
                                 f"FlatTorus), got {merged[name]!r}: removing a mean is a "
                                 "projection of the tangent space only for flat factors")
        self.factors: dict[str, Geometry] = merged
        self.mean_free: tuple[str, ...] = mean_free
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

    def _sum(self, parts: dict[str, Tensor], x: Mapping[str, Tensor] | None = None) -> Tensor:
        """Σ over factors of per-factor values, per sample.

        For a :class:`ProductPoint` ``x`` the values of ragged factors are first summed over
        each sample's rows; otherwise every factor must already have one value per sample.
        """
        if isinstance(x, ProductPoint) and x.segments is not None:
            parts = {k: x.per_sample(k, v) for k, v in parts.items()}
        shapes = {tuple(v.shape) for v in parts.values()}
        if len(shapes) != 1:
            raise ValueError(
                "factors have different batch shapes "
                f"{ {k: tuple(v.shape) for k, v in parts.items()} }; give a ProductPoint "
                "whose segments say which sample each row of a ragged factor belongs to"
            )
        return torch.stack(list(parts.values())).sum(0)

    def _wrap(self, x: Mapping[str, Tensor], data: dict[str, Tensor]) -> Point:
        return x.like(data) if isinstance(x, ProductPoint) else data

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
        return self._wrap(points[0], {k: getattr(g, op)(*(p[k] for p in points))
                                      for k, g in self.continuous_factors.items()})

    def expmap(self, x, u):
        out = dict(x)
        out.update(self._tangent_map("expmap", x, u))
        return self._wrap(x, out)

    def logmap(self, x, y):
        return self._tangent_map("logmap", x, y)

    def projx(self, x):
        out = dict(x)
        out.update(self._tangent_map("projx", x))
        return self._wrap(x, out)

    def proju(self, x, u):
        v = self._tangent_map("proju", x, u)
        for k in self.mean_free:
            v[k] = self.remove_mean(x, k, v[k])
        return v

    def remove_mean(self, x: Mapping[str, Tensor], name: str, u: Tensor) -> Tensor:
        """``u`` (a tangent vector of factor ``name``) minus each sample's mean row."""
        if isinstance(x, ProductPoint) and x.is_ragged(name):
            return x.segments.center(u)
        k = len(self.factors[name].point_shape)
        dims = tuple(range(1, u.dim() - k))
        if not dims:
            raise ValueError(
                f"mean_free factor {name!r} has one row per sample (shape {tuple(u.shape)}): "
                "give a ProductPoint with it ragged, or a dense [B, n, *point_shape] factor")
        return u - u.mean(dim=dims, keepdim=True)

    def inner_per_factor(self, x, u, v=None) -> Point:
        v = u if v is None else v
        return {k: g.inner(x[k], u[k], v[k]) for k, g in self.continuous_factors.items()}

    def inner(self, x, u, v=None):
        return self._sum(self.inner_per_factor(x, u, v), x)

    def norm(self, x, u):
        return safe_sqrt(self.inner(x, u, u))

    def dist_per_factor(self, x, y) -> Point:
        """Geodesic distance per continuous factor (discrete factors have no metric)."""
        return {k: g.dist(x[k], y[k]) for k, g in self.continuous_factors.items()}

    def dist(self, x, y):
        return safe_sqrt(self._sum({k: d.pow(2) for k, d in self.dist_per_factor(x, y).items()},
                                   x))

    def metric_logdet(self, x):
        return self._sum({k: g.metric_logdet(x[k]) for k, g in self.continuous_factors.items()},
                         x)

    # -- base distribution -------------------------------------------------------------
    def sample_base(self, shape, *, generator=None, dtype=None, device=None) -> Point:
        """``shape`` is one batch shape for every factor, or a mapping factor → batch shape.

        A :class:`ProductPoint` as ``shape`` draws a batch with its layout (same rows per
        factor, same segments), as :meth:`sample_base_like` does.
        """
        if isinstance(shape, ProductPoint):
            return self.sample_base_like(shape, generator=generator, dtype=dtype, device=device)
        if isinstance(shape, Mapping):
            self._keys("shape", shape)
            shapes = dict(shape)
        else:
            shapes = {k: shape for k in self.factors}
        return {
            k: g.sample_base(shapes[k], generator=generator, dtype=dtype, device=device)
            for k, g in self.factors.items()
        }

    def sample_base_like(self, x, *, generator=None, dtype=None, device=None) -> Point:
        """Base draws with the batch layout of ``x`` (each factor's batch shape; segments).

        Factors are drawn in the order of ``self.factors``, so a seeded generator reproduces
        the draw.
        """
        self._keys("x", x)
        out = {}
        for k, g in self.factors.items():
            batch = x[k].shape[: x[k].dim() - len(g.point_shape)]
            out[k] = g.sample_base(batch, generator=generator,
                                   dtype=dtype if dtype is not None else (
                                       x[k].dtype if x[k].is_floating_point() else None),
                                   device=device if device is not None else x[k].device)
        return self._wrap(x, out)

    def base_log_prob_per_factor(self, x) -> Point:
        return {k: g.base_log_prob(x[k]) for k, g in self.factors.items()}

    def base_log_prob(self, x):
        return self._sum(self.base_log_prob_per_factor(x), x)

    # -- validation ----------------------------------------------------------------------
    def check_point(self, x, name: str = "x") -> None:
        self._keys(name, x)
        for k, g in self.factors.items():
            g.check_point(x[k], f"{name}[{k!r}]")

    def check_tangent(self, x, u, name: str = "u") -> None:
        if isinstance(u, Mapping) and set(u) == set(self.factors):
            self._keys(name, u)
        else:
            self._tangent_keys(name, u)
        for k, g in self.continuous_factors.items():
            g.check_tangent(x[k], u[k], f"{name}[{k!r}]")
        for k in self.mean_free:
            mean_dev = (u[k] - self.remove_mean(x, k, u[k])).abs()
            tol = self.factors[k].tolerance(u[k].dtype) * (1.0 + float(u[k].abs().max()))
            if mean_dev.numel() and float(mean_dev.max()) > tol:
                raise ValueError(f"{name}[{k!r}] must have zero mean per sample (mean_free), "
                                 f"but a sample's mean is {float(mean_dev.max()):.2e}")

    def _tangent_keys(self, name: str, u: Mapping[str, Tensor]) -> None:
        if not isinstance(u, Mapping) or set(u) != set(self.continuous_factors):
            got = sorted(u) if isinstance(u, Mapping) else type(u).__name__
            raise ValueError(f"{name} must have the continuous factors "
                             f"{sorted(self.continuous_factors)}, got {got}")

    def point_error(self, x):
        return self._sum({k: g.point_error(x[k]) for k, g in self.factors.items()}, x)

    def random_tangent(self, x, *, generator=None):
        return self.proju(x, {k: torch.randn(x[k].shape, generator=generator,
                                             dtype=x[k].dtype, device=x[k].device)
                              for k in self.continuous_factors})

    def __getitem__(self, name: str) -> Geometry:
        return self.factors[name]

    def __iter__(self):
        return iter(self.factors)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={g!r}" for k, g in self.factors.items())
        extra = f", mean_free={list(self.mean_free)}" if self.mean_free else ""
        return f"Product({inner}{extra})"


def map_points(fn, *points: Mapping[str, Tensor] | Tensor, keys: Sequence[str] | None = None):
    """Apply ``fn`` to tensors, or factor-wise to dict points (optionally only ``keys``)."""
    if isinstance(points[0], Mapping):
        names = keys if keys is not None else list(points[0])
        return {k: fn(*(p[k] for p in points)) for k in names}
    return fn(*points)

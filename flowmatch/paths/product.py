"""Paths on product spaces: one conditional path per factor, sampled at a shared time.

A point of a :class:`~flowmatch.geometry.Product` is a mapping from factor name to tensor, and
so is everything here: ``ProductPath({"pos": AffinePath(...), "label": MixtureDiscretePath(...)})``
samples each factor's path and returns a :class:`ProductPathSample` — a dict of
:class:`PathSample` per factor that also carries the joint ``x_t``, ``dx_t`` and the per-sample
``t``.

Batches of different sizes per sample (crystals: one lattice row per crystal, one coordinate
row per atom) come as a :class:`~flowmatch.geometry.ProductPoint`: then ``t`` has one time per
*sample* ([S]) and each ragged factor's rows get their sample's time. A factor given as
``None`` is *fixed*: a conditioning factor that does not move (the atom types of crystal
structure prediction). Its x_t is x1, it has no target and the product solver holds it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import Tensor

from flowmatch.geometry.product import ProductPoint
from flowmatch.paths.base import PathSample, ProbPath


class ProductPathSample(dict):
    """Factor name → :class:`PathSample`, plus the joint views a training loop needs.

    ``x0``, ``x1``, ``x_t`` are points of the product (with the batch layout of x1), ``t`` the
    time per sample ([S], or the mapping given), and ``dx_t`` the targets of the moving
    continuous factors (a point-like mapping; discrete and fixed factors have none).
    """

    def __init__(self, parts: Mapping[str, PathSample], *, t, layout: Mapping[str, Tensor],
                 fixed: frozenset[str]) -> None:
        super().__init__(parts)
        self.t = t
        self.fixed = fixed

        def joint(field: str) -> dict[str, Tensor]:
            data = {k: getattr(p, field) for k, p in parts.items()}
            return layout.like(data) if isinstance(layout, ProductPoint) else data

        self.x0 = joint("x0")
        self.x1 = joint("x1")
        self.x_t = joint("x_t")
        targets = {k: p.dx_t for k, p in parts.items() if p.dx_t is not None}
        self.dx_t = layout.like(targets) if isinstance(layout, ProductPoint) else targets


class ProductPath:
    """A named collection of per-factor probability paths sampled jointly.

    A factor mapped to ``None`` is fixed (see the module docstring); ``paths`` holds the moving
    factors and ``fixed`` the names of the fixed ones.
    """

    def __init__(self, paths: Mapping[str, ProbPath | None] | None = None,
                 **named: ProbPath | None) -> None:
        merged = dict(paths or {})
        for name, path in named.items():
            if name in merged:
                raise ValueError(f"factor {name!r} given twice")
            merged[name] = path
        if not merged:
            raise ValueError("a ProductPath needs at least one factor path")
        fixed = frozenset(k for k, p in merged.items() if p is None)
        if len(fixed) == len(merged):
            raise ValueError("a ProductPath needs at least one moving factor, but every factor "
                             f"is fixed (None): {sorted(fixed)}")
        merged = {k: p for k, p in merged.items() if p is not None}
        for name, path in merged.items():
            if not hasattr(path, "sample"):
                raise TypeError(f"path for factor {name!r} has no sample(x0, x1, t) method")
        self.paths: dict[str, ProbPath] = merged
        self.fixed: frozenset[str] = fixed
        # factors whose sampling draws random numbers (discrete paths) take a generator
        self._random = {name for name, path in merged.items()
                        if "generator" in inspect.signature(path.sample).parameters}

    @property
    def factors(self) -> list[str]:
        """Every factor name, moving and fixed."""
        return [*self.paths, *sorted(self.fixed)]

    def _times(self, t: Tensor | Mapping[str, Tensor], x1: Mapping[str, Tensor]
               ) -> dict[str, Tensor]:
        if isinstance(t, Mapping):
            missing = sorted(set(self.paths) - set(t))
            if missing:
                raise ValueError(f"t is missing the factors {missing}")
            return {k: t[k] for k in self.paths}
        if isinstance(x1, ProductPoint) and x1.segments is not None:
            n = x1.num_samples
            if not torch.is_tensor(t) or t.dim() != 1 or t.shape[0] != n:
                raise ValueError(f"t must have one time per sample, shape [{n}], for a batch "
                                 f"of {n} samples; got {getattr(t, 'shape', t)}")
            return {k: x1.rows_of(k, t) for k in self.paths}
        return {k: t for k in self.paths}

    def _check(self, name: str, x: Mapping[str, Tensor]) -> None:
        if not isinstance(x, Mapping):
            raise TypeError(f"{name} must be a dict from factor name to tensor, "
                            f"got {type(x).__name__}")
        expected = set(self.paths) | self.fixed
        if set(x) != expected:
            raise ValueError(f"{name} must have the factors {sorted(expected)}, "
                             f"got {sorted(x)}")

    def sample(
        self,
        x0: Mapping[str, Tensor],
        x1: Mapping[str, Tensor],
        t: Tensor | Mapping[str, Tensor],
        *,
        generator: torch.Generator | None = None,
    ) -> ProductPathSample:
        """Sample every factor's conditional path; ``t`` is one tensor or one per factor.

        ``t`` has shape [S] — one time per sample; for a :class:`ProductPoint` x1 each ragged
        factor's rows get their sample's time — or is a mapping factor → time tensor.
        ``generator`` drives the draws of the factors whose paths are random given (x0, x1, t)
        — the discrete ones (which tokens have jumped); continuous paths are deterministic.
        Factors are sampled in the order of ``paths``, so a seeded generator reproduces the
        whole sample. Fixed factors are returned with x_t = x0 = x1 and no target.
        """
        self._check("x0", x0)
        self._check("x1", x1)
        times = self._times(t, x1)
        parts: dict[str, PathSample] = {}
        for k, p in self.paths.items():
            parts[k] = (p.sample(x0[k], x1[k], times[k], generator=generator)
                        if k in self._random else p.sample(x0[k], x1[k], times[k]))
        for k in sorted(self.fixed):
            t_k = x1.rows_of(k, t) if isinstance(x1, ProductPoint) and torch.is_tensor(t) \
                and x1.segments is not None else t
            parts[k] = PathSample(x0=x1[k], x1=x1[k], t=t_k, x_t=x1[k], dx_t=None)
        ordered = {k: parts[k] for k in x1}  # the point's own factor order
        return ProductPathSample(ordered, t=t, layout=x1, fixed=self.fixed)

    def __getitem__(self, name: str) -> ProbPath:
        return self.paths[name]

    def __repr__(self) -> str:
        inner = ", ".join([f"{k}={p!r}" for k, p in self.paths.items()]
                          + [f"{k}=None" for k in sorted(self.fixed)])
        return f"ProductPath({inner})"

"""Paths on product spaces: one conditional path per factor, sampled at a shared time.

A point of a :class:`~flowmatch.geometry.Product` is a ``dict`` from factor name to tensor, and
so is everything here: ``ProductPath({"pos": AffinePath(...), "label": MixtureDiscretePath(...)})``
samples each factor's path and returns a dict of :class:`PathSample`. Factors may have different
batch shapes (one lattice per crystal, one coordinate row per atom); give ``t`` per factor then.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import Tensor

from flowmatch.paths.base import PathSample, ProbPath


class ProductPath:
    """A named collection of per-factor probability paths sampled jointly."""

    def __init__(self, paths: Mapping[str, ProbPath] | None = None, **named: ProbPath) -> None:
        merged = dict(paths or {})
        for name, path in named.items():
            if name in merged:
                raise ValueError(f"factor {name!r} given twice")
            merged[name] = path
        if not merged:
            raise ValueError("a ProductPath needs at least one factor path")
        for name, path in merged.items():
            if not hasattr(path, "sample"):
                raise TypeError(f"path for factor {name!r} has no sample(x0, x1, t) method")
        self.paths: dict[str, ProbPath] = merged
        # factors whose sampling draws random numbers (discrete paths) take a generator
        self._random = {name for name, path in merged.items()
                        if "generator" in inspect.signature(path.sample).parameters}

    def _times(self, t: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        if isinstance(t, Mapping):
            missing = sorted(set(self.paths) - set(t))
            if missing:
                raise ValueError(f"t is missing the factors {missing}")
            return {k: t[k] for k in self.paths}
        return {k: t for k in self.paths}

    def _check(self, name: str, x: Mapping[str, Tensor]) -> None:
        if not isinstance(x, Mapping):
            raise TypeError(f"{name} must be a dict from factor name to tensor, "
                            f"got {type(x).__name__}")
        if set(x) != set(self.paths):
            raise ValueError(f"{name} must have the factors {sorted(self.paths)}, "
                             f"got {sorted(x)}")

    def sample(
        self,
        x0: Mapping[str, Tensor],
        x1: Mapping[str, Tensor],
        t: Tensor | Mapping[str, Tensor],
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, PathSample]:
        """Sample every factor's conditional path; ``t`` is one [B] tensor or one per factor.

        ``generator`` drives the draws of the factors whose paths are random given (x0, x1, t)
        — the discrete ones (which tokens have jumped); continuous paths are deterministic.
        Factors are sampled in the order of ``paths``, so a seeded generator reproduces the
        whole sample.
        """
        self._check("x0", x0)
        self._check("x1", x1)
        times = self._times(t)
        return {k: (p.sample(x0[k], x1[k], times[k], generator=generator) if k in self._random
                    else p.sample(x0[k], x1[k], times[k]))
                for k, p in self.paths.items()}

    def __getitem__(self, name: str) -> ProbPath:
        return self.paths[name]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={p!r}" for k, p in self.paths.items())
        return f"ProductPath({inner})"

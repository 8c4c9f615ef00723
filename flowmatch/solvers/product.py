"""Joint sampling of continuous and discrete factors on one time grid.

A point of a :class:`~flowmatch.geometry.Product` is a dict of tensors, and the field is one
network ``field(x, t, **cond) -> dict`` that returns, per factor, a tangent vector (continuous
factors) or posterior logits over the data vocabulary (discrete factors). Every step from t to
t + h evaluates the field once at (x, t) and then

* moves each continuous factor along its geometry: x ← exp_x(h · P_x u) (geodesic Euler;
  ``continuous_step="projx"`` uses projx(x + h u) instead), and
* jumps each discrete factor with the τ-leaping step of its path, chosen by
  :func:`~flowmatch.solvers.discrete_step.discrete_step_for`:
  :func:`~flowmatch.solvers.ctmc.ctmc_step` for a mixture path (exact jump probabilities) and
  :func:`~flowmatch.solvers.metric_induced.metric_induced_step` for a metric-induced path.

With ``method="midpoint"`` the continuous factors take a midpoint step — a second evaluation at
t + h/2 with the continuous factors advanced half a step and the discrete ones held — while the
discrete factors still jump with the logits from t (a τ-leaping step has no midpoint rule that
keeps its jump probabilities exact). All factors share the grid, so the sampled joint is coupled
through the network exactly as it was trained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from flowmatch._validation import validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.geometry.product import Product
from flowmatch.paths.metric_induced import MetricInducedPath
from flowmatch.paths.mixture import MixtureDiscretePath
from flowmatch.paths.product import ProductPath
from flowmatch.paths.schedulers import ConvexScheduler
from flowmatch.solvers._grid import forward_step_times
from flowmatch.solvers.discrete_step import discrete_step_for

Point = dict[str, Tensor]
DiscretePath = MixtureDiscretePath | MetricInducedPath | ConvexScheduler


class ProductSolver:
    """Sample a joint flow on a :class:`Product` of continuous and discrete factors.

    Args:
        field: ``field(x, t, **cond)`` with x a dict of factor tensors and t of shape [B];
            returns a dict with a tangent (ambient) vector for every continuous factor and
            posterior logits [..., K] for every discrete factor.
        geometry: the :class:`Product`.
        path: the :class:`ProductPath` the field was trained with; each discrete factor's path
            (a :class:`MixtureDiscretePath` or a :class:`MetricInducedPath`) decides its step.
            A mapping factor → path (or → ConvexScheduler, for a mixture path) works too.
    """

    def __init__(
        self,
        field: Callable[..., Mapping[str, Tensor]],
        geometry: Product,
        path: ProductPath | Mapping[str, DiscretePath],
    ) -> None:
        if not isinstance(geometry, Product):
            raise TypeError(f"geometry must be a Product, got {type(geometry).__name__}")
        if not callable(field):
            raise TypeError(f"field must be callable, got {type(field).__name__}")
        paths = {}
        for name in geometry.discrete_factors:
            if isinstance(path, ProductPath):
                if name not in path.paths:
                    raise ValueError(f"path has no path for the discrete factor {name!r}")
                paths[name] = path.paths[name]
            else:
                paths[name] = path.get(name)
        for name, g in geometry.discrete_factors.items():
            if not isinstance(g, Discrete):
                raise TypeError(f"discrete factor {name!r} must be a Discrete space")
            discrete_step_for(paths[name], g, factor=name)  # the path fits: raise now, not later
        self.field = field
        self.geometry = geometry
        self.discrete_paths: dict[str, DiscretePath] = paths
        self.nfe = 0

    def _call(self, x: Point, t: float, batch: int, device, dtype, cond) -> Mapping[str, Tensor]:
        self.nfe += 1
        out = self.field(x, torch.full((batch,), t, device=device, dtype=dtype), **cond)
        if validation_enabled():
            if not isinstance(out, Mapping) or set(out) != set(self.geometry.factors):
                got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
                raise ValueError(
                    f"the field must return a dict with the factors "
                    f"{sorted(self.geometry.factors)}, got {got}"
                )
        return out

    def _move(self, x: Tensor, u: Tensor, h: float, name: str, mode: str) -> Tensor:
        g = self.geometry.factors[name]
        v = g.proju(x, u)
        if mode == "expmap":
            return g.expmap(x, h * v)
        return g.projx(x + h * v)

    @torch.no_grad()
    def sample(
        self,
        x0: Mapping[str, Tensor],
        *,
        time_grid: Sequence[float] | Tensor | None = None,
        num_steps: int | None = None,
        step_size: float | None = None,
        method: Literal["euler", "midpoint"] = "euler",
        continuous_step: Literal["expmap", "projx"] = "expmap",
        batch_size: int | None = None,
        discrete_options: Mapping[str, Mapping[str, Any]] | None = None,
        return_intermediates: bool = False,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> Point | list[Point]:
        """Integrate every factor from ``time_grid[0]`` (default 0) to ``time_grid[-1]`` (1).

        ``x0`` is a dict of factor tensors (e.g. ``geometry.sample_base``). The field gets t of
        shape [``batch_size``] (default: the leading size of the first continuous factor, or
        of the first factor). ``discrete_options`` maps a discrete factor to keyword arguments
        of its step: :func:`~flowmatch.solvers.ctmc.ctmc_step` for a mixture path (``eta``,
        ``corrector``, ``temperature``, ``top_k``, ``top_p``, ``keep_unmasked``,
        ``unmasking``), :func:`~flowmatch.solvers.metric_induced.metric_induced_step` for a
        metric-induced path (``method``, ``temperature``, ``top_k``, ``top_p``); other keys
        are an error that names the factor and the allowed keys. With ``return_intermediates``
        returns the list of states at the ``time_grid`` points (the first is x0).
        """
        geometry = self.geometry
        geometry.check_point(x0, "x0")
        if method not in ("euler", "midpoint"):
            raise ValueError(f"method must be 'euler' or 'midpoint', got {method!r}")
        if continuous_step not in ("expmap", "projx"):
            raise ValueError(
                f"continuous_step must be 'expmap' or 'projx', got {continuous_step!r}"
            )
        options = dict(discrete_options or {})
        unknown = sorted(set(options) - set(geometry.discrete_factors))
        if unknown:
            raise ValueError(f"discrete_options names factors that are not discrete: {unknown}")
        steps = {k: discrete_step_for(p, geometry.factors[k], options.get(k), generator=generator,
                                      factor=k)
                 for k, p in self.discrete_paths.items()}
        times, marks = forward_step_times(time_grid, num_steps, step_size)
        marks = set(marks)

        continuous = list(geometry.continuous_factors)
        discrete = list(geometry.discrete_factors)
        first = x0[continuous[0]] if continuous else next(iter(x0.values()))
        batch = int(batch_size) if batch_size is not None else int(first.shape[0])
        t_dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        device = first.device

        x: Point = {k: (v.long() if k in discrete else v) for k, v in x0.items()}
        trajectory = [x] if return_intermediates else None
        self.nfe = 0
        for i, (t, t_next) in enumerate(zip(times, times[1:], strict=False)):
            h = t_next - t
            out = self._call(x, t, batch, device, t_dtype, cond)
            new: Point = {}
            if method == "midpoint" and continuous:
                half = dict(x)
                for k in continuous:
                    half[k] = self._move(x[k], out[k], 0.5 * h, k, continuous_step)
                out_mid = self._call(half, t + 0.5 * h, batch, device, t_dtype, cond)
                for k in continuous:
                    new[k] = self._move(x[k], out_mid[k], h, k, continuous_step)
            else:
                for k in continuous:
                    new[k] = self._move(x[k], out[k], h, k, continuous_step)
            for k in discrete:
                new[k] = steps[k](x[k], out[k], t, h)
            x = new
            if trajectory is not None and i + 1 in marks:
                trajectory.append(x)
        return trajectory if trajectory is not None else x

    def __repr__(self) -> str:
        return f"ProductSolver({self.geometry!r})"

"""Joint sampling of continuous, discrete and fixed factors on one time grid.

A point of a :class:`~flowmatch.geometry.Product` is a dict of tensors (or a
:class:`~flowmatch.geometry.ProductPoint`, whose segments group the rows of ragged factors —
the atoms of a batch of crystals — into samples), and the field is one network
``field(x, t, **cond) -> dict`` with one time per *sample*, t of shape [S], that returns, per
moving factor, a tangent vector (continuous factors) or posterior logits over the data
vocabulary (discrete factors). Every step from t to t + h runs the explicit Runge–Kutta loop of
:mod:`flowmatch.solvers.engine` on the whole point, each factor moving by its own motion:

* continuous factors along their geometry: the stage outputs are projected at the step's base
  point x by the *product's* ``proju`` (so a ``mean_free`` factor loses each sample's mean
  velocity), then x ← exp_x(h Σ b_i v_i) (``continuous_step="expmap"``) or projx(x + h Σ b_i v_i)
  (``"projx"``); stage points are formed the same way;
* discrete factors jump with the τ-leaping step their path provides (``path.jump_step``, see
  :mod:`flowmatch.solvers.discrete_step`): exact jump probabilities for a mixture path, the
  kinetic-optimal rates of a metric-induced one. They jump with the logits of the *first*
  stage and are held at the other stages (a τ-leaping step has no higher-order rule that keeps
  its jump probabilities exact);
* fixed factors (a path factor given as ``None``, e.g. the atom types of crystal structure
  prediction) never move, and the field need not return them.

With ``method="midpoint"`` (or "heun", "rk4") the continuous factors get that tableau's order;
Euler is one evaluation per step. All factors share the grid, so the sampled joint is coupled
through the network exactly as it was trained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from flowmatch._validation import validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.geometry.product import Product, ProductPoint
from flowmatch.solvers._grid import forward_steps
from flowmatch.solvers.discrete_step import JumpRule, discrete_step_for
from flowmatch.solvers.engine import (
    TABLEAUX,
    Factors,
    Fixed,
    Geodesic,
    Jump,
    Motion,
    Solution,
    float_steps,
    solve,
)

Point = dict[str, Tensor]
METHODS = tuple(TABLEAUX)


class ProductSolver:
    """Sample a joint flow on a :class:`Product` of continuous, discrete and fixed factors.

    Args:
        field: ``field(x, t, **cond)`` with x the point (a dict of factor tensors, or the
            :class:`ProductPoint` given as x0) and t of shape [S] (one time per sample);
            returns a dict with a tangent (ambient) vector for every moving continuous factor
            and posterior logits [..., K] for every moving discrete factor. Fixed factors may be
            omitted (they are ignored if present).
        geometry: the :class:`Product`.
        path: the ``ProductPath`` the field was trained with: each moving discrete factor's
            path provides its step (``jump_step``: a ``MixtureDiscretePath``, its
            ``ConvexScheduler``, a ``MetricInducedPath``), and the factors in ``path.fixed``
            (given as ``None``) are held at their x0 value. A mapping factor → path works too,
            with ``None`` marking a fixed factor; continuous factors need no entry.
    """

    def __init__(
        self,
        field: Callable[..., Mapping[str, Tensor]],
        geometry: Product,
        path: Any,
    ) -> None:
        if not isinstance(geometry, Product):
            raise TypeError(f"geometry must be a Product, got {type(geometry).__name__}")
        if not callable(field):
            raise TypeError(f"field must be callable, got {type(field).__name__}")
        if isinstance(path, Mapping):
            fixed = frozenset(k for k, p in path.items() if p is None)
            paths = {k: p for k, p in path.items() if p is not None}
            of_path = False
        else:
            # a ProductPath (duck-typed: flowmatch.solvers does not import flowmatch.paths)
            fixed = frozenset(getattr(path, "fixed", frozenset()))
            paths = getattr(path, "paths", None)
            if not isinstance(paths, Mapping):
                raise TypeError("path must be a ProductPath or a mapping factor → path, got "
                                f"{type(path).__name__}")
            of_path = True
        unknown = sorted(fixed - set(geometry.factors))
        if unknown:
            raise ValueError(f"path fixes {unknown}, which are not factors of {geometry}")
        rules: dict[str, JumpRule] = {}
        for name, g in geometry.discrete_factors.items():
            if name in fixed:
                continue
            if not isinstance(g, Discrete):
                raise TypeError(f"discrete factor {name!r} must be a Discrete space")
            if of_path and name not in paths:
                raise ValueError(f"path has no path for the discrete factor {name!r}")
            rules[name] = paths.get(name)
            discrete_step_for(rules[name], g, factor=name)  # the path fits: raise now, not later
        self.field = field
        self.geometry = geometry
        self.discrete_paths: dict[str, JumpRule] = rules
        self.fixed: frozenset[str] = fixed
        self.moving: tuple[str, ...] = tuple(k for k in geometry.factors if k not in fixed)
        self.nfe = 0

    def _check_output(self, out: Any) -> None:
        keys = set(out) if isinstance(out, Mapping) else None
        if keys is None or not set(self.moving) <= keys <= set(self.geometry.factors):
            got = sorted(out) if isinstance(out, Mapping) else type(out).__name__
            fixed = f" (the fixed {sorted(self.fixed)} may be omitted)" if self.fixed else ""
            raise ValueError(f"the field must return a dict with the factors "
                             f"{sorted(self.moving)}{fixed}, got {got}")

    @torch.no_grad()
    def sample(
        self,
        x0: Mapping[str, Tensor],
        *,
        time_grid: Sequence[float] | Tensor | None = None,
        num_steps: int | None = None,
        step_size: float | None = None,
        method: Literal["euler", "midpoint", "heun", "rk4"] = "euler",
        continuous_step: Literal["expmap", "projx"] = "expmap",
        batch_size: int | None = None,
        discrete_options: Mapping[str, Mapping[str, Any]] | None = None,
        return_intermediates: bool = False,
        generator: torch.Generator | None = None,
        return_solution: bool = False,
        **cond: Any,
    ) -> Point | list[Point] | Solution:
        """Integrate every factor from ``time_grid[0]`` (default 0) to ``time_grid[-1]`` (1).

        ``x0`` is a dict of factor tensors (e.g. ``geometry.sample_base``) or a
        :class:`ProductPoint`, whose layout every state keeps. The field gets t of shape
        [``batch_size``] (default: the number of samples of a ProductPoint with segments,
        otherwise the leading size of the first continuous factor, or of the first factor).
        ``discrete_options`` maps a moving discrete factor to keyword arguments of its step:
        :func:`~flowmatch.solvers.ctmc.ctmc_step` for a mixture path (``eta``, ``corrector``,
        ``temperature``, ``top_k``, ``top_p``, ``keep_unmasked``, ``unmasking``),
        :func:`~flowmatch.solvers.metric_induced.metric_induced_step` for a metric-induced path
        (``method``, ``temperature``, ``top_k``, ``top_p``); other keys are an error that names
        the factor and the allowed keys. With ``return_intermediates`` returns the list of
        states at the ``time_grid`` points (the first is x0); ``return_solution`` wraps the
        result in a :class:`~flowmatch.solvers.engine.Solution` with this call's ``nfe``.
        """
        geometry = self.geometry
        geometry.check_point(x0, "x0")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if continuous_step not in ("expmap", "projx"):
            raise ValueError(
                f"continuous_step must be 'expmap' or 'projx', got {continuous_step!r}"
            )
        options = dict(discrete_options or {})
        unknown = sorted(set(options) - set(self.discrete_paths))
        if unknown:
            raise ValueError(f"discrete_options names factors that are not discrete (or are "
                             f"fixed): {unknown}")
        steps = {k: discrete_step_for(p, geometry.factors[k], options.get(k), generator=generator,
                                      factor=k)
                 for k, p in self.discrete_paths.items()}
        starts, hs, ends, marks = forward_steps(time_grid, num_steps, step_size)

        continuous = list(geometry.continuous_factors)
        moving_continuous = [k for k in continuous if k not in self.fixed]
        first = x0[continuous[0]] if continuous else next(iter(x0.values()))
        if batch_size is not None:
            batch = int(batch_size)
        elif isinstance(x0, ProductPoint) and x0.segments is not None:
            batch = x0.num_samples
        else:
            batch = int(first.shape[0])
        t_dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        device = first.device

        motions: dict[str, Motion] = {}
        for k, g in geometry.factors.items():
            if k in self.fixed:
                motions[k] = Fixed()
            elif k in steps:
                motions[k] = Jump(steps[k])
            else:
                motions[k] = Geodesic(g, continuous_step)
        motion = Factors(motions, geometry.proju, tangent_factors=continuous)
        data = {k: (v.long() if k in steps else v) for k, v in x0.items()}
        x = x0.like(data) if isinstance(x0, ProductPoint) else data

        field, validate = self.field, validation_enabled()
        self.nfe = 0

        def velocity(y: Point, t: float) -> Mapping[str, Tensor]:
            self.nfe += 1
            out = field(y, torch.full((batch,), t, device=device, dtype=t_dtype), **cond)
            if validate:
                self._check_output(out)
            return out

        # with no moving continuous factor the later stages would feed nothing: one per step
        tableau = TABLEAUX[method if moving_continuous else "euler"]
        sol = solve(velocity, x, float_steps(starts, hs, ends, tableau,
                                             marks if return_intermediates else None), motion)
        out = [x, *sol.trajectory] if return_intermediates else sol.state
        return Solution(out, sol.nfe, sol.num_steps, sol.times) if return_solution else out

    def __repr__(self) -> str:
        return f"ProductSolver({self.geometry!r})"

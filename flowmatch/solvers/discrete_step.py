"""The step-rule protocol of discrete factors, and the grid loop of the single-factor samplers.

A discrete factor advances by a *step* ``step(x_t, logits, t, h) -> x_{t+h}``: tokens int64
(any shape), the posterior logits [*x_t.shape, K] at (x_t, t), and floats t, h with h > 0 and
t + h ≤ 1. Which step applies is the path's business, not the solver's: a discrete path
provides its own through the :class:`JumpRule` protocol,

    path.jump_step(space, options=None, *, generator=None, checked=True, factor=None) -> step

— :class:`~flowmatch.paths.mixture.MixtureDiscretePath` (and a bare
:class:`~flowmatch.paths.schedulers.ConvexScheduler`, which stands for the mixture path with
that κ) returns :class:`~flowmatch.solvers.ctmc.MixtureJump` (options
:data:`CTMC_STEP_OPTIONS`), :class:`~flowmatch.paths.metric_induced.MetricInducedPath` returns
:class:`~flowmatch.solvers.metric_induced.MetricInducedJump` (options
:data:`METRIC_INDUCED_STEP_OPTIONS`). The solvers only duck-type on that method
(:func:`discrete_step_for`), so ``flowmatch.solvers`` imports nothing from ``flowmatch.paths``;
a new discrete path plugs in by defining ``jump_step``.

:class:`~flowmatch.solvers.ctmc.DiscreteSolver` and
:class:`~flowmatch.solvers.metric_induced.MetricInducedSolver` share the grid loop
:meth:`_TokenChainSolver._run_chain`, which runs on the engine
(:mod:`flowmatch.solvers.engine`) with the :class:`~flowmatch.solvers.engine.Jump` motion;
:class:`~flowmatch.solvers.product.ProductSolver` uses the same steps factor by factor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from flowmatch._validation import validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.solvers._grid import forward_steps
from flowmatch.solvers.engine import TABLEAUX, Jump, Solution, float_steps, solve

__all__ = ["discrete_step_for", "DiscreteStep", "JumpRule", "CTMC_STEP_OPTIONS",
           "METRIC_INDUCED_STEP_OPTIONS", "check_step_options"]

DiscreteStep = Callable[[Tensor, Tensor, float, float], Tensor]
"""``step(x_t, logits, t, h) -> x_{t+h}``: one τ-leaping step of a discrete factor."""

CTMC_STEP_OPTIONS = ("eta", "corrector", "temperature", "top_k", "top_p", "keep_unmasked",
                     "unmasking")
"""Keyword options of :func:`~flowmatch.solvers.ctmc.ctmc_step` (mixture paths)."""

METRIC_INDUCED_STEP_OPTIONS = ("method", "temperature", "top_k", "top_p")
"""Keyword options of :func:`~flowmatch.solvers.metric_induced.metric_induced_step`."""


@runtime_checkable
class JumpRule(Protocol):
    """Anything that provides the τ-leaping step of a discrete factor (a discrete path)."""

    def jump_step(self, space: Discrete, options: Mapping[str, Any] | None = None, *,
                  generator: torch.Generator | None = None, checked: bool = True,
                  factor: str | None = None) -> DiscreteStep: ...


def _where(factor: str | None) -> str:
    return f"discrete factor {factor!r}" if factor is not None else "the discrete path"


def check_space(space: Any, factor: str | None = None) -> None:
    """Raise TypeError unless ``space`` is a :class:`Discrete` space."""
    if not isinstance(space, Discrete):
        raise TypeError(f"{_where(factor)} must live on a Discrete space, got "
                        f"{type(space).__name__}")


def check_step_options(options: Mapping[str, Any] | None, allowed: Sequence[str], kind: str,
                       factor: str | None = None) -> dict[str, Any]:
    """``options`` as a dict, or a ValueError that names ``factor``, ``kind`` and the allowed
    keys when it holds other keys."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        label = f"discrete_options[{factor!r}]" if factor is not None else "options"
        raise ValueError(f"{label}: {unknown} are not options of the {kind} step; allowed "
                         f"keys: {list(allowed)}")
    return options


def discrete_step_for(
    path: Any,
    space: Discrete,
    options: Mapping[str, Any] | None = None,
    *,
    generator: torch.Generator | None = None,
    checked: bool = True,
    factor: str | None = None,
) -> DiscreteStep:
    """The step ``step(x_t, logits, t, h)`` that ``path`` provides on ``space`` (:class:`JumpRule`).

    ``path``: anything with a ``jump_step`` method — a
    :class:`~flowmatch.paths.mixture.MixtureDiscretePath`, a bare
    :class:`~flowmatch.paths.schedulers.ConvexScheduler` (a mixture path's) or a
    :class:`~flowmatch.paths.metric_induced.MetricInducedPath`; anything else is a TypeError.
    ``options`` must be a subset of that step's keywords (:data:`CTMC_STEP_OPTIONS` or
    :data:`METRIC_INDUCED_STEP_OPTIONS`); anything else is a ``ValueError`` that names
    ``factor`` (a product's factor name, for the message) and the allowed keys. ``generator``
    drives every draw of the step.

    ``checked=True`` returns the public step, which validates t, h, x_t and the logits on every
    call; ``checked=False`` skips those checks, for grid loops that check x0 and the field's
    logits themselves (the draws are the same).
    """
    check_space(space, factor)
    make = getattr(path, "jump_step", None)
    if not callable(make):
        # not duck-typed on a `scheduler` attribute: an AffinePath has a convex one too
        raise TypeError(f"{_where(factor)} needs a path that provides its jump step "
                        f"(jump_step): a MixtureDiscretePath (or its ConvexScheduler) or a "
                        f"MetricInducedPath, got {type(path).__name__}")
    return make(space, options, generator=generator, checked=checked, factor=factor)


class _TokenChainSolver:
    """The grid loop shared by the single-factor discrete solvers.

    Subclasses set ``field`` (``field(x_t, t, **cond) -> logits``), ``space`` (a Discrete) and
    ``nfe``; :meth:`_run_chain` counts the network evaluations of the last call in ``nfe``.
    """

    field: Callable[..., Tensor]
    space: Discrete
    nfe: int

    def _run_chain(
        self,
        x0: Tensor,
        step: DiscreteStep,
        *,
        time_grid: Sequence[float] | Tensor | None,
        num_steps: int | None,
        step_size: float | None,
        return_intermediates: bool,
        return_solution: bool = False,
        cond: Mapping[str, Any],
    ) -> Tensor | Solution:
        """Run ``step`` over the grid from ``x0`` (tokens at ``time_grid[0]``).

        One field evaluation per step at the step's left end, with t of shape [B] (the
        default dtype); the logits are checked against the tokens when validation is on. With
        ``return_intermediates`` the states at the ``time_grid`` points are stacked,
        [len(time_grid), *x0.shape]; otherwise the last state is returned (in a
        :class:`~flowmatch.solvers.engine.Solution` with ``return_solution``).
        """
        space = self.space
        space.check_point(x0, "x0")
        if x0.dim() == 0:
            raise ValueError("x0 must have a leading batch dimension, got a scalar")
        starts, hs, ends, marks = forward_steps(time_grid, num_steps, step_size)
        x = x0.long()
        batch = x.shape[0]
        self.nfe = 0
        validate = validation_enabled()
        field = self.field

        def logits_at(y: Tensor, t: float) -> Tensor:
            logits = field(y, torch.full((batch,), t, device=y.device), **cond)
            self.nfe += 1
            if validate:
                space.check_logits(logits, y, f"the field's logits at t={t:.4g}")
            return logits

        sol = solve(logits_at, x, float_steps(starts, hs, ends, TABLEAUX["euler"],
                                              marks if return_intermediates else None),
                    Jump(step))
        out = torch.stack([x, *sol.trajectory]) if return_intermediates else sol.state
        return Solution(out, sol.nfe, sol.num_steps, sol.times) if return_solution else out

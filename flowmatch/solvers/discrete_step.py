"""One τ-leaping step per discrete path, and the grid loop of the single-factor discrete solvers.

A discrete factor advances by a *step* ``step(x_t, logits, t, h) -> x_{t+h}``: tokens int64
(any shape), the posterior logits [*x_t.shape, K] at (x_t, t), and floats t, h with h > 0 and
t + h ≤ 1. Which step depends on the path the posterior network was trained with, and
:func:`discrete_step_for` is the one place that decides it:

* :class:`~flowmatch.paths.mixture.MixtureDiscretePath`, or a bare
  :class:`~flowmatch.paths.schedulers.ConvexScheduler` →
  :func:`~flowmatch.solvers.ctmc.ctmc_step` (options :data:`CTMC_STEP_OPTIONS`);
* :class:`~flowmatch.paths.metric_induced.MetricInducedPath` →
  :func:`~flowmatch.solvers.metric_induced.metric_induced_step` (options
  :data:`METRIC_INDUCED_STEP_OPTIONS`).

:class:`~flowmatch.solvers.ctmc.DiscreteSolver`,
:class:`~flowmatch.solvers.metric_induced.MetricInducedSolver` and
:class:`~flowmatch.solvers.product.ProductSolver` all build their steps here; the first two also
share the grid loop :meth:`_TokenChainSolver._run_chain`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from flowmatch._validation import validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.solvers._grid import forward_step_times

__all__ = ["discrete_step_for", "DiscreteStep", "CTMC_STEP_OPTIONS",
           "METRIC_INDUCED_STEP_OPTIONS"]

DiscreteStep = Callable[[Tensor, Tensor, float, float], Tensor]
"""``step(x_t, logits, t, h) -> x_{t+h}``: one τ-leaping step of a discrete factor."""

CTMC_STEP_OPTIONS = ("eta", "corrector", "temperature", "top_k", "top_p", "keep_unmasked",
                     "unmasking")
"""Keyword options of :func:`~flowmatch.solvers.ctmc.ctmc_step` (mixture paths)."""

METRIC_INDUCED_STEP_OPTIONS = ("method", "temperature", "top_k", "top_p")
"""Keyword options of :func:`~flowmatch.solvers.metric_induced.metric_induced_step`."""


def discrete_step_for(
    path: Any,
    space: Discrete,
    options: Mapping[str, Any] | None = None,
    *,
    generator: torch.Generator | None = None,
    checked: bool = True,
    factor: str | None = None,
) -> DiscreteStep:
    """The step ``step(x_t, logits, t, h)`` of ``path`` on ``space`` with keyword ``options``.

    ``path``: a :class:`~flowmatch.paths.metric_induced.MetricInducedPath`, a
    :class:`~flowmatch.paths.mixture.MixtureDiscretePath` or a bare
    :class:`~flowmatch.paths.schedulers.ConvexScheduler` (a mixture path's). ``options`` must
    be a subset of that step's keywords (:data:`CTMC_STEP_OPTIONS` or
    :data:`METRIC_INDUCED_STEP_OPTIONS`); anything else is a ``ValueError`` that names
    ``factor`` (a product's factor name, for the message) and the allowed keys. ``generator``
    drives every draw of the step.

    ``checked=True`` returns the public step, which validates t, h, x_t and the logits on every
    call; ``checked=False`` skips those checks, for grid loops that check x0 and the field's
    logits themselves (the draws are the same).
    """
    # imported here: ctmc and metric_induced import this module for the grid loop
    from flowmatch.paths.metric_induced import MetricInducedPath
    from flowmatch.paths.mixture import MixtureDiscretePath
    from flowmatch.paths.schedulers import ConvexScheduler
    from flowmatch.solvers import ctmc, metric_induced

    where = f"discrete factor {factor!r}" if factor is not None else "the discrete path"
    if not isinstance(space, Discrete):
        raise TypeError(f"{where} must live on a Discrete space, got {type(space).__name__}")
    options = dict(options or {})
    if isinstance(path, MetricInducedPath):
        kind, allowed = "MetricInducedPath", METRIC_INDUCED_STEP_OPTIONS
    elif isinstance(path, (MixtureDiscretePath, ConvexScheduler)):
        scheduler = path.scheduler if isinstance(path, MixtureDiscretePath) else path
        kind, allowed = "mixture path", CTMC_STEP_OPTIONS
    else:
        # not duck-typed on a `scheduler` attribute: an AffinePath has a convex one too
        raise TypeError(f"{where} needs a MixtureDiscretePath (or its ConvexScheduler) or a "
                        f"MetricInducedPath, got {type(path).__name__}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        label = f"discrete_options[{factor!r}]" if factor is not None else "options"
        raise ValueError(f"{label}: {unknown} are not options of the {kind} step; allowed "
                         f"keys: {list(allowed)}")

    if kind == "MetricInducedPath":
        path.check_space(space)
        method = options.get("method", "marginal")
        if method not in metric_induced.STEP_METHODS:
            raise ValueError(f"method must be one of {metric_induced.STEP_METHODS}, got "
                             f"{method!r}")
        if checked:
            return functools.partial(metric_induced.metric_induced_step, path=path, space=space,
                                     generator=generator, **options)
        opts = {"method": "marginal", "temperature": 1.0, "top_k": None, "top_p": None,
                **options}
        return functools.partial(metric_induced._step, path=path, generator=generator, **opts)

    if checked:
        return functools.partial(ctmc.ctmc_step, scheduler=scheduler, space=space,
                                 generator=generator, **options)
    opts = {"eta": 0.0, "corrector": None, "temperature": 1.0, "top_k": None, "top_p": None,
            "keep_unmasked": True, "unmasking": "random", **options}
    return functools.partial(ctmc._step, scheduler=scheduler, space=space, generator=generator,
                             **opts)


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
        cond: Mapping[str, Any],
    ) -> Tensor:
        """Run ``step`` over the grid from ``x0`` (tokens at ``time_grid[0]``).

        One field evaluation per step at the step's left end, with t of shape [B] (the
        default dtype); the logits are checked against the tokens when validation is on. With
        ``return_intermediates`` the states at the ``time_grid`` points are stacked,
        [len(time_grid), *x0.shape]; otherwise the last state is returned.
        """
        space = self.space
        space.check_point(x0, "x0")
        if x0.dim() == 0:
            raise ValueError("x0 must have a leading batch dimension, got a scalar")
        times, marks = forward_step_times(time_grid, num_steps, step_size)
        x = x0.long()
        out = [x] if return_intermediates else None
        batch = x.shape[0]
        self.nfe = 0
        validate = validation_enabled()
        for i in range(len(times) - 1):
            t, t_next = times[i], times[i + 1]
            logits = self.field(x, torch.full((batch,), t, device=x.device), **cond)
            self.nfe += 1
            if validate:
                space.check_logits(logits, x, f"the field's logits at t={t:.4g}")
            x = step(x, logits, t, t_next - t)
            if out is not None and i + 1 in marks:
                out.append(x)
        return torch.stack(out) if out is not None else x

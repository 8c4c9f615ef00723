"""Sampling and likelihoods of a learned flow with torchdiffeq's ODE integrators.

A velocity field u(x, t) defines the flow ẋ_t = u(x_t, t). ``ODESolver.sample`` integrates it
along a time grid (t = 0 is the source/noise, t = 1 the data; decreasing grids integrate
backwards, data → noise). ``ODESolver.log_likelihood`` integrates the flow together with the
instantaneous change of variables (Chen et al., 2018),

    d/dt log p_t(x_t) = −div u(x_t, t),
    so  log p_1(x_1) = log p_0(x_0) − ∫_0^1 div u(x_t, t) dt,

from t = 1 down to t = 0 (see :mod:`flowmatch.solvers.likelihood`).

Fixed-grid methods ("euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams",
"implicit_adams") take one step per grid interval unless ``step_size`` or ``num_steps`` is
given; adaptive ones ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun") choose their
own steps from ``atol``/``rtol`` and report their states at the grid points. "euler",
"midpoint" and "rk4" (the classical tableau) run in the lean explicit Runge–Kutta loop of
:mod:`flowmatch.solvers.engine`; every other method is torchdiffeq's ``odeint``. Pass
``return_solution=True`` to get a :class:`~flowmatch.solvers.engine.Solution` that carries the
call's own number of field evaluations (``nfe``), steps and step times with its result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flowmatch._validation import check_finite, validation_enabled
from flowmatch.solvers._grid import TimeGrid, check_time_grid, step_grid
from flowmatch.solvers.engine import TABLEAUX, Flat, Solution, node_steps, solve, solve_adaptive

FIXED_METHODS: dict[str, int | None] = {
    # method -> field evaluations per step (None: varies, Adams start-up and corrector)
    "euler": 1,
    "midpoint": 2,
    "heun2": 2,
    "heun3": 3,
    "rk4": 4,
    "explicit_adams": None,
    "implicit_adams": None,
}
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
METHODS: tuple[str, ...] = (*FIXED_METHODS, *ADAPTIVE_METHODS)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def as_time_grid(
    time_grid: TimeGrid | None,
    default: tuple[float, ...],
    *,
    dtype: torch.dtype,
    device: torch.device,
    allow_any_time: bool = False,
) -> Tensor:
    """Validate a time grid and return it as a 1-D tensor of ``dtype`` on ``device``.

    A grid is a strictly monotone (increasing or decreasing) sequence of at least two finite
    times, in [0, 1] unless ``allow_any_time``.
    """
    if time_grid is None:
        time_grid = default
    grid = torch.as_tensor(time_grid, dtype=dtype, device=device)
    if validation_enabled():
        check_time_grid(grid, allow_any_time=allow_any_time, any_time_hint=True)
    return grid


def solver_options(method: str, grid: Tensor, step_size: float | None,
                   num_steps: int | None) -> dict[str, Any]:
    """Integration options for ``method``: {"nodes": step nodes} for a fixed-grid method given
    ``step_size``/``num_steps``, else {}; rejects step arguments for adaptive methods."""
    if method in ADAPTIVE_METHODS:
        if step_size is not None or num_steps is not None:
            raise ValueError(
                f"step_size/num_steps apply to fixed-grid methods ({', '.join(FIXED_METHODS)}); "
                f"the adaptive method {method!r} chooses its steps from atol and rtol"
            )
        return {}
    nodes = step_grid(grid, step_size, num_steps)
    return {} if nodes is None else {"nodes": nodes}


def torchdiffeq_options(
    options: dict[str, Any], method: str, grid: Tensor
) -> dict[str, Any]:
    """Translate our options into torchdiffeq's ``options`` for ``odeint``.

    Adaptive methods are told to step exactly onto every grid time (``step_t``): otherwise
    torchdiffeq steps past a grid time and reads the state off its dense-output interpolant,
    whose lower order puts a floor under dopri8's error (≈1e-6 on ẋ = −t x at tolerance 1e-9,
    against ≈2e-10 when stepping onto the grid).
    """
    if method in ADAPTIVE_METHODS:
        return {"step_t": grid}
    if "nodes" not in options:
        return {}
    nodes = options["nodes"]
    return {"grid_constructor": lambda _f, _y0, _t: nodes}


class _Velocity:
    """torchdiffeq right-hand side (t, x) ↦ field(x, t [B], **cond), counting evaluations.

    Deliberately bare: it runs once per stage, so no checks and no copies (``expand`` is a
    view).
    """

    __slots__ = ("field", "cond", "batch", "nfe")

    def __init__(self, field: Callable[..., Tensor], cond: dict[str, Any], batch: int) -> None:
        self.field = field
        self.cond = cond
        self.batch = batch
        self.nfe = 0

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.field(x, t.expand(self.batch), **self.cond)


# Explicit Runge–Kutta methods integrated by the engine's loop rather than torchdiffeq's: these
# are the methods sampling is timed with, and torchdiffeq's wrappers (a module call, a time cast
# and an |x| copy per evaluation, a generic tableau step) cost 20–30 % on top of a small
# network's forward pass. "rk4" is the classical tableau (torchdiffeq's "rk4" is the 3/8 rule,
# also of order 4).
EXPLICIT_RK: tuple[str, ...] = ("euler", "midpoint", "rk4")


def grid_flags(nodes: Tensor, grid: Tensor) -> list[bool]:
    """Which integration nodes are time-grid points (they are nodes exactly, see step_grid)."""
    wanted = set(grid.tolist())
    return [v in wanted for v in nodes.tolist()]


def check_x(name: str, x: Tensor) -> None:
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty leading batch dimension, got shape "
                         f"{tuple(x.shape)}")
    check_finite(name, x)


class ODESolver:
    """Integrate the flow of a velocity field ``field(x, t, **cond)``.

    ``field`` is any callable (typically a ``torch.nn.Module``) taking points x [B, ...] and
    times t [B] (dtype of x) and returning a tangent vector shaped like x. Conditioning keyword
    arguments given to :meth:`sample` / :meth:`log_likelihood` are passed to it unchanged, so a
    misspelled keyword raises the field's own ``TypeError``.

    Attributes:
        nfe: number of field evaluations in the last call (for the likelihood, each evaluation
            also computes the divergence).
    """

    def __init__(self, field: Callable[..., Tensor]) -> None:
        if not callable(field):
            raise ValueError(f"field must be callable, got {type(field).__name__}")
        self.field = field
        self.nfe = 0

    def sample(
        self,
        x0: Tensor,
        *,
        time_grid: TimeGrid | None = None,
        method: str = "euler",
        step_size: float | None = None,
        num_steps: int | None = None,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        return_intermediates: bool = False,
        enable_grad: bool = False,
        allow_any_time: bool = False,
        return_solution: bool = False,
        **cond: Any,
    ) -> Tensor | Solution:
        """Integrate ẋ = field(x, t) from ``time_grid[0]`` to ``time_grid[-1]`` starting at x0.

        Args:
            x0: initial points [B, ...] at time ``time_grid[0]``.
            time_grid: strictly monotone times (default [0, 1]); decreasing integrates
                backwards. Fixed-grid methods take one step per interval unless ``step_size``
                or ``num_steps`` is given.
            method: a torchdiffeq method name (see ``METHODS``).
            step_size: fixed step length (fixed-grid methods), starting at ``time_grid[0]``;
                the last step is shortened to end on ``time_grid[-1]``.
            num_steps: number of equal steps over the whole span instead of ``step_size``.
                Interior grid times are always step nodes (see :func:`step_grid`): each one
                that falls inside a step splits it, adding one step.
            atol, rtol: tolerances of adaptive methods (and of the implicit Adams corrector).
            return_intermediates: return the states at every grid time, [len(grid), B, ...].
            enable_grad: keep the autograd graph (default: run under ``torch.no_grad``).
            allow_any_time: accept grid times outside [0, 1].
            return_solution: return a :class:`~flowmatch.solvers.engine.Solution` whose
                ``state`` is the usual result and which carries this call's ``nfe``, its
                number of steps and its step times.
            **cond: conditioning passed to the field.

        Returns:
            x at ``time_grid[-1]`` [B, ...], or all grid states [len(grid), B, ...].
        """
        check_method(method)
        check_x("x0", x0)
        grid = as_time_grid(time_grid, (0.0, 1.0), dtype=x0.dtype, device=x0.device,
                            allow_any_time=allow_any_time)
        options = solver_options(method, grid, step_size, num_steps)
        self.nfe = 0
        with torch.set_grad_enabled(enable_grad):
            if method in EXPLICIT_RK:
                nodes = options.get("nodes", grid)
                field = self.field
                keep = grid_flags(nodes, grid)[1:] if return_intermediates else None
                f = field if not cond else lambda x, t: field(x, t, **cond)
                sol = solve(f, x0, node_steps(nodes, TABLEAUX[method], x0.shape[0], keep), Flat())
                self.nfe = sol.nfe
                out = torch.stack([x0, *sol.trajectory], dim=0) if return_intermediates \
                    else sol.state
            else:
                rhs = _Velocity(self.field, cond, x0.shape[0])
                try:
                    sol = solve_adaptive(rhs, x0, grid, method=method, atol=atol, rtol=rtol,
                                         options=torchdiffeq_options(options, method, grid))
                except AssertionError as err:
                    # torchdiffeq's step control asserts when the step shrinks to nothing,
                    # which is what a diverging field does to it
                    if "underflow in dt" not in str(err):
                        raise
                    raise FloatingPointError(
                        f"{method} could not integrate the field: its step size underflowed "
                        f"after {rhs.nfe} evaluations (the field is probably not finite or "
                        "diverges); check the model, or try a fixed-step method") from None
                finally:
                    self.nfe = rhs.nfe
                out = sol.state if return_intermediates else sol.state[-1]
        if validation_enabled() and not bool(torch.isfinite(out).all()):
            # one check per call, not per step: a diverging field must not hand back inf
            raise FloatingPointError(
                f"the {method} solution is not finite ({int((~torch.isfinite(out)).sum())} "
                f"entries NaN or inf after {self.nfe} field evaluations): the field diverged "
                "or returned non-finite values; check the model or use smaller steps")
        if return_solution:
            return Solution(out, sol.nfe, sol.num_steps, sol.times)
        return out

    def log_likelihood(
        self,
        x1: Tensor,
        log_p0: Callable[[Tensor], Tensor],
        *,
        time_grid: TimeGrid | None = None,
        method: str = "euler",
        step_size: float | None = None,
        num_steps: int | None = None,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        exact_divergence: bool = True,
        probe: str = "rademacher",
        generator: torch.Generator | None = None,
        enable_grad: bool = False,
        allow_any_time: bool = False,
        return_solution: bool = False,
        **cond: Any,
    ) -> tuple[Tensor, Tensor] | Solution:
        """log-density of x1 under the flow that pushes ``log_p0`` forward.

        Integrates x together with ℓ̇ = div field(x, t) from ``time_grid[0]`` (default 1) to
        ``time_grid[-1]`` (default 0) and returns log p(x at grid start) = log_p0(x_end) + ℓ_end.
        With the default grid [1, 0] this is log p1(x1) = log p0(x0) − ∫_0^1 div u dt.

        Args:
            x1: data points [B, ...] (any event shape).
            log_p0: log-density of the distribution at ``time_grid[-1]``, x [B, ...] -> [B].
            exact_divergence: exact trace (one backward pass per coordinate per evaluation) or
                Hutchinson with one probe drawn per trajectory and held fixed.
            probe: Hutchinson probe law, "rademacher" or "gaussian".
            generator: random generator for the probe.
            enable_grad: keep the graph, so log_p1 can be differentiated with respect to the
                field's parameters and to x1 (memory grows with the number of steps).
            Other arguments as in :meth:`sample`.

        Returns:
            (x0 [B, ...] at ``time_grid[-1]``, log_p1 [B]); with ``return_solution`` a
            :class:`~flowmatch.solvers.engine.Solution` with that pair as ``state``.
        """
        from flowmatch.solvers.likelihood import integrate_log_likelihood

        check_method(method)
        check_x("x1", x1)
        if not callable(log_p0):
            raise ValueError(f"log_p0 must be a callable x -> log-density [B], "
                             f"got {type(log_p0).__name__}")
        grid = as_time_grid(time_grid, (1.0, 0.0), dtype=x1.dtype, device=x1.device,
                            allow_any_time=allow_any_time)
        options = solver_options(method, grid, step_size, num_steps)
        sol = integrate_log_likelihood(
            self.field, x1, log_p0, grid, method=method, options=options, atol=atol, rtol=rtol,
            exact=exact_divergence, probe=probe, generator=generator, enable_grad=enable_grad,
            cond=cond,
        )
        self.nfe = sol.nfe
        return sol if return_solution else sol.state

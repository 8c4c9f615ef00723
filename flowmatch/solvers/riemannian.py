"""Fixed-step ODE integration on a manifold, and the Riemannian change of variables.

The flow ẋ = v(x, t) of a tangent velocity field is integrated with an explicit Runge–Kutta
tableau (Euler, midpoint, Heun, classical RK4) by the engine of :mod:`flowmatch.solvers.engine`,
whose state moves in one of two ways (its ``Projected`` and ``ExpMap`` motions):

* ``step="projx"`` (projection method). The stages and the update are taken in the ambient
  coordinates and mapped back with ``geometry.projx``. The field is always used through
  F(y) = P_{π(y)} f(π(y)) (π = projx, P = proju), a smooth extension of the tangent field off
  the manifold for which the manifold is invariant, so the scheme is the ambient RK method for F
  followed by a projection: it keeps the order of the tableau (Hairer, Lubich & Wanner,
  *Geometric Numerical Integration*, §IV.4).

* ``step="expmap"`` (RK in normal coordinates). Each step works in the chart z ↦ exp_x(z) of
  T_x at the current point x: stage points are y_i = exp_x(h Σ_j a_ij k̃_j), the field value
  k_i = P_{y_i} f(y_i, t + c_i h) is pulled back to T_x by the differential of the chart
  inverse, k̃_i = D log_x(y_i)[k_i] (a forward-mode JVP; k̃_1 = k_1 needs none), and the step
  ends at exp_x(h Σ_i b_i k̃_i). This is the RK method applied to the ODE written in normal
  coordinates, so it too keeps the tableau's order, and points stay on the manifold by
  construction. Euler in this mode is geodesic Euler, x ← exp_x(h v(x, t)), with no JVP.

Both directions of time work: a decreasing grid integrates backwards (h < 0).

Likelihoods can also be integrated with torchdiffeq's error-controlled methods ("dopri5",
"dopri8", "bosh3"), on the ambient ODE of the same extension F followed by one projection: the
step size follows the field, which for sharp learned densities changes fastest just before
t = 1, where a uniform grid can over-state log p by nats.

Likelihood. For a density p_t transported by the flow, d/dt log p_t(x_t) = −div v(x_t, t), so

    log p_1(x_1) = log p_0(x_0) − ∫_0^1 div v(x_t, t) dt,

integrated from t = 1 down to 0 together with x. The divergence of a tangent field on an
embedded submanifold whose Levi-Civita connection is the projected ambient derivative
(∇_u v = P(Dv · u): the sphere and SO(3) with the induced metric, the flat torus, Euclidean
space, and the Lorentz hyperboloid with its Minkowski projection) is the trace of the linear map
u ↦ P J u on T_x, where J is the ambient Jacobian of v; since P is idempotent this is
tr(P J P) = tr(J P) in ambient coordinates, computed by :mod:`flowmatch.solvers.divergence`
(exactly, Σ_i e_iᵀ J (P e_i), one vector–Jacobian product per ambient axis, or with one
Gaussian Hutchinson probe ε per trajectory, εᵀ J (P ε)). Only derivatives along T_x enter, so
how the network extends the field off the manifold does not matter; P need not be symmetric.

Metric correction. When the point coordinates are a chart in which the metric is G(x) (not
the one induced by the coordinates), div_g v = tr(J) + ½ ⟨∇ log det G, v⟩, whose time integral
along the trajectory is ∫ tr J dt + ½ [log det G(x_1) − log det G(x_0)]. The geometry reports
log det G through ``metric_logdet`` (zero for induced metrics), and we add that boundary term
to the integrated divergence;
``base_log_prob`` is a density with respect to the Riemannian volume throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from flowmatch._validation import check_finite, validation_enabled
from flowmatch.geometry.base import Geometry
from flowmatch.solvers._grid import grid_as_floats, interval_steps, steps_per_interval
from flowmatch.solvers.divergence import value_and_divergence
from flowmatch.solvers.engine import (
    TABLEAUX,
    Accumulate,
    ExpMap,
    Motion,
    Projected,
    Solution,
    TupleMotion,
    float_steps,
    solve,
    solve_adaptive,
)

StepMode = Literal["projx", "expmap"]

# torchdiffeq's error-controlled methods, offered for likelihoods (projection method only)
ADAPTIVE = ("dopri5", "dopri8", "bosh3")
METHODS = (*TABLEAUX, *ADAPTIVE)


def _max_norm(scaled_error: Tensor | tuple[Tensor, ...]) -> Tensor:
    """Error norm of the adaptive step control: the worst component, not the RMS.

    torchdiffeq's default RMS over the whole state lets a few sharp trajectories in a large
    batch go unresolved (their error is averaged with thousands of easy ones)."""
    if isinstance(scaled_error, tuple):
        return torch.stack([part.abs().max() for part in scaled_error]).max()
    return scaled_error.abs().max()


def _motion(geometry: Geometry, step: str, project: bool) -> Motion:
    """The engine's motion of a step mode: the projection method or RK in normal coordinates."""
    return Projected(geometry, project) if step == "projx" else ExpMap(geometry, project)


class RiemannianODESolver:
    """Integrate a tangent velocity field on a manifold; sample and compute log-likelihoods.

    Args:
        field: callable ``field(x, t, **cond)`` with x [B, *point_shape] (points) and t [B],
            returning an ambient vector of x's shape; it is projected onto T_x before use, so
            a plain network on the embedding coordinates is a valid field.
        geometry: the :class:`~flowmatch.geometry.base.Geometry` the points live on.

    After each call, ``nfe`` holds the number of field evaluations it made.
    """

    def __init__(self, field: Callable[..., Tensor], geometry: Geometry) -> None:
        if not callable(field):
            raise TypeError(f"field must be callable, got {type(field).__name__}")
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a flowmatch Geometry, got {type(geometry).__name__}")
        if geometry.is_discrete:
            raise ValueError(f"geometry must be continuous, got {geometry}")
        self.field = field
        self.geometry = geometry
        self.nfe = 0
        self._project_velocity = True

    # -- argument checks -----------------------------------------------------------------
    @staticmethod
    def _check_options(method: str, step: str, *, adaptive_ok: bool = False) -> None:
        allowed = METHODS if adaptive_ok else tuple(TABLEAUX)
        if method not in allowed:
            raise ValueError(f"method must be one of {allowed}, got {method!r}")
        if step not in ("projx", "expmap"):
            raise ValueError(f"step must be 'projx' or 'expmap', got {step!r}")
        if method in ADAPTIVE and step != "projx":
            raise ValueError(f"the adaptive method {method!r} works with step='projx' only")

    def _velocity(self, x: Tensor, t: float, cond: dict[str, Any]) -> Tensor:
        self.nfe += 1
        v = self.field(x, x.new_full((x.shape[0],), t), **cond)
        # skipped only where proju was found to be the identity (flat coordinates)
        return self.geometry.proju(x, v) if self._project_velocity else v

    # -- sampling ------------------------------------------------------------------------
    def sample(
        self,
        x0: Tensor,
        *,
        time_grid: Tensor | None = None,
        method: str = "euler",
        num_steps: int | None = None,
        step_size: float | None = None,
        step: StepMode = "projx",
        project_every_step: bool = True,
        return_intermediates: bool = False,
        enable_grad: bool = False,
        return_solution: bool = False,
        **cond: Any,
    ) -> Tensor | Solution:
        """Integrate from ``time_grid[0]`` to ``time_grid[-1]`` starting at points ``x0``.

        ``time_grid`` (default [0, 1]) may increase or decrease; its times are always hit
        exactly. Each interval is split into equal steps: ``num_steps`` in total (spread over
        the intervals by length) or ``step_size`` at most; with neither, one step per interval.
        ``project_every_step=False`` skips ``projx`` between steps (the velocity is still
        projected onto the tangent space) and projects only the returned points.

        Returns the final points [B, *point_shape], or with ``return_intermediates`` the points
        at every grid time, [len(time_grid), B, *point_shape]; with ``return_solution`` a
        :class:`~flowmatch.solvers.engine.Solution` holding that result as ``state`` together
        with this call's ``nfe``, number of steps and step times.
        """
        g = self.geometry
        self._check_options(method, step)
        g.validate(x0, "x0")
        grid = grid_as_floats(time_grid, (0.0, 1.0))
        counts = steps_per_interval(grid, num_steps, step_size, spread="proportional")
        starts, hs, ends, marks = interval_steps(grid, counts)
        self.nfe = 0
        self._project_velocity = x0.shape[0] == 0 or not self._uses_identity_projection(x0)

        def velocity(y: Tensor, t: float) -> Tensor:
            return self._velocity(y, t, cond)

        steps = float_steps(starts, hs, ends, TABLEAUX[method],
                            marks if return_intermediates else None)
        with torch.set_grad_enabled(enable_grad):
            sol = solve(velocity, x0, steps, _motion(g, step, project_every_step))
            if return_intermediates:
                out = torch.stack([x0, *(x if project_every_step else g.projx(x)
                                         for x in sol.trajectory)], dim=0)
            else:
                out = sol.state if project_every_step else g.projx(sol.state)
        return Solution(out, sol.nfe, sol.num_steps, sol.times) if return_solution else out

    # -- likelihood ----------------------------------------------------------------------
    def _uses_identity_projection(self, x: Tensor) -> bool:
        """True when ``proju`` is the identity at a few points of ``x`` (flat coordinates), so
        the divergence can read the Jacobian diagonal instead of projecting."""
        g = self.geometry
        xs = x[: min(8, x.shape[0])].detach()
        gen = torch.Generator(device=xs.device).manual_seed(0)
        a = torch.randn(xs.shape, generator=gen, dtype=xs.dtype, device=xs.device)
        tol = 1e4 * torch.finfo(xs.dtype).eps * float(a.abs().max() + 1)
        return float((g.proju(xs, a) - a).abs().max()) <= tol

    def _divergence_fn(self, cond: dict[str, Any], exact: bool, probe: Tensor | None,
                       proju, create_graph: bool):
        def stage(y: Tensor, t: float) -> tuple[Tensor, Tensor]:
            return value_and_divergence(lambda p: self._velocity(p, t, cond), y, exact=exact,
                                        proju=proju, probe=probe, create_graph=create_graph)

        return stage

    def log_likelihood(
        self,
        x1: Tensor,
        *,
        time_grid: Tensor | None = None,
        method: str = "euler",
        num_steps: int | None = None,
        step_size: float | None = None,
        step: StepMode = "projx",
        exact_divergence: bool = True,
        generator: torch.Generator | None = None,
        enable_grad: bool = False,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        return_solution: bool = False,
        **cond: Any,
    ) -> tuple[Tensor, Tensor] | Solution:
        """log p_1(x1) under the flow that pushes ``geometry``'s base distribution to t = 1.

        Integrates ẋ = v(x, t) and the divergence from ``time_grid[0]`` (default 1) down to
        ``time_grid[-1]`` (default 0); with a decreasing grid from 1 to 0 the result is
        log p0(x0) − ∫_0^1 div v dt (module docstring). ``exact_divergence=False`` uses one
        Gaussian Hutchinson probe per trajectory, held fixed and projected onto the tangent
        space at every point (unbiased; seed it with ``generator``).
        ``enable_grad`` keeps the graph so the result can be differentiated with respect to the
        field's parameters (and x1).

        ``method`` is a fixed-step tableau (``num_steps``/``step_size`` as in :meth:`sample`)
        or one of torchdiffeq's error-controlled methods ("dopri5", "dopri8", "bosh3"), which
        choose their steps so that every component of (x, ∫ div v) stays within
        ``atol + rtol·|·|`` per step: the choice for sharp densities, whose fields vary fastest
        near t = 1, where a uniform grid wastes its steps elsewhere. Adaptive integration uses
        the projection method: the ambient ODE of F(y) = P_{π(y)} f(π(y)), projected at the
        end (F leaves the manifold invariant, see the module docstring).

        Returns (x0 [B, *point_shape], log_p1 [B]); with ``return_solution`` a
        :class:`~flowmatch.solvers.engine.Solution` with that pair as ``state``.
        """
        g = self.geometry
        self._check_options(method, step, adaptive_ok=True)
        g.validate(x1, "x1")
        grid = grid_as_floats(time_grid, (1.0, 0.0))
        if grid[-1] != 0.0 or grid[0] <= grid[-1]:
            raise ValueError(
                "time_grid for log_likelihood must decrease to 0 (the base distribution), "
                f"got {grid}"
            )
        if method in ADAPTIVE:
            if num_steps is not None or step_size is not None:
                raise ValueError(f"num_steps/step_size apply to the fixed-step methods; "
                                 f"{method!r} chooses its steps from atol and rtol")
            if not (atol > 0 and rtol >= 0):
                raise ValueError(f"atol must be > 0 and rtol ≥ 0, got {atol!r}, {rtol!r}")
        else:
            counts = steps_per_interval(grid, num_steps, step_size, spread="proportional")
        self.nfe = 0
        if x1.shape[0] == 0:
            out = (x1, x1.new_zeros((0,)))
            return Solution(out, 0, 0, tuple(grid)) if return_solution else out
        proju = None if self._uses_identity_projection(x1) else g.proju
        self._project_velocity = proju is not None
        # one Gaussian probe per trajectory, held fixed (projected afresh at every point)
        probe = None if exact_divergence else torch.randn(
            x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
        stage = self._divergence_fn(cond, exact_divergence, probe, proju, enable_grad)

        # acc = ∫_{t_start}^{t_end} div v dt along the trajectory
        acc = torch.zeros(x1.shape[0], dtype=x1.dtype, device=x1.device)
        with torch.set_grad_enabled(enable_grad):
            if method in ADAPTIVE:
                sol = self._adaptive_likelihood(x1, acc, grid, method, atol, rtol, stage)
            else:
                # (x, acc) with acc a quadrature: the stages see x only
                steps = float_steps(*interval_steps(grid, counts)[:3], TABLEAUX[method])
                sol = solve(lambda state, t: stage(state[0], t), (x1, acc), steps,
                            TupleMotion(_motion(g, step, True), Accumulate()))
            x, acc = sol.state
            # ∫_{t_end}^{t_start} div = −acc;  log p(start) = log p(end) − ∫_{end}^{start} div
            log_p = g.base_log_prob(x) + acc
            log_p = log_p - 0.5 * (g.metric_logdet(x1) - g.metric_logdet(x))
        if validation_enabled():
            check_finite("log_p1", log_p.detach())
        if return_solution:
            return Solution((x, log_p), sol.nfe, sol.num_steps, sol.times)
        return x, log_p

    def _adaptive_likelihood(self, x1: Tensor, acc0: Tensor, grid: list[float], method: str,
                             atol: float, rtol: float, stage) -> Solution:
        """(x at grid[-1], ∫ div v dt) by torchdiffeq on the ambient ODE of F = P f ∘ π."""
        g = self.geometry

        def rhs(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            # stage points of an ambient step sit slightly off the manifold: evaluate at π(y)
            v, div = stage(g.projx(state[0]), float(t))
            return v, div

        times = torch.tensor(grid, dtype=x1.dtype, device=x1.device)
        sol = solve_adaptive(rhs, (x1, acc0), times, method=method, atol=atol, rtol=rtol,
                             options={"norm": _max_norm, "step_t": times})
        xs, accs = sol.state
        return Solution((g.projx(xs[-1]), accs[-1]), sol.nfe, None, sol.times)

    def __repr__(self) -> str:
        return f"RiemannianODESolver({self.geometry!r})"

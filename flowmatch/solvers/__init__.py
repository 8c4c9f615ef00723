"""Solvers: integrate a learned field (sampling) and its divergence (likelihood).

Every fixed-step solver runs the one explicit Runge–Kutta loop of :mod:`flowmatch.solvers.engine`
(``solve``: steps × tableau × how the state moves), and returns, with ``return_solution=True``,
a ``Solution`` that carries the call's own number of field evaluations. The faces:
``ODESolver`` (Euclidean; euler/midpoint/rk4 on the engine, other methods torchdiffeq),
``RiemannianODESolver`` (projected or exp-map Runge–Kutta on a manifold), ``DiscreteSolver`` and
``MetricInducedSolver`` (CTMC τ-leaping) and ``ProductSolver`` (all factors of a product on one
time grid, each discrete factor with the step its path provides — the ``jump_step`` protocol,
found by ``discrete_step_for`` — and fixed factors held); ``sampler_distribution`` gives the
exact law of the CTMC sampler on small enumerable state spaces; ``FlowMixture`` samples and
scores the mixture Σ_k w_k p_k of several flows. This package imports nothing from
``flowmatch.paths``: paths are reached through their methods.
"""

from flowmatch.solvers._grid import frame_time_grid
from flowmatch.solvers.ctmc import DiscreteSolver, MixtureJump, ctmc_step
from flowmatch.solvers.discrete_step import JumpRule, discrete_step_for
from flowmatch.solvers.divergence import divergence, value_and_divergence
from flowmatch.solvers.engine import TABLEAUX, Solution, Step, Tableau, solve, solve_adaptive
from flowmatch.solvers.exact import sampler_distribution
from flowmatch.solvers.likelihood import AugmentedDynamics, field_value_and_divergence
from flowmatch.solvers.metric_induced import (
    MetricInducedJump,
    MetricInducedSolver,
    metric_induced_step,
)
from flowmatch.solvers.mixture import FlowMixture, mixture_log_prob
from flowmatch.solvers.ode import ADAPTIVE_METHODS, FIXED_METHODS, METHODS, ODESolver
from flowmatch.solvers.product import ProductSolver
from flowmatch.solvers.riemannian import RiemannianODESolver

__all__ = [
    "ODESolver", "RiemannianODESolver", "DiscreteSolver", "ProductSolver", "ctmc_step",
    "sampler_distribution", "MetricInducedSolver", "metric_induced_step",
    "discrete_step_for", "METHODS", "FIXED_METHODS", "ADAPTIVE_METHODS",
    "divergence", "value_and_divergence", "AugmentedDynamics", "field_value_and_divergence",
    "FlowMixture", "mixture_log_prob",
    # the engine and the step-rule protocol
    "Solution", "Step", "Tableau", "TABLEAUX", "solve", "solve_adaptive", "JumpRule",
    "MixtureJump", "MetricInducedJump", "frame_time_grid",
]

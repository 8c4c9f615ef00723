"""Solvers: integrate a learned field (sampling) and its divergence (likelihood).

``ODESolver`` (Euclidean, torchdiffeq methods), ``RiemannianODESolver`` (projected or exp-map
Runge–Kutta on a manifold), ``DiscreteSolver`` (CTMC τ-leaping) and ``ProductSolver`` (all
factors of a product on one time grid; ``discrete_step_for`` picks each discrete factor's
τ-leaping step from its path); ``sampler_distribution`` gives the exact law of the CTMC
sampler on small enumerable state spaces; ``FlowMixture`` samples and scores the mixture
Σ_k w_k p_k of several flows.
"""

from flowmatch.solvers.ctmc import DiscreteSolver, ctmc_step
from flowmatch.solvers.discrete_step import discrete_step_for
from flowmatch.solvers.divergence import divergence, value_and_divergence
from flowmatch.solvers.exact import sampler_distribution
from flowmatch.solvers.likelihood import AugmentedDynamics, field_value_and_divergence
from flowmatch.solvers.metric_induced import MetricInducedSolver, metric_induced_step
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
]

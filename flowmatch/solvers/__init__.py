"""Solvers: integrate a learned velocity field (sampling) and its divergence (likelihood)."""

from flowmatch.solvers.divergence import divergence, value_and_divergence
from flowmatch.solvers.likelihood import AugmentedDynamics, field_value_and_divergence
from flowmatch.solvers.ode import ADAPTIVE_METHODS, FIXED_METHODS, METHODS, ODESolver

__all__ = [
    "ODESolver", "METHODS", "FIXED_METHODS", "ADAPTIVE_METHODS",
    "divergence", "value_and_divergence",
    "AugmentedDynamics", "field_value_and_divergence",
]
from flowmatch.solvers.ctmc import DiscreteSolver, ctmc_step  # noqa: E402

__all__ += ["DiscreteSolver", "ctmc_step"]

from flowmatch.solvers.riemannian import RiemannianODESolver  # noqa: E402

__all__ += ["RiemannianODESolver"]

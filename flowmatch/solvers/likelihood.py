"""Log-likelihood of a flow by the instantaneous change of variables.

Along a trajectory of ẋ = u(x, t) the density transported by the flow obeys

    d/dt log p_t(x_t) = −div u(x_t, t).

Integrating the augmented state (x, ℓ) with ℓ̇ = div u(x, t), ℓ = 0 at the start, from
t_a = ``grid[0]`` to t_b = ``grid[-1]`` gives ℓ(t_b) = ∫_{t_a}^{t_b} div u dt and

    log p_{t_a}(x_{t_a}) = log p_{t_b}(x_{t_b}) + ℓ(t_b).

For the usual grid from t_a = 1 (data) down to t_b = 0 (base), ℓ(0) = −∫_0^1 div u dt, which is
log p_1(x_1) = log p_0(x_0) − ∫_0^1 div u dt: the sign comes out right in either direction
because ℓ integrates over the same oriented interval as x.

The pieces are reusable: :func:`field_value_and_divergence` turns a velocity field into the
map (x, t) ↦ (u, div u) (with an optional tangent projection for embedded manifolds), and
:class:`AugmentedDynamics` wraps any such map as an ODE right-hand side on (x, ℓ).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flowmatch.solvers.divergence import (
    ProjU,
    as_differentiable,
    check_autograd_available,
    divergence_of_output,
    sample_probe,
)
from flowmatch.solvers.engine import TABLEAUX, Flat, Solution, node_steps, solve, solve_adaptive
from flowmatch.solvers.ode import EXPLICIT_RK, torchdiffeq_options

ValueAndDivergence = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def field_value_and_divergence(
    field: Callable[..., Tensor],
    cond: dict[str, Any] | None = None,
    *,
    exact: bool = True,
    proju: ProjU | None = None,
    probe: Tensor | None = None,
    create_graph: bool = False,
) -> ValueAndDivergence:
    """The map (x [B, ...], t [B]) ↦ (u = field(x, t, **cond), div u [B]) from one forward pass.

    ``exact=False`` uses the fixed Hutchinson ``probe`` (ambient; projected at x when ``proju``
    is given), so that one trajectory sees one probe and the time integral of the estimates is
    an unbiased estimate of the integrated divergence. Without ``create_graph`` the outputs are
    detached, so nothing accumulates over an integration.
    """
    cond = {} if cond is None else cond
    if not exact and probe is None:
        raise ValueError("exact=False needs a fixed probe tensor (see sample_probe)")

    def value_and_div(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            xg = as_differentiable(x)
            u = field(xg, t, **cond)
            div = divergence_of_output(u, xg, exact=exact, proju=proju, probe=probe,
                                       create_graph=create_graph)
        if not create_graph:
            return u.detach(), div.detach()
        return u, div

    return value_and_div


class AugmentedDynamics:
    """ODE right-hand side (t, (x, ℓ)) ↦ (u(x, t), div u(x, t)) for torchdiffeq.

    ``value_and_div(x, t)`` receives t expanded to shape [B] (t may arrive as a scalar, from
    torchdiffeq, or already of shape [B]). ``nfe`` counts evaluations.
    """

    __slots__ = ("value_and_div", "batch", "nfe")

    def __init__(self, value_and_div: ValueAndDivergence, batch: int) -> None:
        self.value_and_div = value_and_div
        self.batch = batch
        self.nfe = 0

    def __call__(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        return self.value_and_div(state[0], t.expand(self.batch))


def integrate_log_likelihood(
    field: Callable[..., Tensor],
    x1: Tensor,
    log_p0: Callable[[Tensor], Tensor],
    grid: Tensor,
    *,
    method: str,
    options: dict[str, Any],
    atol: float,
    rtol: float,
    exact: bool,
    probe: str,
    generator: torch.Generator | None,
    enable_grad: bool,
    cond: dict[str, Any],
    proju: ProjU | None = None,
) -> Solution:
    """Integrate (x, ℓ) over ``grid`` (already validated): state (x_end, log p_start).

    Called by :meth:`ODESolver.log_likelihood`, which validates the arguments. Explicit
    Runge–Kutta methods run in the engine's loop on the tuple state, others in torchdiffeq.
    """
    check_autograd_available()
    if x1.is_inference():  # made under inference_mode: copy it so the state can join a graph
        x1 = x1.clone()
    eps = None if exact else sample_probe(x1, probe, generator)
    value_and_div = field_value_and_divergence(field, cond, exact=exact, proju=proju,
                                               probe=eps, create_graph=enable_grad)
    rhs = AugmentedDynamics(value_and_div, x1.shape[0])
    ell0 = torch.zeros(x1.shape[0], dtype=x1.dtype, device=x1.device)
    with torch.set_grad_enabled(enable_grad):
        if method in EXPLICIT_RK:
            nodes = options.get("nodes", grid)
            sol = solve(lambda y, t: rhs(t, y), (x1, ell0),
                        node_steps(nodes, TABLEAUX[method], x1.shape[0]), Flat())
            x_end, ell_end = sol.state
        else:
            sol = solve_adaptive(rhs, (x1, ell0), grid, method=method, atol=atol, rtol=rtol,
                                 options=torchdiffeq_options(options, method, grid))
            x_end, ell_end = sol.state[0][-1], sol.state[1][-1]
        base = log_p0(x_end)
        if not torch.is_tensor(base) or base.shape != ell_end.shape:
            raise ValueError(
                f"log_p0 must return a tensor of shape [B] = {tuple(ell_end.shape)}, got "
                f"{tuple(base.shape) if torch.is_tensor(base) else type(base).__name__}"
            )
        log_p = base + ell_end
    return Solution((x_end, log_p), rhs.nfe, sol.num_steps, sol.times)

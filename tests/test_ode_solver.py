"""ODESolver: closed-form Gaussian transport, convergence orders, grids, NFE and validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdiffeq import odeint

from flowmatch.solvers import ADAPTIVE_METHODS, FIXED_METHODS, ODESolver
from flowmatch.solvers.ode import step_grid

D64 = torch.float64


class GaussianCondOTField(torch.nn.Module):
    """Marginal velocity of the CondOT path between N(0, I) and N(μ, s² I), independent coupling.

    x_t = (1 − t) x0 + t x1 has law N(t μ, σ_t² I) with σ_t² = (1 − t)² + t² s², and the
    marginal velocity is u_t(x) = μ + (σ̇_t / σ_t)(x − t μ), σ̇_t σ_t = −(1 − t) + t s².
    Its flow maps x0 to t μ + (σ_t / σ_0) x0, so x1 = μ + s x0.
    """

    def __init__(self, mu: torch.Tensor, s: float) -> None:
        super().__init__()
        self.mu, self.s = mu, s

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return ((1 - t) ** 2 + t**2 * self.s**2).sqrt()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = t.reshape(-1, *([1] * (x.dim() - 1)))
        rate = (-(1 - tb) + tb * self.s**2) / self.sigma(tb) ** 2
        return self.mu + rate * (x - tb * self.mu)

    def flow(self, x0: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.tensor(t, dtype=x0.dtype)
        return t * self.mu + self.sigma(tt) * x0


class Linear(torch.nn.Module):
    """ẋ = A x, exact solution x(t) = exp(t A) x(0)."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T


class Recorder(torch.nn.Module):
    """Wraps a field and records the times and shapes it is called with."""

    def __init__(self, field: torch.nn.Module) -> None:
        super().__init__()
        self.field = field
        self.calls: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.detach().clone())
        return self.field(x, t)


def rotation_damping() -> torch.Tensor:
    return torch.tensor([[-0.3, 2.0], [-2.0, -0.3]], dtype=D64)


MU = torch.tensor([1.5, -2.0, 0.5], dtype=D64)
S = 0.4


@pytest.mark.parametrize("method,kwargs", [("rk4", {"num_steps": 40}), ("dopri5", {}),
                                          ("heun3", {"num_steps": 60})])
def test_gaussian_transport_closed_form(method: str, kwargs: dict) -> None:
    field = GaussianCondOTField(MU, S)
    x0 = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0], [-2.5, 0.3, 0.7]], dtype=D64)
    x1 = ODESolver(field).sample(x0, method=method, atol=1e-10, rtol=1e-10, **kwargs)
    torch.testing.assert_close(x1, MU + S * x0, atol=1e-6, rtol=0)


def test_gaussian_transport_moments() -> None:
    # The solver maps N(0, I) samples to N(μ, s² I). With n = 20000 the sample mean has
    # standard error s/√n = 0.0028 and the sample variance s²·√(2/n) = 0.0016 per coordinate;
    # we allow 5 standard errors.
    n = 20000
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 3, generator=gen, dtype=D64)
    x1 = ODESolver(GaussianCondOTField(MU, S)).sample(x0, method="midpoint", num_steps=50)
    mean_err = (x1.mean(0) - MU).abs().max()
    assert float(mean_err) < 5 * S / math.sqrt(n)
    cov = torch.cov(x1.T)
    assert float((cov - S**2 * torch.eye(3, dtype=D64)).abs().max()) < 5 * S**2 * math.sqrt(2 / n)


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4),
                                          ("heun2", 2), ("heun3", 3)])
def test_convergence_order(method: str, order: int) -> None:
    # global error ~ C hᵖ, so halving h divides it by 2ᵖ: observed order log2(e_h / e_{h/2})
    a = rotation_damping()
    x0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=D64)
    exact = x0 @ torch.linalg.matrix_exp(a).T
    solver = ODESolver(Linear(a))
    errs = [float((solver.sample(x0, method=method, num_steps=n) - exact).norm())
            for n in (32, 64, 128)]
    observed = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    for p in observed:
        assert abs(p - order) < 0.15, (method, observed)


def test_euler_and_midpoint_agree_with_torchdiffeq() -> None:
    # same tableaux: our loop and torchdiffeq's must agree to rounding
    field = GaussianCondOTField(MU, S)
    x0 = torch.randn(5, 3, dtype=D64)
    grid = torch.linspace(0, 1, 11, dtype=D64)
    for method in ("euler", "midpoint"):
        ours = ODESolver(field).sample(x0, time_grid=grid, method=method,
                                       return_intermediates=True)
        ref = odeint(lambda t, x: field(x, t.expand(5)), x0, grid, method=method)
        torch.testing.assert_close(ours, ref, atol=1e-13, rtol=0)


@pytest.mark.parametrize("method", ["rk4", "heun3", "dopri5"])
def test_backward_integration_inverts_forward(method: str) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 2)).double()

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([x, t[:, None]], dim=1))

    solver = ODESolver(field)
    x0 = torch.randn(6, 2, dtype=D64)
    kw = {} if method in ADAPTIVE_METHODS else {"num_steps": 100}
    x1 = solver.sample(x0, method=method, atol=1e-10, rtol=1e-10, **kw)
    back = solver.sample(x1, time_grid=[1.0, 0.0], method=method, atol=1e-10, rtol=1e-10, **kw)
    assert float((x1 - x0).abs().max()) > 0.05  # the flow moved the points
    torch.testing.assert_close(back, x0, atol=1e-7, rtol=0)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "heun3", "dopri5",
                                    "implicit_adams"])
def test_intermediates_at_grid_points(method: str) -> None:
    field = GaussianCondOTField(MU, S)
    x0 = torch.randn(4, 3, dtype=D64)
    grid = [0.0, 0.3, 0.5, 0.85, 1.0]
    kw = {} if method in ADAPTIVE_METHODS else {"step_size": 0.01}
    states = ODESolver(field).sample(x0, time_grid=grid, method=method, atol=1e-9, rtol=1e-9,
                                     return_intermediates=True, **kw)
    assert states.shape == (5, 4, 3)
    assert torch.equal(states[0], x0)
    tol = {"euler": 2e-2, "midpoint": 1e-4}.get(method, 1e-6)
    for k, t in enumerate(grid):
        torch.testing.assert_close(states[k], field.flow(x0, t), atol=tol, rtol=0)


def test_interior_grid_points_are_solver_states_not_interpolations() -> None:
    # step 0.25 from 0 does not hit 0.3: the step containing it is split, so the state there
    # is an Euler state (x(0.3) = x(0.25) + 0.05 u), exactly as if 0.3 were a grid node
    a = rotation_damping()
    x0 = torch.tensor([[1.0, 0.0]], dtype=D64)
    rec = Recorder(Linear(a))
    out = ODESolver(rec).sample(x0, time_grid=[0.0, 0.3, 1.0], method="euler", step_size=0.25,
                                return_intermediates=True)
    times = [float(t[0]) for t in rec.calls]
    assert times == pytest.approx([0.0, 0.25, 0.3, 0.5, 0.75])
    step = torch.eye(2, dtype=D64)
    manual = x0.clone()
    for h in (0.25, 0.05):
        manual = manual @ (step + h * a).T
    torch.testing.assert_close(out[1], manual)


@pytest.mark.parametrize("method", ["euler", "heun3"])
def test_step_size_starts_at_grid_start(method: str) -> None:
    rec = Recorder(Linear(rotation_damping()))
    solver = ODESolver(rec)
    x0 = torch.randn(3, 2, dtype=D64)
    solver.sample(x0, time_grid=[0.2, 1.0], method=method, step_size=0.2)
    times = [float(t[0]) for t in rec.calls]
    stages = FIXED_METHODS[method]
    assert solver.nfe == 4 * stages
    # every step begins with an evaluation at its start: 0.2, 0.4, 0.6, 0.8, never before 0.2
    assert times[::stages] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert min(times) == pytest.approx(0.2)
    # backwards: steps start at 0.9 and move down by 0.2
    rec.calls.clear()
    solver.sample(x0, time_grid=[0.9, 0.1], method="euler", step_size=0.2)
    assert [float(t[0]) for t in rec.calls] == pytest.approx([0.9, 0.7, 0.5, 0.3])


def test_step_size_not_dividing_the_span_shortens_the_last_step() -> None:
    rec = Recorder(Linear(rotation_damping()))
    solver = ODESolver(rec)
    solver.sample(torch.randn(2, 2, dtype=D64), method="euler", step_size=0.3)
    assert [float(t[0]) for t in rec.calls] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    # a span that is a multiple of h up to rounding (0.7 / 0.1 = 6.999…) gains no sliver step
    solver.sample(torch.randn(2, 2, dtype=D64), time_grid=[0.1, 0.8], method="euler",
                  step_size=0.1)
    assert solver.nfe == 7


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "heun2", "heun3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nfe_is_exact_for_fixed_methods(method: str, dtype: torch.dtype) -> None:
    rec = Recorder(Linear(rotation_damping().to(dtype)))
    solver = ODESolver(rec)
    x0 = torch.randn(3, 2, dtype=dtype)
    solver.sample(x0, method=method, num_steps=10, time_grid=[0.0, 0.5, 1.0],
                  return_intermediates=True)
    assert solver.nfe == 10 * FIXED_METHODS[method] == len(rec.calls)
    for t in rec.calls:  # the field sees one time per sample, in the dtype of x
        assert t.shape == (3,) and t.dtype == dtype


def test_nfe_counts_adaptive_evaluations() -> None:
    rec = Recorder(GaussianCondOTField(MU, S))
    solver = ODESolver(rec)
    solver.sample(torch.randn(4, 3, dtype=D64), method="dopri5")
    assert solver.nfe == len(rec.calls) > 6


def test_grad_flag() -> None:
    a = rotation_damping()
    x0 = torch.randn(2, 2, dtype=D64, requires_grad=True)
    solver = ODESolver(Linear(a))
    assert not solver.sample(x0, method="rk4", num_steps=4).requires_grad
    x1 = solver.sample(x0, method="rk4", num_steps=50, enable_grad=True)
    (g,) = torch.autograd.grad(x1.sum(), x0)
    # d(sum x1)/d x0 = exp(A)ᵀ 1
    expected = torch.linalg.matrix_exp(a).T @ torch.ones(2, dtype=D64)
    torch.testing.assert_close(g, expected.expand(2, 2), atol=1e-7, rtol=0)


class Conditional(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor, *, label: torch.Tensor) -> torch.Tensor:
        return label[:, None].to(x.dtype).expand_as(x)


def test_conditioning_is_forwarded_and_misspellings_raise() -> None:
    solver = ODESolver(Conditional())
    x0 = torch.zeros(3, 2, dtype=D64)
    label = torch.tensor([1, 2, 3])
    for method in ("euler", "dopri5"):
        x1 = solver.sample(x0, method=method, label=label)
        torch.testing.assert_close(x1, label[:, None].to(D64).expand(3, 2))
    with pytest.raises(TypeError):
        solver.sample(x0, method="euler", lable=label)


def test_float32_time_grid_steps() -> None:
    # a float32 grid from linspace holds rounded values (0.1f ≠ 0.1): they must still be nodes
    rec = Recorder(Linear(rotation_damping().float()))
    solver = ODESolver(rec)
    grid = torch.linspace(0, 1, 11)
    out = solver.sample(torch.randn(2, 2), time_grid=grid, method="euler", num_steps=100,
                        return_intermediates=True)
    assert out.shape == (11, 2, 2)
    assert solver.nfe == 100


def test_bad_input() -> None:
    solver = ODESolver(Linear(rotation_damping()))
    x0 = torch.randn(2, 2, dtype=D64)
    with pytest.raises(ValueError, match="x0 must be finite"):
        solver.sample(torch.tensor([[float("nan"), 0.0]], dtype=D64))
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        solver.sample(x0, time_grid=[0.0, 0.6, 0.4, 1.0])
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        solver.sample(x0, time_grid=[0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="not both"):
        solver.sample(x0, step_size=0.1, num_steps=10)
    with pytest.raises(ValueError, match="method must be one of"):
        solver.sample(x0, method="rk45")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        solver.sample(x0, time_grid=[0.0, 1.5])
    with pytest.raises(ValueError, match="time_grid must be finite"):
        solver.sample(x0, time_grid=[0.0, float("nan")])
    with pytest.raises(ValueError, match="at least two"):
        solver.sample(x0, time_grid=[0.5])
    with pytest.raises(ValueError, match="adaptive method"):
        solver.sample(x0, method="dopri5", num_steps=10)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        solver.sample(x0, num_steps=0)
    with pytest.raises(ValueError, match="step_size must be a positive"):
        solver.sample(x0, step_size=-0.1)
    with pytest.raises(ValueError, match="floating-point"):
        solver.sample(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="callable"):
        ODESolver(3)  # type: ignore[arg-type]
    # allow_any_time opens other time domains
    out = solver.sample(x0, time_grid=[0.0, 2.0], method="rk4", num_steps=100,
                        allow_any_time=True)
    torch.testing.assert_close(out, x0 @ torch.linalg.matrix_exp(2 * rotation_damping()).T,
                               atol=1e-6, rtol=0)


def test_sampling_under_inference_mode() -> None:
    a = rotation_damping()
    solver = ODESolver(Linear(a))
    with torch.inference_mode():
        x0 = torch.randn(3, 2, dtype=D64)
        for method in ("rk4", "dopri5"):
            out = solver.sample(x0, method=method, num_steps=50 if method == "rk4" else None,
                                atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(out, x0 @ torch.linalg.matrix_exp(a).T, atol=1e-7,
                                       rtol=0)


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=6, unique=True),
    h=st.floats(1e-3, 1.5),
    backwards=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_step_grid_properties(times: list[float], h: float, backwards: bool,
                              dtype: torch.dtype) -> None:
    grid = torch.tensor(sorted(times, reverse=backwards), dtype=dtype)
    steps = grid[1:] - grid[:-1]
    if not (bool((steps > 0).all()) or bool((steps < 0).all())):
        return  # values that collapse in float32 do not make a valid grid
    nodes = step_grid(grid, h, None)
    d = nodes[1:] - nodes[:-1]
    # strictly monotone in the grid's direction, from its first to its last point
    assert bool((d > 0).all()) if not backwards else bool((d < 0).all())
    assert nodes[0] == grid[0] and nodes[-1] == grid[-1]
    # every grid point is a node, and no step is longer than h (up to rounding)
    assert set(grid.tolist()) <= set(nodes.tolist())
    assert float(d.abs().max()) <= h * (1 + 1e-6) + 1e-6
    # uniform steps from the start: at most one extra node per interior grid point
    span = abs(float(grid[-1] - grid[0]))
    assert len(nodes) - 1 <= max(1, math.ceil(span / h - 1e-9)) + len(grid) - 2


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_adaptive_methods_reach_their_tolerance(method: str) -> None:
    # ẋ = −t x, x(t) = exp(−t²/2) x(0). Adaptive steps land on the grid times, so the states
    # there are not read off a lower-order interpolant (which capped dopri8 near 1e-6).
    x0 = torch.randn(4, 3, dtype=D64)
    grid = [0.0, 0.37, 1.0]
    out = ODESolver(lambda x, t: -t[:, None] * x).sample(
        x0, time_grid=grid, method=method, atol=1e-9, rtol=1e-9, return_intermediates=True)
    # fehlberg2 is second order: local control at 1e-9 over ~1600 steps leaves ~4e-7 globally
    tol = 1e-6 if method == "fehlberg2" else 5e-8
    for k, t in enumerate(grid):
        torch.testing.assert_close(out[k], x0 * math.exp(-t * t / 2), atol=tol, rtol=0)


@pytest.mark.parametrize("method", ["midpoint", "rk4", "dopri5"])
def test_a_diverging_field_raises_instead_of_returning_inf(method):
    # dx/dt = x^3 from x0 = 10 blows up at t = 1/200: fixed steps overflow to inf, dopri5's step
    # control underflows; both used to pass through silently or as a bare AssertionError
    x0 = torch.full((4, 2), 10.0)
    with pytest.raises(FloatingPointError, match="not finite|underflowed"):
        ODESolver(lambda x, t: x.pow(3)).sample(x0, method=method, **(
            {} if method == "dopri5" else {"num_steps": 20}))

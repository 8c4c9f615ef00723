"""Log-likelihood by the instantaneous change of variables."""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.solvers import AugmentedDynamics, ODESolver, field_value_and_divergence

D64 = torch.float64


class GaussianCondOTField(torch.nn.Module):
    """Marginal CondOT velocity between N(0, I) and N(μ, s² I) (see test_ode_solver.py).

    Acts elementwise, so it works for any event shape (μ broadcasts against x [B, ...]).
    """

    def __init__(self, mu: torch.Tensor, s: float) -> None:
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = t.reshape(-1, *([1] * (x.dim() - 1)))
        rate = (-(1 - tb) + tb * self.s**2) / ((1 - tb) ** 2 + tb**2 * self.s**2)
        return self.mu + rate * (x - tb * self.mu)


def std_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * (flat**2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, s: float) -> torch.Tensor:
    return std_normal_log_prob((x - mu) / s) - x[0].numel() * math.log(s)


class SmallNet(torch.nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))


MU = torch.tensor([1.5, -2.0, 0.5], dtype=D64)
S = 0.4


@pytest.mark.parametrize("method,kwargs", [("rk4", {"num_steps": 40}), ("dopri5", {}),
                                          ("heun3", {"num_steps": 60})])
def test_gaussian_log_likelihood_closed_form(method: str, kwargs: dict) -> None:
    field = GaussianCondOTField(MU, S)
    x1 = torch.tensor([[1.5, -2.0, 0.5], [2.0, -1.0, 0.0], [0.0, -3.0, 1.5]], dtype=D64)
    x0, log_p1 = ODESolver(field).log_likelihood(x1, std_normal_log_prob, method=method,
                                                 atol=1e-10, rtol=1e-10, **kwargs)
    # the brief's bar is 1e-3; third-order heun3 at h = 1/60 is at ~1e-5, the others tighter
    tol = 1e-4 if method == "heun3" else 1e-6
    torch.testing.assert_close(log_p1, gaussian_log_prob(x1, MU, S), atol=tol, rtol=0)
    torch.testing.assert_close(x0, (x1 - MU) / S, atol=tol, rtol=0)


def test_hutchinson_log_likelihood_is_unbiased() -> None:
    # one Gaussian probe per trajectory: here J = c(t) I, so each estimate is |ε|² ∫ c dt,
    # with mean d ∫ c dt (the exact term) and a nonzero spread; average K copies of each point
    field = GaussianCondOTField(MU, S)
    points = torch.tensor([[1.5, -2.0, 0.5], [2.0, -1.0, 0.0]], dtype=D64)
    k = 2000
    x1 = points.repeat_interleave(k, dim=0)
    gen = torch.Generator().manual_seed(0)
    _, est = ODESolver(field).log_likelihood(x1, std_normal_log_prob, method="rk4",
                                             num_steps=20, exact_divergence=False,
                                             probe="gaussian", generator=gen)
    est = est.reshape(2, k)
    exact = gaussian_log_prob(points, MU, S)
    se = est.std(dim=1) / math.sqrt(k)
    assert bool((est.std(dim=1) > 0.1).all())
    assert bool(((est.mean(dim=1) - exact).abs() < 5 * se).all())
    assert bool(((est.mean(dim=1) - exact).abs() < 0.1).all())
    # Rademacher probes have zero variance on a diagonal Jacobian: exact to discretisation
    _, rad = ODESolver(field).log_likelihood(points, std_normal_log_prob, method="rk4",
                                             num_steps=20, exact_divergence=False)
    torch.testing.assert_close(rad, exact, atol=1e-3, rtol=0)


def test_hutchinson_is_reproducible_with_a_generator() -> None:
    solver = ODESolver(SmallNet().double())
    x1 = torch.randn(4, 2, dtype=D64)

    def run(seed: int) -> torch.Tensor:
        return solver.log_likelihood(x1, std_normal_log_prob, method="midpoint", num_steps=5,
                                     exact_divergence=False,
                                     generator=torch.Generator().manual_seed(seed))[1]

    torch.testing.assert_close(run(3), run(3), atol=0, rtol=0)
    assert not torch.equal(run(3), run(4))


def test_image_shaped_data() -> None:
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(2, 3, 4, generator=gen, dtype=D64)
    field = GaussianCondOTField(mu, S)
    x1 = mu + S * torch.randn(3, 2, 3, 4, generator=gen, dtype=D64)
    solver = ODESolver(field)
    x0, log_p1 = solver.log_likelihood(x1, std_normal_log_prob, method="rk4", num_steps=20)
    assert x0.shape == x1.shape and log_p1.shape == (3,)
    torch.testing.assert_close(log_p1, gaussian_log_prob(x1, mu, S), atol=1e-3, rtol=0)
    _, est = solver.log_likelihood(x1, std_normal_log_prob, method="rk4", num_steps=20,
                                   exact_divergence=False)
    torch.testing.assert_close(est, log_p1, atol=1e-3, rtol=0)  # Rademacher, diagonal J


def test_nonlinear_flow_matches_jacobian_determinant() -> None:
    # independent check on a nonlinear field: log p1(x1) = log p0(x0) + log|det ∂x0/∂x1|,
    # with ∂x0/∂x1 the Jacobian of the backward flow (autograd through the solver)
    torch.manual_seed(2)
    solver = ODESolver(SmallNet(hidden=32).double())
    x1 = torch.randn(3, 2, dtype=D64)
    x0, log_p1 = solver.log_likelihood(x1, std_normal_log_prob, method="rk4", num_steps=100)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda z: solver.sample(z[None], time_grid=[1.0, 0.0], method="rk4",
                                    num_steps=100, enable_grad=True)[0], x1[b])
        expected = std_normal_log_prob(x0[b:b + 1])[0] + torch.linalg.slogdet(jac)[1]
        assert abs(float(jac.det()) - 1.0) > 0.01  # the flow is not volume preserving
        torch.testing.assert_close(log_p1[b], expected, atol=1e-7, rtol=0)


def test_gradients_flow_to_parameters_and_data() -> None:
    torch.manual_seed(3)
    net = SmallNet().double()
    solver = ODESolver(net)
    x1 = torch.randn(4, 2, dtype=D64, requires_grad=True)
    kw = {"method": "midpoint", "num_steps": 6}
    _, log_p1 = solver.log_likelihood(x1, std_normal_log_prob, enable_grad=True, **kw)
    loss = log_p1.sum()
    weight = net.net[0].weight
    gx, gw = torch.autograd.grad(loss, (x1, weight))
    assert float(gx.abs().max()) > 0 and float(gw.abs().max()) > 0

    # central finite differences of the same discretised map (no graph kept)
    def total(x: torch.Tensor) -> float:
        return float(solver.log_likelihood(x, std_normal_log_prob, **kw)[1].sum())

    h = 1e-6
    x = x1.detach()
    for idx in [(0, 0), (2, 1)]:
        e = torch.zeros_like(x)
        e[idx] = h
        fd = (total(x + e) - total(x - e)) / (2 * h)
        assert gx[idx].item() == pytest.approx(fd, abs=1e-6)
    with torch.no_grad():
        w0 = weight[1, 2].item()
        weight[1, 2] = w0 + h
        up = total(x)
        weight[1, 2] = w0 - h
        down = total(x)
        weight[1, 2] = w0
    assert gw[1, 2].item() == pytest.approx((up - down) / (2 * h), abs=1e-6)
    # without enable_grad nothing is kept
    _, detached = solver.log_likelihood(x1, std_normal_log_prob, **kw)
    assert not detached.requires_grad


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_grid_with_interior_points_gives_the_same_likelihood(method: str) -> None:
    torch.manual_seed(4)
    solver = ODESolver(SmallNet().double())
    x1 = torch.randn(5, 2, dtype=D64)
    kw = {"atol": 1e-10, "rtol": 1e-10} if method == "dopri5" else {"step_size": 0.01}
    a = solver.log_likelihood(x1, std_normal_log_prob, method=method, **kw)
    b = solver.log_likelihood(x1, std_normal_log_prob, method=method,
                              time_grid=[1.0, 0.63, 0.2, 0.0], **kw)
    torch.testing.assert_close(a[1], b[1], atol=1e-7, rtol=0)
    torch.testing.assert_close(a[0], b[0], atol=1e-7, rtol=0)


def test_x0_matches_backward_sampling_and_nfe() -> None:
    torch.manual_seed(5)
    solver = ODESolver(SmallNet().double())
    x1 = torch.randn(5, 2, dtype=D64)
    x0, _ = solver.log_likelihood(x1, std_normal_log_prob, method="rk4", num_steps=10)
    assert solver.nfe == 40
    back = solver.sample(x1, time_grid=[1.0, 0.0], method="rk4", num_steps=10)
    torch.testing.assert_close(x0, back, atol=1e-12, rtol=0)


def test_augmented_dynamics_building_blocks() -> None:
    # the reusable pieces: (x, t) -> (u, div u) with a tangent projection, as a torchdiffeq rhs
    a = torch.tensor([0.3, -1.0, 2.0], dtype=D64)

    def proju(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return u - (u * x).sum(-1, keepdim=True) * x

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return proju(x, a.expand_as(x))

    x = torch.nn.functional.normalize(torch.randn(4, 3, dtype=D64), dim=-1)
    rhs = AugmentedDynamics(field_value_and_divergence(field, proju=proju), batch=4)
    u, div = rhs(torch.tensor(0.5, dtype=D64), (x, torch.zeros(4, dtype=D64)))
    torch.testing.assert_close(u, field(x, torch.zeros(4)))
    torch.testing.assert_close(div, -2.0 * (x @ a))
    assert rhs.nfe == 1


def test_bad_input() -> None:
    solver = ODESolver(SmallNet().double())
    x1 = torch.randn(3, 2, dtype=D64)
    with pytest.raises(ValueError, match="x1 must be finite"):
        solver.log_likelihood(torch.tensor([[float("inf"), 0.0]], dtype=D64),
                              std_normal_log_prob)
    with pytest.raises(ValueError, match="log_p0 must return a tensor of shape"):
        solver.log_likelihood(x1, lambda x: torch.zeros(3, 1, dtype=D64))
    with pytest.raises(ValueError, match="log_p0 must be a callable"):
        solver.log_likelihood(x1, torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        solver.log_likelihood(x1, std_normal_log_prob, time_grid=[1.0, 0.2, 0.4, 0.0])
    with pytest.raises(ValueError, match="method must be one of"):
        solver.log_likelihood(x1, std_normal_log_prob, method="leapfrog")
    with pytest.raises(TypeError):
        solver.log_likelihood(x1, std_normal_log_prob, labels=None)


@pytest.mark.parametrize("method,kwargs", [("dopri5", {}), ("midpoint", {"num_steps": 100})])
def test_float32(method: str, kwargs: dict) -> None:
    # torchdiffeq keeps adaptive time in float64; the field must still see float32 times
    seen: list[torch.dtype] = []
    gauss = GaussianCondOTField(MU.float(), S)

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.dtype)
        return gauss(x, t)

    x1 = torch.tensor([[1.5, -2.0, 0.5], [2.0, -1.0, 0.0]])
    x0, log_p1 = ODESolver(field).log_likelihood(x1, std_normal_log_prob, method=method,
                                                 **kwargs)
    assert log_p1.dtype == torch.float32 and set(seen) == {torch.float32}
    torch.testing.assert_close(log_p1, gaussian_log_prob(x1, MU.float(), S), atol=1e-3, rtol=0)


def test_inference_mode() -> None:
    # inside inference_mode autograd records nothing, so every divergence would read as 0:
    # refuse loudly; a tensor made there is fine once we are outside
    solver = ODESolver(lambda x, t: -x)
    with torch.inference_mode():
        x1 = torch.randn(4, 2, dtype=D64)
        with pytest.raises(RuntimeError, match="inference_mode"):
            solver.log_likelihood(x1, std_normal_log_prob)
    # ẋ = −x backwards from 1 to 0: x0 = e·x1 and div = −2, so log p1 = log p0(e·x1) + 2
    x0, log_p1 = solver.log_likelihood(x1, std_normal_log_prob, method="dopri5", atol=1e-10,
                                       rtol=1e-10)
    torch.testing.assert_close(log_p1, std_normal_log_prob(math.e * x1) + 2.0)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_likelihood_unbiased_for_a_nonlinear_field(probe: str) -> None:
    # a network with a full, state-dependent Jacobian: the per-trajectory estimates are noisy,
    # and their mean over K independent probes must sit within 5 standard errors of the exact
    # value computed with the same discretisation
    torch.manual_seed(6)
    solver = ODESolver(SmallNet(hidden=32).double())
    points = torch.randn(2, 2, dtype=D64)
    kw = {"method": "midpoint", "num_steps": 10}
    _, exact = solver.log_likelihood(points, std_normal_log_prob, **kw)
    k = 3000
    gen = torch.Generator().manual_seed(7)
    _, est = solver.log_likelihood(points.repeat_interleave(k, dim=0), std_normal_log_prob,
                                   exact_divergence=False, probe=probe, generator=gen, **kw)
    est = est.reshape(2, k)
    spread = est.std(dim=1)
    assert bool((spread > 1e-3).all())
    assert bool(((est.mean(dim=1) - exact).abs() < 5 * spread / math.sqrt(k)).all())

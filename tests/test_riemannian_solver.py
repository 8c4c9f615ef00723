"""Riemannian ODE solver: convergence orders, staying on the manifold, grids, likelihoods."""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.geometry import Euclidean
from flowmatch.geometry.base import Geometry
from flowmatch.geometry.sphere import Sphere
from flowmatch.geometry.torus import FlatTorus
from flowmatch.solvers.riemannian import RiemannianODESolver

D64 = torch.float64
EZ = torch.tensor([0.0, 0.0, 1.0], dtype=D64)


def rotation_field(x, t):
    """Rigid rotation about e_z at unit angular speed: the flow is R_z(t)."""
    return torch.linalg.cross(EZ.to(x.dtype).expand_as(x), x, dim=-1)


def rotate_z(x, angle):
    c, s = math.cos(angle), math.sin(angle)
    return torch.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1], x[:, 2]], -1)


def time_dependent_field(x, t):
    """Rotation about e_z at angular speed 1 + 2t: the angle travelled from 0 to t is t + t²."""
    return (1 + 2 * t)[:, None] * rotation_field(x, t)


def uniform(g, n, seed=0, dtype=D64):
    return g.sample_base(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("step", ["projx", "expmap"])
@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2),
                                          ("rk4", 4)])
def test_observed_convergence_order_matches_the_tableau(method, order, step):
    g = Sphere(3)
    x = uniform(g, 32)
    solver = RiemannianODESolver(time_dependent_field, g)
    errs = []
    for n in (8, 16, 32):
        y = solver.sample(x, method=method, num_steps=n, step=step)
        errs.append(float((y - rotate_z(x, 2.0)).abs().max()))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.25 for r in rates), (errs, rates)


@pytest.mark.parametrize("step", ["projx", "expmap"])
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_points_stay_on_the_sphere_for_1000_float32_steps(method, step):
    g = Sphere(3)
    x = uniform(g, 256, dtype=torch.float32)

    def field(x, t):  # a non-rigid field: rotation plus a pull towards the north pole
        return rotation_field(x, t) + 3.0 * EZ.float()

    y = RiemannianODESolver(field, g).sample(x, method=method, num_steps=1000, step=step)
    assert float((torch.linalg.vector_norm(y, dim=-1) - 1).abs().max()) <= 1e-5


def test_without_projection_the_points_drift_but_the_result_is_projected():
    g = Sphere(3)
    x = uniform(g, 64, dtype=torch.float64)
    solver = RiemannianODESolver(gradient_flow, g)
    traj = solver.sample(x, method="euler", num_steps=50, project_every_step=False,
                         return_intermediates=True)
    assert float((torch.linalg.vector_norm(traj, dim=-1) - 1).abs().max()) <= 1e-12
    projected = solver.sample(x, method="euler", num_steps=50)
    # ambient Euler without projection grows ‖x‖ by O(h²) per step, and the tangent speed
    # P_x e_z then turns the direction more slowly: the two results differ at O(h) ≈ 1e-2
    diff = float((traj[-1] - projected).abs().max())
    assert 1e-3 < diff < 5e-2


def test_backward_integration_returns_to_the_start():
    g = Sphere(3)
    x = uniform(g, 64)
    solver = RiemannianODESolver(time_dependent_field, g)
    y = solver.sample(x, method="rk4", num_steps=40)
    back = solver.sample(y, time_grid=torch.tensor([1.0, 0.0]), method="rk4", num_steps=40)
    assert float((back - x).abs().max()) < 1e-6


def test_intermediates_are_the_points_at_the_grid_times():
    g = Sphere(3)
    x = uniform(g, 16)
    solver = RiemannianODESolver(time_dependent_field, g)
    grid = torch.tensor([0.0, 0.3, 0.5, 1.0])
    traj = solver.sample(x, time_grid=grid, method="rk4", step_size=0.02,
                         return_intermediates=True)
    assert traj.shape == (4, 16, 3)
    for k, t in enumerate(grid.tolist()):
        torch.testing.assert_close(traj[k], rotate_z(x, t + t * t), atol=1e-7, rtol=0)


def test_nfe_counts_field_evaluations():
    g = Sphere(3)
    x = uniform(g, 4)
    solver = RiemannianODESolver(rotation_field, g)
    solver.sample(x, method="euler", num_steps=10)
    assert solver.nfe == 10
    solver.sample(x, method="rk4", num_steps=10)
    assert solver.nfe == 40
    solver.sample(x, method="midpoint", step_size=0.1, time_grid=torch.tensor([0.0, 0.45]))
    assert solver.nfe == 2 * 5  # ceil(0.45 / 0.1) = 5 steps


def test_torus_flow_wraps_around():
    g = FlatTorus(2)
    x = torch.tensor([[6.0, 0.5]], dtype=D64)
    speed = torch.tensor([1.0, -1.0], dtype=D64)
    solver = RiemannianODESolver(lambda x, t: speed.expand_as(x), g)
    for step in ("projx", "expmap"):
        y = solver.sample(x, method="euler", num_steps=7, step=step)
        torch.testing.assert_close(y, g.wrap(x + speed))


def test_conditioning_is_passed_and_misspelled_keywords_raise():
    g = Sphere(3)
    x = uniform(g, 8)

    def field(x, t, *, scale):
        return scale * rotation_field(x, t)

    solver = RiemannianODESolver(field, g)
    y = solver.sample(x, method="rk4", num_steps=20, scale=0.5)
    torch.testing.assert_close(y, rotate_z(x, 0.5), atol=1e-8, rtol=0)
    with pytest.raises(TypeError):
        solver.sample(x, num_steps=2, scael=0.5)


def test_bad_arguments_raise_clear_errors():
    g = Sphere(3)
    x = uniform(g, 4)
    solver = RiemannianODESolver(rotation_field, g)
    with pytest.raises(ValueError, match="method"):
        solver.sample(x, method="dopri5")
    with pytest.raises(ValueError, match="step must be"):
        solver.sample(x, step="retract")
    with pytest.raises(ValueError, match="strictly"):
        solver.sample(x, time_grid=torch.tensor([0.0, 0.5, 0.2]))
    with pytest.raises(ValueError, match="not both"):
        solver.sample(x, num_steps=4, step_size=0.1)
    with pytest.raises(ValueError, match="num_steps"):
        solver.sample(x, num_steps=0)
    with pytest.raises(ValueError, match="x0 must lie on"):
        solver.sample(2 * x)
    with pytest.raises(ValueError, match="decrease to 0"):
        solver.log_likelihood(x, time_grid=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="Geometry"):
        RiemannianODESolver(rotation_field, "sphere")


# -- likelihood ----------------------------------------------------------------------------
def test_zero_flow_of_the_uniform_sphere_has_log_density_minus_log_4pi():
    g = Sphere(3)
    x = uniform(g, 32)
    solver = RiemannianODESolver(lambda x, t: torch.zeros_like(x), g)
    for exact in (True, False):
        x0, log_p = solver.log_likelihood(x, num_steps=5, exact_divergence=exact)
        torch.testing.assert_close(log_p, torch.full((32,), -math.log(4 * math.pi), dtype=D64))
        torch.testing.assert_close(x0, x)


def test_rotation_preserves_the_uniform_density_on_sphere_and_torus():
    # Killing fields are divergence free: the pushforward of uniform is uniform.
    g = Sphere(3)
    x = uniform(g, 32)
    _, log_p = RiemannianODESolver(rotation_field, g).log_likelihood(x, method="rk4",
                                                                     num_steps=10)
    torch.testing.assert_close(log_p, torch.full((32,), -math.log(4 * math.pi), dtype=D64))
    t7 = FlatTorus(7)
    y = uniform(t7, 32)
    shift = torch.linspace(-1, 1, 7, dtype=D64)
    _, log_p = RiemannianODESolver(lambda x, t: shift.expand_as(x), t7).log_likelihood(y)
    torch.testing.assert_close(log_p, torch.full((32,), -7 * math.log(2 * math.pi), dtype=D64))


def _conformal_log_density(x1, lam):
    """log density of the pushforward of uniform on S² by the flow of v(x) = P_x e_z at t = 1.

    In the stereographic coordinate r = tan(θ/2) (θ the polar angle from e_z) the flow is
    r ↦ λ r with λ = e^{−1}; the area element is 4 r dr dφ / (1 + r²)², so the map scales area
    by J = λ² (1 + r0²)² / (1 + r1²)² and log p1(x1) = −log 4π − log J with r0 = r1 / λ.
    """
    theta1 = torch.atan2(torch.linalg.vector_norm(x1[:, :2], dim=-1), x1[:, 2])
    r1 = torch.tan(theta1 / 2)
    r0 = r1 / lam
    return (-math.log(4 * math.pi) - 2 * math.log(lam) - 2 * torch.log1p(r0**2)
            + 2 * torch.log1p(r1**2))


def gradient_flow(x, t):
    return EZ.to(x.dtype).expand_as(x).clone()  # projected onto T_x by the solver: P_x e_z


@pytest.mark.parametrize("step", ["projx", "expmap"])
def test_likelihood_of_a_compressing_flow_matches_the_closed_form(step):
    g = Sphere(3)
    # keep away from the south pole, where r0 = r1 e blows up the density ratio
    x1 = uniform(g, 64)
    x1 = g.projx(x1 + torch.tensor([0.0, 0.0, 0.8], dtype=D64))
    solver = RiemannianODESolver(gradient_flow, g)
    x0, log_p = solver.log_likelihood(x1, method="rk4", num_steps=100, step=step)
    torch.testing.assert_close(log_p, _conformal_log_density(x1, math.exp(-1.0)), atol=1e-6,
                               rtol=0)
    # and x0 is where the flow started: r0 = e · r1 on the same meridian
    th0 = torch.atan2(torch.linalg.vector_norm(x0[:, :2], dim=-1), x0[:, 2])
    th1 = torch.atan2(torch.linalg.vector_norm(x1[:, :2], dim=-1), x1[:, 2])
    torch.testing.assert_close(torch.tan(th0 / 2), math.e * torch.tan(th1 / 2), atol=1e-6,
                               rtol=1e-6)


def test_adaptive_likelihood_resolves_a_flow_that_acts_only_near_the_data():
    # v = a(t) P_x e_z with a(t) = k t^(k−1): the same map as the unit-time flow of P_x e_z
    # (λ = e^{−1}), but all of it happens for t within a few 1/k of 1, the way sharp learned
    # densities behave; a uniform grid spends its steps where nothing moves
    k = 200.0
    g = Sphere(3)
    x1 = g.projx(uniform(g, 64) + torch.tensor([0.0, 0.0, 0.8], dtype=D64))
    solver = RiemannianODESolver(lambda x, t: (k * t ** (k - 1))[:, None] * gradient_flow(x, t),
                                 g)
    expected = _conformal_log_density(x1, math.exp(-1.0))
    _, coarse = solver.log_likelihood(x1, method="rk4", num_steps=25)
    assert float((coarse - expected).abs().max()) > 0.1
    x0, adaptive = solver.log_likelihood(x1, method="dopri5", atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(adaptive, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.vector_norm(x0, dim=-1), torch.ones(64, dtype=D64))
    assert solver.nfe > 0
    # a looser tolerance costs fewer evaluations and stays within it
    _, loose = solver.log_likelihood(x1, method="bosh3", atol=1e-5, rtol=1e-5)
    assert float((loose - expected).abs().max()) < 1e-3


def test_adaptive_likelihood_on_the_torus_and_bad_options():
    t7 = FlatTorus(7)
    y = uniform(t7, 16)
    shift = torch.linspace(-1, 1, 7, dtype=D64)
    solver = RiemannianODESolver(lambda x, t: shift.expand_as(x), t7)
    _, log_p = solver.log_likelihood(y, method="dopri5")
    torch.testing.assert_close(log_p, torch.full((16,), -7 * math.log(2 * math.pi), dtype=D64))
    with pytest.raises(ValueError, match="chooses its steps"):
        solver.log_likelihood(y, method="dopri5", num_steps=10)
    with pytest.raises(ValueError, match="step='projx' only"):
        solver.log_likelihood(y, method="dopri5", step="expmap")
    with pytest.raises(ValueError, match="atol"):
        solver.log_likelihood(y, method="dopri5", atol=0.0)
    with pytest.raises(ValueError, match="method must be one of"):
        solver.sample(y, method="dopri5")


def test_hutchinson_likelihood_is_unbiased():
    # one probe per trajectory: the mean over 4,000 copies of one point must sit within 4
    # standard errors of the exact value (the per-copy spread is measured, not assumed)
    g = Sphere(3)
    x1 = g.projx(torch.tensor([[0.3, -0.2, 0.5]], dtype=D64)).expand(4000, 3).contiguous()
    solver = RiemannianODESolver(gradient_flow, g)
    _, exact = solver.log_likelihood(x1[:1], method="midpoint", num_steps=20)
    _, est = solver.log_likelihood(x1, method="midpoint", num_steps=20, exact_divergence=False,
                                   generator=torch.Generator().manual_seed(0))
    se = float(est.std()) / math.sqrt(est.numel())
    assert se > 0
    assert abs(float(est.mean()) - float(exact[0])) < 4 * se


def test_likelihood_gradient_matches_finite_differences():
    g = Sphere(3)
    x1 = g.projx(uniform(g, 8) + torch.tensor([0.0, 0.0, 0.8], dtype=D64))
    scale = torch.tensor(0.7, dtype=D64, requires_grad=True)

    def field(x, t):
        return scale * gradient_flow(x, t) + rotation_field(x, t)

    solver = RiemannianODESolver(field, g)
    _, log_p = solver.log_likelihood(x1, method="rk4", num_steps=20, enable_grad=True)
    (grad,) = torch.autograd.grad(log_p.sum(), scale)
    h = 1e-5
    with torch.no_grad():
        scale += h
        up = solver.log_likelihood(x1, method="rk4", num_steps=20)[1].sum()
        scale -= 2 * h
        down = solver.log_likelihood(x1, method="rk4", num_steps=20)[1].sum()
        scale += h
    fd = (up - down) / (2 * h)
    assert abs(float(grad) - float(fd)) < 1e-6 * (1 + abs(float(fd)))


class LogLine(Geometry):
    """The half-line (0, ∞) with metric dx²/x² (isometric to R through y = log x).

    Its coordinate x is a chart in which the metric is G(x) = 1/x², not the induced one:
    metric_logdet = −2 log x. The base is N(0, 1) in y = log x, a density w.r.t. the Riemannian
    volume dx/x.
    """

    point_shape = (1,)
    dim = 1

    def expmap(self, x, u):
        return x * torch.exp(u / x)

    def logmap(self, x, y):
        return x * torch.log(y / x)

    def projx(self, x):
        return x

    def proju(self, x, u):
        return u

    def inner(self, x, u, v=None):
        return (u * (u if v is None else v) / x**2).sum(-1)

    def metric_logdet(self, x):
        return -2 * torch.log(x).sum(-1)

    def point_error(self, x):
        return torch.zeros(x.shape[:-1], dtype=x.dtype)

    def base_log_prob(self, x):
        y = torch.log(x).sum(-1)
        return -0.5 * y**2 - 0.5 * math.log(2 * math.pi)


def test_metric_correction_for_a_chart_with_a_non_induced_metric():
    # v(x) = x moves y = log x at unit speed, so p1 is N(1, 1) in y (w.r.t. the volume dy):
    # the coordinate trace alone (tr J = 1) would give the wrong answer by log x1 − log x0 = 1.
    g = LogLine()
    x1 = torch.exp(torch.linspace(-2, 3, 11, dtype=D64))[:, None]
    solver = RiemannianODESolver(lambda x, t: x.clone(), g)
    for step in ("projx", "expmap"):
        x0, log_p = solver.log_likelihood(x1, method="rk4", num_steps=50, step=step)
        y1 = torch.log(x1[:, 0])
        expected = -0.5 * (y1 - 1) ** 2 - 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(log_p, expected, atol=1e-7, rtol=0)
        torch.testing.assert_close(x0, x1 / math.e, atol=1e-7, rtol=1e-7)


def test_euclidean_linear_flow_likelihood():
    # v(x) = A x with tr A = 0.5: log p1(x1) = log N(e^{−A} x1) − tr A
    g = Euclidean(2)
    a = torch.tensor([[0.2, 1.0], [-0.4, 0.3]], dtype=D64)
    x1 = torch.randn(16, 2, dtype=D64)
    solver = RiemannianODESolver(lambda x, t: x @ a.T, g)
    x0, log_p = solver.log_likelihood(x1, method="rk4", num_steps=50)
    expected_x0 = x1 @ torch.linalg.matrix_exp(-a).T
    torch.testing.assert_close(x0, expected_x0, atol=1e-8, rtol=0)
    torch.testing.assert_close(log_p, g.base_log_prob(expected_x0) - 0.5, atol=1e-8, rtol=0)


@pytest.mark.parametrize("step", ["projx", "expmap"])
def test_sampling_is_differentiable_when_asked(step):
    # the rotation angle after unit time is ω, so d x1 / d ω = e_z × x1 (float64, exact RK4)
    g = Sphere(3)
    x = uniform(g, 8)
    omega = torch.tensor(0.8, dtype=D64, requires_grad=True)
    solver = RiemannianODESolver(lambda x, t: omega * rotation_field(x, t), g)
    y = solver.sample(x, method="rk4", num_steps=40, step=step, enable_grad=True)
    w = torch.randn(y.shape, dtype=D64)
    (grad,) = torch.autograd.grad((y * w).sum(), omega)
    expected = (rotation_field(rotate_z(x, 0.8), None) * w).sum()
    assert abs(float(grad) - float(expected)) < 1e-6
    assert not solver.sample(x, num_steps=2).requires_grad


def test_empty_batch_passes_through():
    g = Sphere(3)
    x = torch.empty(0, 3, dtype=D64)
    solver = RiemannianODESolver(rotation_field, g)
    assert solver.sample(x, num_steps=3).shape == (0, 3)
    x0, log_p = solver.log_likelihood(x, num_steps=3)
    assert x0.shape == (0, 3) and log_p.shape == (0,)


def test_spd_scaling_flow_preserves_the_affine_invariant_volume():
    # P ↦ e^t P is an isometry of the affine-invariant metric, so log p1(x1) = log p0(x1/e).
    # In matrix coordinates tr J = n(n+1)/2 ≠ 0: only the metric_logdet correction
    # −(n+1)/2 · d/dt log det P_t = −n(n+1)/2 makes the divergence vanish.
    from flowmatch.geometry.spd import SPD

    g = SPD(3)
    x1 = g.sample_base(6, generator=torch.Generator().manual_seed(0), dtype=D64)
    solver = RiemannianODESolver(lambda x, t: x.clone(), g)
    x0, log_p = solver.log_likelihood(x1, method="rk4", num_steps=20)
    # RK4 with h = 0.05 on ẋ = −x: relative error ≈ 20 h⁵/120 ≈ 5e-8
    torch.testing.assert_close(x0, x1 / math.e, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(log_p, g.base_log_prob(x1 / math.e), atol=1e-6, rtol=0)


@pytest.mark.parametrize("exact", [True, False])
def test_hyperboloid_boost_preserves_volume(exact):
    # u(x) = K x with K a boost generator (Minkowski-skew: Kᵀη + ηK = 0) is a Killing field of
    # the Lorentz hyperboloid: its flow exp(tK) is an isometry, so the Riemannian divergence is
    # 0 and log p1(x1) = log p0(exp(−K) x1). The projection here is oblique in Euclidean terms;
    # the symmetric estimate (Pe)ᵀ J (Pe) would give a nonzero divergence.
    from flowmatch.geometry.hyperbolic import Hyperbolic

    g = Hyperbolic(2)
    K = torch.zeros(3, 3, dtype=D64)
    K[0, 1] = K[1, 0] = 0.7
    x1 = g.sample_base(64, generator=torch.Generator().manual_seed(0), dtype=D64)
    solver = RiemannianODESolver(lambda x, t: x @ K.T, g)
    x0, log_p = solver.log_likelihood(x1, method="rk4", num_steps=40, exact_divergence=exact,
                                      generator=torch.Generator().manual_seed(1))
    x0_exact = x1 @ torch.linalg.matrix_exp(-K).T
    torch.testing.assert_close(x0, x0_exact, atol=1e-6, rtol=1e-6)
    err = log_p - g.base_log_prob(x0_exact)
    if exact:
        assert float(err.abs().max()) < 1e-6
    else:
        # one probe per trajectory: unbiased (mean within 4 standard errors), not exact
        se = float(err.std()) / math.sqrt(err.numel())
        assert abs(float(err.mean())) < 4 * se, (float(err.mean()), se)

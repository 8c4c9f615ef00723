"""Divergence: exact traces, Hutchinson unbiasedness, and the Riemannian divergence on S²."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowmatch.solvers import divergence, value_and_divergence
from flowmatch.solvers.divergence import sample_probe

D64 = torch.float64


def sphere_proju(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection onto T_x S² = {u : <u, x> = 0}."""
    return u - (u * x).sum(-1, keepdim=True) * x


def random_sphere_points(n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, 3, generator=gen, dtype=D64)
    return x / x.norm(dim=-1, keepdim=True)


def test_exact_divergence_of_linear_map_is_trace() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=gen, dtype=D64)
    x = torch.randn(7, 5, generator=gen, dtype=D64)
    div = divergence(lambda y: y @ a.T, x)
    assert div.shape == (7,)
    torch.testing.assert_close(div, torch.full((7,), float(torch.trace(a)), dtype=D64))


def test_exact_divergence_matches_full_jacobian_on_image_shaped_data() -> None:
    # a nonlinear, sample-wise field on [B, C, H, W]: compare with the trace of the full
    # Jacobian of each sample, built by torch.autograd.functional.jacobian
    gen = torch.Generator().manual_seed(2)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=D64) * 0.3)

    def fn(y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(conv(y)) * y

    x = torch.randn(3, 2, 3, 4, generator=gen, dtype=D64)
    div = divergence(fn, x)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda z: fn(z[None])[0], x[b])
        expected = torch.diagonal(jac.reshape(24, 24)).sum()
        torch.testing.assert_close(div[b], expected)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe: str) -> None:
    # Replicating one point K times gives K independent probes in one call (each sample draws
    # its own). The estimates' mean must be within 5 standard errors of the exact trace.
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4, 4, generator=gen, dtype=D64)

    def fn(y: torch.Tensor) -> torch.Tensor:
        return torch.sin(y @ w.T) + 0.5 * y.roll(1, dims=-1)

    point = torch.randn(1, 4, generator=gen, dtype=D64)
    exact = divergence(fn, point)[0]
    k = 4000
    est = divergence(fn, point.expand(k, 4).clone(), exact=False, probe=probe, generator=gen)
    se = est.std() / math.sqrt(k)
    assert float(est.std()) > 1e-3  # the Jacobian is not diagonal: the estimator is noisy
    assert abs(float(est.mean() - exact)) < 5 * float(se)


def test_rademacher_is_exact_for_diagonal_jacobians() -> None:
    # εᵀ J ε = Σ J_ii ε_i² = tr J when J is diagonal and ε_i = ±1: zero variance
    x = torch.randn(6, 5, dtype=D64)
    est = divergence(lambda y: torch.tanh(y) * 3.0, x, exact=False, probe="rademacher")
    torch.testing.assert_close(est, divergence(lambda y: torch.tanh(y) * 3.0, x))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_sphere_divergence_of_gradient_field(seed: int) -> None:
    # u(x) = P_x a is the Riemannian gradient of f(x) = <a, x> on S²; its divergence is the
    # Laplace–Beltrami operator of f, a degree-1 spherical harmonic: Δf = −l(l+1) f = −2<a, x>.
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, generator=gen, dtype=D64)
    x = random_sphere_points(5, gen)
    expected = -2.0 * (x @ a)

    def field(y: torch.Tensor) -> torch.Tensor:
        return sphere_proju(y, a.expand_as(y))

    torch.testing.assert_close(divergence(field, x, proju=sphere_proju), expected)
    # the ambient divergence of the same formula is −4<a, x>: the projection matters
    torch.testing.assert_close(divergence(field, x), -4.0 * (x @ a))

    # only tangent derivatives enter: a different extension off the sphere (scaled by |y|⁴,
    # equal to 1 on S²) has the same Riemannian divergence
    def stretched(y: torch.Tensor) -> torch.Tensor:
        return field(y) * (y * y).sum(-1, keepdim=True) ** 2

    torch.testing.assert_close(divergence(stretched, x, proju=sphere_proju), expected)


def test_sphere_hutchinson_with_projected_probes_is_unbiased() -> None:
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(3, generator=gen, dtype=D64)
    x = random_sphere_points(1, gen)
    k = 4000
    est = divergence(lambda y: sphere_proju(y, a.expand_as(y)), x.expand(k, 3).clone(),
                     exact=False, proju=sphere_proju, generator=gen)
    expected = float(-2.0 * (x[0] @ a))
    assert abs(float(est.mean()) - expected) < 5 * float(est.std()) / math.sqrt(k)


def test_sphere_hutchinson_vanishes_for_a_rotation_and_beats_a_one_sided_probe() -> None:
    # a rotation x ↦ ω × x is a Killing field: P J P is skew, so every two-sided estimate
    # (P ε)ᵀ J (P ε) is exactly 0 (a one-sided εᵀ J P ε is not)
    gen = torch.Generator().manual_seed(6)
    omega = torch.randn(3, generator=gen, dtype=D64)
    x = random_sphere_points(2000, gen)
    eps = torch.randn(x.shape, generator=gen, dtype=D64)
    est = divergence(lambda y: torch.linalg.cross(omega.expand_as(y), y), x, exact=False,
                     proju=sphere_proju, probe=eps)
    assert float(est.abs().max()) < 1e-12

    # a generic tangent field: same mean as the exact divergence, lower spread than εᵀ J P ε
    a = torch.randn(3, generator=gen, dtype=D64)

    def field(y: torch.Tensor) -> torch.Tensor:
        spin = torch.linalg.cross(omega.expand_as(y), y)
        return sphere_proju(y, a.expand_as(y) + spin * y[:, :1])

    point = x[:1].expand(4000, 3).clone()
    probe = torch.randn(point.shape, generator=gen, dtype=D64)
    two_sided = divergence(field, point, exact=False, proju=sphere_proju, probe=probe)
    y = point.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(field(y), y, probe)
    one_sided = (vjp * sphere_proju(point, probe)).sum(-1)
    exact = float(divergence(field, x[:1], proju=sphere_proju)[0])
    for est in (two_sided, one_sided):
        assert abs(float(est.mean()) - exact) < 5 * float(est.std()) / math.sqrt(4000)
    assert float(two_sided.var()) < 0.8 * float(one_sided.var())


def test_create_graph_differentiates_the_divergence() -> None:
    # div(P_x a) = −2<a, x> on S², whose Riemannian gradient is −2 P_x a
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, generator=gen, dtype=D64)
    x = random_sphere_points(4, gen).requires_grad_(True)
    div = divergence(lambda y: sphere_proju(y, a.expand_as(y)), x, proju=sphere_proju,
                     create_graph=True)
    (grad,) = torch.autograd.grad(div.sum(), x)
    xd = x.detach()
    torch.testing.assert_close(sphere_proju(xd, grad), sphere_proju(xd, -2.0 * a.expand_as(xd)))
    # without create_graph the result is detached
    assert not divergence(lambda y: y * 2, x.detach()).requires_grad


def test_value_and_divergence_returns_the_field_value() -> None:
    x = torch.randn(4, 3, dtype=D64)
    v, div = value_and_divergence(lambda y: y**2, x)
    torch.testing.assert_close(v, x**2)
    torch.testing.assert_close(div, 2 * x.sum(-1))


def test_fixed_probe_tensor_gives_the_quadratic_form() -> None:
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(3, 3, generator=gen, dtype=D64)
    x = torch.randn(2, 3, generator=gen, dtype=D64)
    eps = torch.randn(2, 3, generator=gen, dtype=D64)
    est = divergence(lambda y: y @ a.T, x, exact=False, probe=eps)
    torch.testing.assert_close(est, ((eps @ a.T) * eps).sum(-1))


def test_probes_have_identity_second_moment() -> None:
    gen = torch.Generator().manual_seed(7)
    like = torch.empty(20000, 3, dtype=D64)
    for kind in ("rademacher", "gaussian"):
        e = sample_probe(like, kind, gen)
        second = e.T @ e / e.shape[0]
        # entries of the empirical second moment have standard error ≤ sqrt(2/n) = 0.01
        torch.testing.assert_close(second, torch.eye(3, dtype=D64), atol=0.05, rtol=0)
    assert set(sample_probe(like, "rademacher", gen).unique().tolist()) == {-1.0, 1.0}


def test_bad_input() -> None:
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="shaped like its input"):
        divergence(lambda y: y.sum(-1), x)
    with pytest.raises(ValueError, match="probe must be one of"):
        divergence(lambda y: y, x, exact=False, probe="sobol")
    with pytest.raises(ValueError, match="probe must have the shape"):
        divergence(lambda y: y, x, exact=False, probe=torch.randn(3, 3))
    with pytest.raises(ValueError, match="floating-point"):
        divergence(lambda y: y, torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        divergence(lambda y: y, torch.tensor([[float("nan"), 0.0]]))


def test_inference_mode_is_refused() -> None:
    with torch.inference_mode():
        x = torch.randn(3, 2)
        with pytest.raises(RuntimeError, match="inference_mode"):
            divergence(lambda y: y * 2.0, x)
    torch.testing.assert_close(divergence(lambda y: y * 2.0, x), torch.full((3,), 4.0))

"""SPD(n) with the affine-invariant metric: maps, invariance, degenerate spectra, volume."""

from __future__ import annotations

import math

import pytest
import torch
from geometry_strategies import FAST, generator, log_uniform, seeds
from hypothesis import given
from hypothesis import strategies as st

from flowmatch._validation import trusted_points
from flowmatch.geometry import SPD
from flowmatch.geometry.spd import sym_funm


def spd_points(g: SPD, batch: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return g.sample_base((batch,), generator=generator(seed), dtype=torch.float64).to(dtype)


def unit_tangent(g: SPD, p: torch.Tensor, seed: int) -> torch.Tensor:
    p64 = p.double()
    u = g.random_tangent(p64, generator=generator(seed))
    return (u / g.norm(p64, u)[..., None, None]).to(p.dtype)


def roundtrip_bound(eps: float, scale: float) -> float:
    """ε/|U| (rounding of Q) plus ε e^{2|U|} (spread of Q's eigenvalues), with headroom 1e3."""
    return 1e3 * eps * (1 / scale + math.exp(2 * scale))


@FAST
@given(seed=seeds, n=st.sampled_from([1, 2, 3, 5]), scale=log_uniform(1e-6, 4.0))
def test_logmap_inverts_expmap_float64(seed, n, scale):
    g = SPD(n)
    p = spd_points(g, 16, seed)
    u = scale * unit_tangent(g, p, seed + 1)
    q = g.expmap(p, u)
    g.check_point(q)
    err = g.norm(p, g.logmap(p, q) - u) / scale
    assert float(err.max()) <= roundtrip_bound(2.0**-53, scale)
    assert float(((g.dist(p, q) - scale).abs() / scale).max()) <= roundtrip_bound(2.0**-53, scale)


@pytest.mark.parametrize("scale", [1e-5, 1e-3, 0.1, 1.0, 3.0])
def test_logmap_inverts_expmap_float32(scale):
    g = SPD(3)
    p = spd_points(g, 500, 0, dtype=torch.float32)
    u = scale * unit_tangent(g, p, 1)
    err = g.norm(p.double(), (g.logmap(p, g.expmap(p, u)) - u).double()) / scale
    assert float(err.max()) <= roundtrip_bound(2.0**-24, scale)


@FAST
@given(seed=seeds, n=st.sampled_from([2, 3]))
def test_dist_closed_form_invariance_and_metric_axioms(seed, n):
    g = SPD(n)
    p, q, r = (spd_points(g, 32, seed + k) for k in range(3))
    d = g.dist(p, q)
    # dist² = Σ log² λ(P⁻¹Q): eigenvalues of the (non-symmetric) P⁻¹Q, computed differently
    lam = torch.linalg.eigvals(torch.linalg.solve(p, q)).real
    torch.testing.assert_close(d, lam.log().pow(2).sum(-1).sqrt(), rtol=1e-9, atol=1e-12)
    v = g.logmap(p, q)
    torch.testing.assert_close(g.expmap(p, v), q, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g.norm(p, v), d, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g.inner(p, v), d**2, rtol=1e-9, atol=1e-12)
    assert bool((g.dist(p, r) <= d + g.dist(q, r) + 1e-9).all())
    torch.testing.assert_close(d, g.dist(q, p), rtol=1e-9, atol=1e-12)
    # congruence P ↦ A P Aᵀ is an isometry for any invertible A
    a = torch.randn(32, n, n, generator=generator(seed + 9), dtype=torch.float64)
    a = a + 2 * torch.eye(n, dtype=torch.float64)
    def cong(m):
        return a @ m @ a.transpose(-1, -2)
    torch.testing.assert_close(g.dist(cong(p), cong(q)), d, rtol=1e-7, atol=1e-9)
    u = g.random_tangent(p, generator=generator(seed + 10))
    torch.testing.assert_close(g.inner(cong(p), cong(u), cong(v)), g.inner(p, u, v),
                               rtol=1e-7, atol=1e-9)


def test_projections():
    g = SPD(3)
    p = spd_points(g, 64, 2)
    z = torch.randn(64, 3, 3, generator=generator(3), dtype=torch.float64)
    u = g.proju(p, z)
    torch.testing.assert_close(u, u.transpose(-1, -2), rtol=0, atol=0)
    torch.testing.assert_close(g.proju(p, u), u)
    g.check_tangent(p, u)
    assert bool((g.inner(p, u) > 0).all())
    torch.testing.assert_close(g.projx(p), p, rtol=1e-12, atol=1e-12)
    # projx repairs asymmetric rounding and raises non-positive eigenvalues to the floor
    bad = p + 1e-9 * z
    g.check_point(g.projx(bad))
    indefinite = torch.diag(torch.tensor([2.0, 1.0, -0.5], dtype=torch.float64))
    fixed = g.projx(indefinite)
    g.check_point(fixed)
    lam = torch.linalg.eigvalsh(fixed)
    torch.testing.assert_close(lam[0], torch.tensor(2e3 * 2.0**-52, dtype=torch.float64))
    torch.testing.assert_close(g.projx(fixed), fixed)


def test_coincident_points_and_identity_have_finite_derivatives():
    g = SPD(3)
    for dtype in (torch.float32, torch.float64):
        p = torch.cat([spd_points(g, 20, 4, dtype=dtype),
                       torch.eye(3, dtype=dtype).expand(2, 3, 3),
                       torch.diag(torch.tensor([2.0, 2.0, 0.5], dtype=dtype))[None]])
        assert bool((g.dist(p, p) == 0).all()) and bool((g.logmap(p, p) == 0).all())
        x = p.clone().requires_grad_(True)
        y = p.clone().requires_grad_(True)
        (g.dist(x, y).sum() + g.logmap(x, y).pow(2).sum()).backward()
        assert bool(torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all())
        u = torch.zeros_like(p, requires_grad=True)
        g.expmap(p, u).sum().backward()
        assert bool(torch.isfinite(u.grad).all())
    # forward mode (the Riemannian solver's chart pull-back): D log_P at P is the identity
    p = spd_points(g, 8, 5)
    v = g.random_tangent(p, generator=generator(6))
    _, jvp = torch.func.jvp(lambda q: g.logmap(p, q), (p,), (v,))
    torch.testing.assert_close(jvp, v, rtol=1e-10, atol=1e-12)
    _, jvp = torch.func.jvp(lambda s: g.expmap(p, s * v), (torch.zeros(()),), (torch.ones(()),))
    torch.testing.assert_close(jvp, v, rtol=1e-10, atol=1e-12)


def test_matrix_functions_have_exact_derivatives():
    w = torch.randn(3, 4, 4, generator=generator(7), dtype=torch.float64)
    w = w @ w.transpose(-1, -2) + 0.5 * torch.eye(4, dtype=torch.float64)
    for kind in ("exp", "expm1", "sqrt", "invsqrt", "log1p"):
        x = (w / w.norm(dim=(-1, -2), keepdim=True)).clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, k=kind: sym_funm(0.5 * (a + a.mT), k), (x,))
    # values agree with torch's matrix exponential, and sqrt² = W
    x = 0.3 * (w + w.mT)
    torch.testing.assert_close(sym_funm(x, "exp"), torch.linalg.matrix_exp(x))
    s = sym_funm(w, "sqrt")
    torch.testing.assert_close(s @ s, w)
    torch.testing.assert_close(sym_funm(w, "invsqrt") @ s, torch.eye(4, dtype=torch.float64)
                               .expand(3, 4, 4))
    with pytest.raises(RuntimeError):  # first order only, and it says so
        y = sym_funm(w.clone().requires_grad_(True), "exp").sum()
        (gr,) = torch.autograd.grad(y, [w], create_graph=True)
        gr.sum().backward()


@pytest.mark.parametrize("dtype,small", [(torch.float64, 1e-10), (torch.float32, 1e-3)])
def test_near_singular_points_are_finite_and_singular_ones_a_clear_error(dtype, small):
    g = SPD(3)
    rot = torch.linalg.qr(torch.randn(3, 3, generator=generator(8), dtype=torch.float64))[0]
    p = (rot @ torch.diag(torch.tensor([small, 1.0, 2.0], dtype=torch.float64)) @ rot.T)
    p = (0.5 * (p + p.T)).to(dtype)
    g.check_point(p)
    # eigh resolves the smallest eigenvalue only to ≈ ε ‖P‖, i.e. relatively to ε κ(P)
    eps_kappa = torch.finfo(dtype).eps * 2.0 / small
    eye = torch.eye(3, dtype=dtype)
    d = g.dist(eye, p)
    expected = math.sqrt(math.log(small) ** 2 + math.log(2.0) ** 2)
    assert abs(float(d) - expected) <= 10 * eps_kappa
    v = g.logmap(p, eye)
    assert bool(torch.isfinite(v).all())
    torch.testing.assert_close(g.expmap(p, v), eye, rtol=0, atol=100 * eps_kappa)
    singular = torch.diag(torch.tensor([0.0, 1.0, 2.0], dtype=dtype))
    with pytest.raises(ValueError, match="positive definite.*smallest eigenvalue is 0"):
        g.check_point(singular)
    # the map checks its point arguments first and names the one that is not positive definite
    with pytest.raises(ValueError, match="logmap argument x .*positive definite.*smallest "
                                         "eigenvalue is 0"):
        g.logmap(singular, eye)
    # inside the library's loops the point check is skipped; the result check still refuses
    with trusted_points(), pytest.raises(ValueError, match="non-finite values.*smallest eigen"):
        g.logmap(singular, eye)
    with pytest.raises(ValueError, match="symmetric"):
        g.check_point(eye + torch.tensor([[0.0, 1e-2, 0.0], [0.0] * 3, [0.0] * 3], dtype=dtype))


def _sym_basis(n: int) -> torch.Tensor:
    """An orthonormal basis of Sym(n) for the Frobenius product, shape [n(n+1)/2, n, n]."""
    basis = []
    for i in range(n):
        for j in range(i, n):
            e = torch.zeros(n, n, dtype=torch.float64)
            if i == j:
                e[i, i] = 1.0
            else:
                e[i, j] = e[j, i] = math.sqrt(0.5)
            basis.append(e)
    return torch.stack(basis)


@pytest.mark.parametrize("n", [2, 3])
def test_metric_logdet_is_the_log_determinant_of_the_gram_matrix(n):
    g = SPD(n)
    basis = _sym_basis(n)
    for p in spd_points(g, 5, 9):
        gram = torch.stack([torch.stack([g.inner(p, a, b) for b in basis]) for a in basis])
        torch.testing.assert_close(torch.logdet(gram), g.metric_logdet(p), rtol=1e-10, atol=1e-10)


def test_metric_logdet_correction_makes_an_isometric_flow_divergence_free():
    # P ↦ e^t P is an isometry of the affine-invariant metric, so the field v(P) = P has zero
    # Riemannian divergence: the flat divergence tr(J P) = n(n+1)/2 must be cancelled exactly by
    # ½ d/dt log det G along the flow (the likelihood's boundary term)
    n = 3
    g = SPD(n)
    p = spd_points(g, 1, 10)[0]
    jac = torch.func.jacrev(lambda x: g.proju(x, x))(p).reshape(n * n, n * n)
    proj = torch.func.jacrev(lambda a: g.proju(p, a))(torch.zeros_like(p)).reshape(n * n, n * n)
    flat_div = torch.trace(jac @ proj)
    assert float(flat_div) == pytest.approx(n * (n + 1) / 2)
    _, rate = torch.func.jvp(lambda s: g.metric_logdet(torch.exp(s) * p),
                             (torch.zeros((), dtype=torch.float64),),
                             (torch.ones((), dtype=torch.float64),))
    assert float(flat_div + 0.5 * rate) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("n", [2, 3])
def test_base_density_volume_factor_matches_the_metric(n):
    # log p(exp A) + log J(A) must equal log N(A) (the Gaussian in Sym(n)'s orthonormal
    # coordinates), where J(A) is the Riemannian volume element of A ↦ exp(A) computed here by
    # autograd from the chart and the metric — independently of the formula in base_log_prob
    g = SPD(n, base_scale=0.8)
    basis = _sym_basis(n)
    gen = generator(11)
    for _ in range(4):
        coords = 0.8 * torch.randn(len(basis), generator=gen, dtype=torch.float64)

        def chart(c):
            return sym_funm(torch.einsum("k,kij->ij", c, basis), "exp")

        jac = torch.func.jacrev(chart)(coords)  # [n, n, d]
        p = chart(coords)
        gram = torch.stack([torch.stack([g.inner(p, jac[..., a], jac[..., b])
                                         for b in range(len(basis))]) for a in range(len(basis))])
        log_j = 0.5 * torch.logdet(gram)
        log_gauss = (-0.5 * (coords / 0.8) ** 2 - math.log(0.8 * math.sqrt(2 * math.pi))).sum()
        torch.testing.assert_close(g.base_log_prob(p) + log_j, log_gauss, rtol=1e-8, atol=1e-8)


def test_base_samples_are_the_wrapped_normal():
    g = SPD(3, base_scale=0.5)
    N = 50_000
    p = g.sample_base((N,), generator=generator(12), dtype=torch.float64)
    g.check_point(p)
    a = torch.stack([sym_funm(p[i * 5000:(i + 1) * 5000] - torch.eye(3, dtype=torch.float64),
                              "log1p") for i in range(10)]).reshape(N, 3, 3)
    coords = torch.einsum("nij,kij->nk", a, _sym_basis(3)) / 0.5
    # standard normal coordinates: mean 0, covariance I (5-sigma bounds)
    assert float(coords.mean(0).abs().max()) < 5 / math.sqrt(N)
    cov = coords.T @ coords / N
    assert float((cov - torch.eye(6, dtype=torch.float64)).abs().max()) < 5 * math.sqrt(2 / N)


def test_arguments_and_repr():
    with pytest.raises(ValueError, match="n .* must be an int ≥ 1"):
        SPD(0)
    with pytest.raises(ValueError, match="base_scale"):
        SPD(2, base_scale=0.0)
    g = SPD(3)
    assert repr(g) == "SPD(3)" and g.dim == 6 and g.point_shape == (3, 3)
    x = g.sample_base((2, 4), dtype=torch.float32)
    assert x.shape == (2, 4, 3, 3) and x.dtype == torch.float32
    assert g.base_log_prob(x).shape == (2, 4) and g.metric_logdet(x).shape == (2, 4)


def test_agrees_with_geoopt_and_scipy_in_float64():
    import warnings

    import numpy as np
    import scipy.linalg as sl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import geoopt
    m = geoopt.SymmetricPositiveDefinite()
    g = SPD(3)
    p, q = spd_points(g, 30, 13), spd_points(g, 30, 14)
    u = g.random_tangent(p, generator=generator(15))
    torch.testing.assert_close(g.dist(p, q), m.dist(p, q), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g.inner(p, u, u), m.inner(p, u, u).reshape(30),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g.logmap(p, q), m.logmap(p, q), rtol=1e-9, atol=1e-9)
    # expmap against an independent scipy evaluation (sqrtm, expm) of the formula
    ref = []
    for a, b in zip(p.numpy(), u.numpy(), strict=True):
        s = np.real(sl.sqrtm(a))
        si = np.linalg.inv(s)
        ref.append(s @ sl.expm(si @ b @ si) @ s)
    ref = torch.tensor(np.array(ref))
    scale = ref.flatten(1).abs().amax(-1)[:, None, None]
    assert float(((g.expmap(p, u) - ref).abs() / scale).max()) < 1e-11

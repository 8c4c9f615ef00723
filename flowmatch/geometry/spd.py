"""Symmetric positive definite matrices with the affine-invariant metric."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowmatch._validation import check_finite, validation_enabled
from flowmatch.geometry._numerics import safe_norm
from flowmatch.geometry.base import Geometry, _as_shape, _checked
from flowmatch.geometry.hyperbolic import log_sinhc


def _sym(m: Tensor) -> Tensor:
    return 0.5 * (m + m.transpose(-1, -2))


def _ratio(num: Tensor, den: Tensor, limit: Tensor) -> Tensor:
    """num/den, replaced by ``limit`` where den is 0 (safe for gradients of the unused branch)."""
    zero = den == 0
    return torch.where(zero, limit, num / torch.where(zero, torch.ones_like(den), den))


def _values_and_differences(lam: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """f(λᵢ) and the divided differences f[λᵢ, λⱼ] (f'(λᵢ) on the diagonal and at ties).

    Each divided difference is written so that it does not cancel when λᵢ ≈ λⱼ.
    """
    li, lj = lam[..., :, None], lam[..., None, :]
    d = li - lj
    if kind in ("exp", "expm1"):
        f = torch.exp(lam) if kind == "exp" else torch.expm1(lam)
        # (e^{λi} − e^{λj})/(λi − λj) = e^{λj} expm1(d)/d
        dd = torch.exp(lj) * _ratio(torch.expm1(d), d, torch.ones_like(d))
    elif kind == "log1p":
        f = torch.log1p(lam)
        # (log1p λi − log1p λj)/(λi − λj) = log1p(r)/r / (1 + λj), r = d/(1 + λj)
        r = d / (1 + lj)
        small = r.abs() < 1e-4
        series = 1 - r / 2 + r * r / 3
        r_safe = torch.where(small, torch.ones_like(r), r)
        dd = torch.where(small, series, torch.log1p(r_safe) / r_safe) / (1 + lj)
    elif kind == "sqrt":
        s = torch.sqrt(lam)
        f = s
        dd = 1 / (s[..., :, None] + s[..., None, :])
    elif kind == "invsqrt":
        s = torch.sqrt(lam)
        f = 1 / s
        si, sj = s[..., :, None], s[..., None, :]
        dd = -1 / (si * sj * (si + sj))
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown matrix function {kind!r}")
    return f, dd


class _SymFunction(torch.autograd.Function):
    """f(W) = V f(Λ) Vᵀ for symmetric W, with the Daleckii–Krein derivative.

    D f(W)[E] = V (F ∘ (Vᵀ E V)) Vᵀ with F the matrix of divided differences. Unlike autograd
    through ``eigh`` (whose backward divides by λᵢ − λⱼ), this is exact and finite when
    eigenvalues coincide, e.g. at W = 0 for logmap(P, P).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(w: Tensor, kind: str) -> tuple[Tensor, Tensor, Tensor]:
        lam, vec = torch.linalg.eigh(_sym(w))
        f, dd = _values_and_differences(lam, kind)
        out = (vec * f[..., None, :]) @ vec.transpose(-1, -2)
        return _sym(out), vec, dd

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, vec, dd = output
        ctx.mark_non_differentiable(vec, dd)
        ctx.save_for_backward(vec, dd)
        ctx.save_for_forward(vec, dd)

    @staticmethod
    def _frechet(vec: Tensor, dd: Tensor, e: Tensor) -> Tensor:
        vt = vec.transpose(-1, -2)
        return _sym(vec @ (dd * (vt @ _sym(e) @ vec)) @ vt)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_vec, _grad_dd):
        vec, dd = ctx.saved_tensors
        # the Fréchet derivative is self-adjoint for the Frobenius product on Sym(n)
        return _SymFunction._frechet(vec, dd, grad_out), None

    @staticmethod
    def jvp(ctx, w_dot, _kind_dot):
        vec, dd = ctx.saved_tensors
        return _SymFunction._frechet(vec, dd, w_dot), None, None


def sym_funm(w: Tensor, kind: str) -> Tensor:
    """Matrix function of a symmetric matrix: ``"exp"``, ``"expm1"``, ``"log1p"``, ``"sqrt"``,
    ``"invsqrt"`` (first-order autograd, forward and reverse; not twice differentiable)."""
    return _SymFunction.apply(w, kind)[0]


class SPD(Geometry):
    """SPD(n): symmetric positive definite n × n matrices with the affine-invariant metric.

    A point is a symmetric positive definite matrix of shape ``[..., n, n]``; a tangent vector
    at P is a symmetric matrix of the same shape (``proju`` symmetrises). The metric is
    ⟨U, V⟩_P = tr(P⁻¹ U P⁻¹ V); it is invariant under P ↦ A P Aᵀ, complete, of non-positive
    curvature, so geodesics are unique and there is no cut locus. dim = n(n+1)/2.

    * expmap(P, U) = P^{½} exp(P^{-½} U P^{-½}) P^{½}, evaluated as P + P^{½} expm1(·) P^{½};
    * logmap(P, Q) = P^{½} log(P^{-½} Q P^{-½}) P^{½}, evaluated with log1p of the whitened
      *difference* P^{-½} (Q − P) P^{-½}, whose small eigenvalues keep their relative accuracy;
    * dist(P, Q) = ‖log(P^{-½} Q P^{-½})‖_F.
    Matrix functions use ``eigh`` with the Daleckii–Krein derivative (``sym_funm``), so
    gradients and forward-mode JVPs stay finite where eigenvalues coincide (P = Q, P = I);
    they are first-order only (a second derivative raises). Accuracy follows the conditioning:
    ``logmap(P, expmap(P, U))`` recovers U to relative error ~ ε κ(P)/|U| for small U and
    ~ ε e^{2|U|} for large U (the eigenvalues of Q spread like e^{±|U|}).

    projx symmetrises and raises eigenvalues below 1e3 ε λ_max to that floor (ε of the dtype):
    ``eigh`` cannot resolve smaller eigenvalues anyway, and the floor keeps P⁻¹ finite. It is a
    projection for the nearest-point problem only up to that floor; use it to repair rounding,
    not to turn indefinite data into SPD data silently (``check_point`` rejects such data).

    Divergence and likelihood. The points' coordinates are the ambient entries, and ``proju``
    is the Frobenius-orthogonal projection onto Sym(n), so tr(J P) is the divergence for the
    flat (Frobenius) volume on Sym(n), not for the Riemannian one. In these coordinates the
    metric is G(P) = (U ↦ P⁻¹ U P⁻¹), whose determinant relative to the Frobenius metric is
    det(P)^{−(n+1)}; ``metric_logdet(P) = −(n+1) log det P`` is therefore *not* zero, and the
    likelihood must add ½ (log det G(x₁) − log det G(x₀)) (the Riemannian volume is
    det(P)^{−(n+1)/2} dP).

    Base distribution: the wrapped normal at the identity. A ~ N(0, σ² I) in an orthonormal
    basis of T_I = Sym(n) (diagonal entries N(0, σ²), off-diagonal N(0, σ²/2)), P = exp(A).
    Its density w.r.t. the Riemannian volume is
        N(A) / J(A),   J(A) = Π_{i<j} sinh(|λᵢ − λⱼ|/2) / (|λᵢ − λⱼ|/2),
    with λ the eigenvalues of A = log P (J is the volume change of exp_I of this symmetric
    space; the tests check it against the metric's own volume element).
    """

    atol = 1e-5
    point_rule = "symmetric and positive definite"

    def __init__(self, n: int, base_scale: float = 1.0) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n (the matrix size) must be an int ≥ 1, got {n!r}")
        base_scale = float(base_scale)
        if not (math.isfinite(base_scale) and base_scale > 0):
            raise ValueError(f"base_scale must be a positive finite number, got {base_scale!r}")
        self.n = n
        self.point_shape = (n, n)
        self.dim = n * (n + 1) // 2
        self.base_scale = base_scale

    # -- maps --------------------------------------------------------------------------
    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return _sym(u)

    def _whiten(self, x: Tensor, u: Tensor) -> Tensor:
        r = sym_funm(x, "invsqrt")
        return _sym(r @ u @ r)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        a = torch.linalg.solve(x, u)
        b = a if v is None else torch.linalg.solve(x, v)
        return (a * b.transpose(-1, -2)).sum((-1, -2))

    def norm(self, x: Tensor, u: Tensor) -> Tensor:
        return safe_norm(self._whiten(x, u), dim=(-1, -2))

    @_checked("x", vectors=("u",))
    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        try:
            s = sym_funm(x, "sqrt")
            y = _sym(x + s @ sym_funm(self._whiten(x, u), "expm1") @ s)
        except torch.linalg.LinAlgError as err:
            self._raise_bad_points("expmap", x, cause=err)
        self._check_result("expmap", y, x)
        return y

    @_checked("x", "y")
    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        try:
            s = sym_funm(x, "sqrt")
            v = _sym(s @ sym_funm(self._whiten(x, y - x), "log1p") @ s)
        except torch.linalg.LinAlgError as err:
            self._raise_bad_points("logmap", x, y, cause=err)
        self._check_result("logmap", v, x, y)
        return v

    @_checked("x", "y")
    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        try:
            d = safe_norm(sym_funm(self._whiten(x, y - x), "log1p"), dim=(-1, -2))
        except torch.linalg.LinAlgError as err:
            self._raise_bad_points("dist", x, y, cause=err)
        self._check_result("dist", d, x, y)
        return d

    def _check_result(self, op: str, out: Tensor, *points: Tensor) -> None:
        # Singular or indefinite inputs make P^{-½} or the logarithm infinite: say so.
        if validation_enabled() and not bool(torch.isfinite(out).all()):
            self._raise_bad_points(op, *points)

    def _raise_bad_points(self, op: str, *points: Tensor, cause: Exception | None = None):
        for k, p in enumerate(points):
            check_finite(f"argument {k} of {op}", p)
        smallest = min(float(torch.linalg.eigvalsh(_sym(p)).min()) for p in points)
        raise ValueError(
            f"{op} on {self} produced non-finite values: the smallest eigenvalue among its "
            f"point arguments is {smallest:.3g}; points must be positive definite "
            "(see check_point / projx)"
        ) from cause

    def projx(self, x: Tensor) -> Tensor:
        lam, vec = torch.linalg.eigh(_sym(x))
        floor = 1e3 * torch.finfo(x.dtype).eps * lam.abs().amax(-1, keepdim=True)
        floor = floor.clamp_min(torch.finfo(x.dtype).tiny)
        lam = torch.maximum(lam, floor)
        return _sym((vec * lam[..., None, :]) @ vec.transpose(-1, -2))

    def metric_logdet(self, x: Tensor) -> Tensor:
        """log det G(P) = −(n+1) log det P relative to the Frobenius metric on Sym(n)."""
        return -(self.n + 1) * torch.linalg.slogdet(x)[1]

    # -- base distribution -------------------------------------------------------------
    def sample_base(self, shape, *, generator=None, dtype=None, device=None) -> Tensor:
        n = self.n
        z = torch.randn((*_as_shape(shape), n, n), generator=generator, dtype=dtype,
                        device=device)
        # (Z + Zᵀ)/2 has N(0, 1) diagonal and N(0, ½) off-diagonal entries: the standard
        # normal in the orthonormal basis {Eᵢᵢ, (Eᵢⱼ + Eⱼᵢ)/√2} of Sym(n)
        off = math.sqrt(0.5) * z.tril(-1)
        diag = torch.diag_embed(z.diagonal(0, -2, -1))
        a = self.base_scale * (off + off.transpose(-1, -2) + diag)
        return sym_funm(a, "exp")

    def base_log_prob(self, x: Tensor) -> Tensor:
        a_eig = torch.log(torch.linalg.eigvalsh(_sym(x)))  # eigenvalues of A = log P
        s, d = self.base_scale, self.dim
        gauss = -0.5 * a_eig.pow(2).sum(-1) / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))
        gaps = (a_eig[..., :, None] - a_eig[..., None, :]).abs()
        iu = torch.triu_indices(self.n, self.n, offset=1, device=x.device)
        half = 0.5 * gaps[..., iu[0], iu[1]]
        return gauss - log_sinhc(half).sum(-1)

    # -- validation --------------------------------------------------------------------
    def point_error(self, x: Tensor) -> Tensor:
        """Relative asymmetry, plus 1 + |λ_min|/scale when x is not positive definite."""
        scale = x.abs().amax((-1, -2)).clamp_min(torch.finfo(x.dtype).tiny)
        asym = (x - x.transpose(-1, -2)).abs().amax((-1, -2)) / scale
        lam_min = torch.linalg.eigvalsh(_sym(x))[..., 0]
        not_pd = (lam_min <= 0).to(x.dtype) * (1 + lam_min.abs() / scale)
        return asym + not_pd

    def check_point(self, x: Tensor, name: str = "x", *, tol: float | None = None) -> None:
        self.check_shape(name, x)
        check_finite(name, x)
        tol = self.tolerance(x.dtype) if tol is None else tol
        scale = x.abs().amax((-1, -2)).clamp_min(torch.finfo(x.dtype).tiny)
        asym = (x - x.transpose(-1, -2)).abs().amax((-1, -2)) / scale
        if asym.numel() and float(asym.max()) > tol:
            raise ValueError(
                f"{name} must lie on {self}: symmetric, |x − xᵀ| ≤ {tol:g} · max|x|, but the "
                f"largest relative asymmetry is {float(asym.max()):.2e}"
            )
        lam_min = torch.linalg.eigvalsh(_sym(x))[..., 0]
        if lam_min.numel() and float(lam_min.min()) <= 0:
            raise ValueError(
                f"{name} must lie on {self}: positive definite (all eigenvalues > 0), but the "
                f"smallest eigenvalue is {float(lam_min.min()):.3g}"
            )

    def __repr__(self) -> str:
        extra = "" if self.base_scale == 1.0 else f", base_scale={self.base_scale:g}"
        return f"SPD({self.n}{extra})"

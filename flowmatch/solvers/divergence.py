"""Divergence of a vector field, exactly or by Hutchinson's trace estimator.

For a field ``fn`` mapping a batch of points x ∈ R^{B × D₁ × … × D_k} to vectors of the same
shape, acting on each sample independently, the divergence of sample b is the trace of its
Jacobian J_b = ∂ fn(x)_b / ∂ x_b over the D = D₁⋯D_k flattened coordinates:

    div fn(x)_b = tr J_b = Σ_i e_iᵀ J_b e_i.

*Exact*: one vector–Jacobian product per coordinate (D backward passes through one forward
pass). The products are batched over the samples, which is correct only when sample b's output
depends on sample b's input alone (no batch-norm in training mode, no attention across the
batch).

*Hutchinson*: for a probe ε with E[ε εᵀ] = I, E[εᵀ J ε] = tr J, so one backward pass gives an
unbiased estimate. With S = (J + Jᵀ)/2 its variance is 2‖S‖_F² for Gaussian probes and
2(‖S‖_F² − Σ_i S_ii²) for Rademacher probes (±1), which are therefore the default.

*On an embedded submanifold* (``proju`` given: P_x projects the ambient coordinates onto the
tangent space T_x, and the Levi-Civita connection is the projected ambient derivative,
∇_w u = P (J w) — the sphere, SO(3) and the torus with the induced metric, and the Lorentz
hyperboloid with the Minkowski projection), the Riemannian divergence of a tangent field is the
trace of w ↦ P J w restricted to T_x, which is tr(P J P) = tr(J P) in ambient coordinates since
P is idempotent (cyclicity). P need not be symmetric (the hyperboloid's is not), so we compute

    exact:       Σ_i e_iᵀ J (P e_i) = tr(J P),
    Hutchinson:  εᵀ J (P ε) with E[ε εᵀ] = I, so E = tr(J P).

(The symmetric form (Pε)ᵀ J (Pε) would give tr(Pᵀ J P), wrong for an oblique P.)

Only derivatives along tangent directions enter, so the value does not depend on how the field
is extended off the manifold.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowmatch._validation import check_finite, validation_enabled

ProjU = Callable[[Tensor, Tensor], Tensor]

_PROBES = ("rademacher", "gaussian")


def sample_probe(
    like: Tensor, kind: str = "rademacher", generator: torch.Generator | None = None
) -> Tensor:
    """A Hutchinson probe ε shaped like ``like`` with E[ε εᵀ] = I (Rademacher ±1 or N(0, I))."""
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return bits.to(like.dtype).mul_(2).sub_(1)
    raise ValueError(f"probe must be one of {_PROBES}, got {kind!r}")


def check_autograd_available() -> None:
    """Raise inside ``torch.inference_mode()``, where no graph is recorded even under
    ``torch.enable_grad()`` and every Jacobian would silently read as zero."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "the divergence (and hence the likelihood) needs autograd, which "
            "torch.inference_mode() disables; call it outside inference_mode "
            "(torch.no_grad() is fine)"
        )


def as_differentiable(x: Tensor) -> Tensor:
    """x itself if it already requires grad, else a detached copy that does (an inference
    tensor, made under ``torch.inference_mode()``, is cloned first: it cannot join a graph)."""
    if x.requires_grad:
        return x
    if x.is_inference():
        x = x.clone()
    return x.detach().requires_grad_(True)


def _sum_event(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).sum(dim=1)


def divergence_of_output(
    v: Tensor,
    x: Tensor,
    *,
    exact: bool = True,
    proju: ProjU | None = None,
    probe: Tensor | None = None,
    create_graph: bool = False,
) -> Tensor:
    """Divergence of the map x ↦ v, where ``v`` was computed from ``x`` with autograd on.

    This is the building block when the value v is needed as well (an ODE right-hand side):
    one forward pass serves both. ``probe`` is the (ambient) Hutchinson probe, required when
    ``exact=False``; with ``proju`` it is projected at ``x`` here, so a probe fixed along a
    trajectory stays unbiased as the tangent space moves. Returns shape [B].
    """
    if v.shape != x.shape:
        raise ValueError(
            f"the field must return a vector shaped like its input {tuple(x.shape)}, "
            f"got {tuple(v.shape)}"
        )
    if not v.requires_grad:
        # v does not depend on anything differentiable: either the field ignores x (zero
        # Jacobian) or autograd was off when v was computed, which must not pass as a zero.
        check_autograd_available()
        if not torch.is_grad_enabled():
            raise RuntimeError("divergence needs autograd: compute v under torch.enable_grad()")
        return torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
    if not exact:
        if probe is None:
            raise ValueError("exact=False needs a probe tensor (see sample_probe)")
        # (P ε)ᵀ J (P ε), whose mean is tr(P J P) = tr(J P), the divergence on the manifold.
        # Projecting on both sides (rather than εᵀ J P ε, with the same mean) drops the
        # normal part of ε, which only adds variance: for a Killing field (a rotation of the
        # sphere, P J P skew) every estimate is then exactly 0.
        tangent_probe = probe if proju is None else proju(x, probe)
        (vjp,) = torch.autograd.grad(v, x, tangent_probe, create_graph=create_graph,
                                     retain_graph=True, allow_unused=True)
        if vjp is None:
            return torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
        return _sum_event(vjp * tangent_probe)

    batch = x.shape[0]
    d = x[0].numel()
    div = torch.zeros(batch, dtype=v.dtype, device=v.device)
    for i in range(d):
        # a fresh basis vector each time: proju may save it for a create_graph backward
        basis = torch.zeros((batch, d), dtype=v.dtype, device=v.device)
        basis[:, i] = 1.0
        e = basis.view(x.shape)
        (vjp,) = torch.autograd.grad(v, x, e, create_graph=create_graph, retain_graph=True,
                                     allow_unused=True)
        if vjp is None:
            break
        if proju is None:
            # e_iᵀ J e_i = J_ii: read the diagonal entry instead of a full dot product
            div = div + vjp.reshape(batch, d)[:, i]
        else:
            # e_iᵀ J (P e_i), the i-th diagonal entry of J P
            div = div + _sum_event(vjp * proju(x, e))
    return div


def value_and_divergence(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    exact: bool = True,
    proju: ProjU | None = None,
    probe: str | Tensor | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """Evaluate ``fn(x)`` and its divergence with one forward pass; see :func:`divergence`.

    Returns (v shaped like x, div of shape [B]). Unless ``create_graph`` is set, both are
    detached from the graph.
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if torch.is_tensor(x) else ""))
    if x.dim() < 1:
        raise ValueError("x must have a leading batch dimension, got a scalar")
    if validation_enabled():
        check_finite("x", x)
    if isinstance(probe, str) or probe is None:
        kind = probe if probe is not None else ("gaussian" if proju is not None else "rademacher")
        if kind not in _PROBES:
            raise ValueError(f"probe must be one of {_PROBES} or a tensor, got {kind!r}")
        probe_tensor = None if exact else sample_probe(x, kind, generator)
    else:
        if probe.shape != x.shape:
            raise ValueError(f"probe must have the shape of x {tuple(x.shape)}, "
                             f"got {tuple(probe.shape)}")
        probe_tensor = probe
    check_autograd_available()
    with torch.enable_grad():
        xg = as_differentiable(x)
        v = fn(xg)
        if not torch.is_tensor(v):
            raise ValueError(f"fn must return a tensor, got {type(v).__name__}")
        div = divergence_of_output(v, xg, exact=exact, proju=proju, probe=probe_tensor,
                                   create_graph=create_graph)
    if not create_graph:
        v, div = v.detach(), div.detach()
    return v, div


def divergence(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    exact: bool = True,
    proju: ProjU | None = None,
    probe: str | Tensor | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> Tensor:
    """Divergence of ``fn`` at ``x``, shape [B].

    Args:
        fn: maps x [B, *event] to vectors of the same shape, sample by sample.
        x: points [B, *event], any event shape (e.g. [B, C, H, W]).
        exact: trace of the Jacobian from D vector–Jacobian products (D = event size); else
            one Hutchinson probe (unbiased, noisy: average calls or use ``exact``).
        proju: ``proju(x, u)``, the projection of ambient u onto the tangent space at x;
            the result is then the divergence on the embedded submanifold, tr(P J P).
        probe: "rademacher" (default without ``proju``), "gaussian" (default with ``proju``),
            or a fixed ambient probe tensor shaped like x.
        generator: random generator for the probe.
        create_graph: keep the graph so the divergence can be differentiated (with respect to
            x and the parameters of ``fn``).
    """
    return value_and_divergence(fn, x, exact=exact, proju=proju, probe=probe,
                                generator=generator, create_graph=create_graph)[1]

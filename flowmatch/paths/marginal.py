"""Marginal velocity targets: the field of the marginal path of a reference set.

For data points y_1 … y_M, a conditional path with densities p_t(x | y) and velocities
u_t(x | y) (source: the path's noise distribution, independent coupling) has the marginal
velocity

    u_t(x) = Σ_j p_t(x | y_j) u_t(x | y_j) / Σ_j p_t(x | y_j),

the exact minimiser of the conditional flow-matching loss when the data are the y_j. Regressing
on it instead of the single-sample target u_t(x_t | x1) keeps the minimiser (for the reference
set's empirical law) and removes most of the target's variance: at small t a sample x_t is
explained by many data points, and the conditional target points at one of them at random.
With a reference set drawn afresh each update (the batch's own x1 and more), this is the
"stable target field" estimator of Xu et al. (ICLR 2023), here on Riemannian and Gaussian
paths; with the whole training set it is exact.

Paths provide ``conditional_log_prob(x_t, x1, t)`` and ``conditional_velocity(x_t, x1, t)``
(with broadcasting over a [B, M] table of pairs): :class:`~flowmatch.paths.GeodesicPath` on a
Sphere, FlatTorus or Euclidean geometry, and :class:`~flowmatch.paths.AffinePath` with a
N(0, I) source.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowmatch.geometry._numerics import posterior_weights
from flowmatch.geometry.base import Geometry
from flowmatch.paths.base import ProbPath


def supports_marginal_velocity(path: ProbPath) -> bool:
    """Whether ``path`` has the conditional density and velocity :func:`marginal_velocity` needs.

    A geodesic path has them only on a geometry that defines
    :meth:`~flowmatch.geometry.base.Geometry.contracted_base_log_prob` in closed form.
    """
    if not (callable(getattr(path, "conditional_log_prob", None))
            and callable(getattr(path, "conditional_velocity", None))):
        return False
    geometry = getattr(path, "geometry", None)
    return geometry is None or (type(geometry).contracted_base_log_prob
                                is not Geometry.contracted_base_log_prob)


def marginal_velocity(path: ProbPath, x_t: Tensor, t: Tensor, reference: Tensor, *,
                      chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """The marginal velocity of ``reference``'s empirical law at (x_t, t).

    Args:
        path: a path with ``conditional_log_prob`` and ``conditional_velocity``.
        x_t: points [B, *point_shape]; ``t``: times [B].
        reference: data points y_j, [M, *point_shape].
        chunk_size: rows of x_t per [rows, M] table (None: all B at once); bounds the memory
            of the pair table at chunk_size · M · prod(point_shape) numbers.

    Returns:
        ``(u, supported)``: u [B, *point_shape] is Σ_j w_j u_t(x_t | y_j) with posterior weights
        w_j ∝ p_t(x_t | y_j); ``supported`` [B] is False where no y_j has x_t in its support
        (only possible for paths with bounded conditional supports, e.g. a point that is not
        on any y_j's path, or rounding at the support's edge); u is 0 there.
    """
    if not supports_marginal_velocity(path):
        raise TypeError(f"{path!r} has no closed-form conditional density and velocity "
                        "(conditional_log_prob / conditional_velocity), so its marginal "
                        "velocity is not available")
    if reference.dim() < 1 or reference.shape[0] == 0:
        raise ValueError(f"reference must hold at least one point, got shape "
                         f"{tuple(reference.shape)}")
    if x_t.shape[1:] != reference.shape[1:]:
        raise ValueError(f"x_t [B, *point_shape] and reference [M, *point_shape] must share the "
                         f"point shape, got {tuple(x_t.shape)} and {tuple(reference.shape)}")
    if t.shape != (x_t.shape[0],):
        raise ValueError(f"t must have shape [B] = [{x_t.shape[0]}], got {tuple(t.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    reference = reference.to(device=x_t.device, dtype=x_t.dtype)
    ref = reference.unsqueeze(0)
    rows = x_t.shape[0] if chunk_size is None else chunk_size
    out, ok = [], []
    fused = getattr(path, "posterior_velocity", None)
    for xs, ts in zip(x_t.split(rows), t.split(rows), strict=True):
        if fused is not None:
            u, supported = fused(xs, ts, reference)
        else:
            xe, te = xs.unsqueeze(1), ts.unsqueeze(1)
            log_w = path.conditional_log_prob(xe, ref, te)          # [b, M]
            w, supported = posterior_weights(log_w)
            vel = path.conditional_velocity(xe, ref, te)            # [b, M, *point_shape]
            u = torch.einsum("bm,bmd->bd", w, vel.reshape(*w.shape, -1)).reshape(xs.shape)
        out.append(u)
        ok.append(supported)
    return torch.cat(out), torch.cat(ok)

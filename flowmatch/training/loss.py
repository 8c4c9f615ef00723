"""The conditional flow-matching regression loss."""

from __future__ import annotations

from torch import Tensor

from flowmatch.geometry.base import Geometry

_REDUCTIONS = ("mean", "sum", "none")


def cfm_loss(
    prediction: Tensor,
    target: Tensor,
    geometry: Geometry | None = None,
    x_t: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Squared error ‖u_θ(x_t, t) − u_t(x_t | x1)‖² between predicted and target velocities.

    Both are tangent vectors at x_t of shape [B, *point_shape]. Per sample the loss is the
    squared norm of the difference summed over the point dimensions — the Euclidean one, or the
    Riemannian one ``geometry.inner(x_t, d, d)`` when a geometry is given (then ``x_t``, the base
    point of the tangent vectors, is required). ``reduction`` is "mean" (over the batch),
    "sum" or "none" (a [B] tensor).

    Note the per-sample *sum* over coordinates: for Euclidean data the "mean" loss is
    ``dim × F.mse_loss``. The minimiser is the same; the scale matters for gradient clipping.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    if prediction.dim() < 1:
        raise ValueError("prediction must have a batch dimension, got a scalar")
    diff = prediction - target
    if geometry is None:
        per_sample = diff.pow(2).reshape(diff.shape[0], -1).sum(-1)
    else:
        if x_t is None:
            raise ValueError("x_t (the base point of the tangent vectors) is required with a "
                             "geometry, since the metric depends on the point")
        if x_t.shape != prediction.shape:
            raise ValueError(
                f"x_t must have the shape of prediction {tuple(prediction.shape)}, got "
                f"{tuple(x_t.shape)}"
            )
        per_sample = geometry.inner(x_t, diff, diff)
        if per_sample.dim() != 1:
            per_sample = per_sample.reshape(per_sample.shape[0], -1).sum(-1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample

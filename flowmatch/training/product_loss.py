"""One loss for a joint flow on a Product: regression on continuous factors, cross-entropy on
discrete ones, weighted and summed — per sample.

Continuous factor k contributes ‖u_θ − u_t‖²_g (the Riemannian CFM loss of
:func:`~flowmatch.training.loss.cfm_loss`), divided by the factor's dimension when
``per_dimension`` is set so factors of different sizes are comparable (FlowMM weights
coordinates : lattice : types as 400 : 1 : 40 on such per-dimension losses). Discrete factor k
contributes the cross-entropy −log p_{1|t}(x₁ | x_t) of its tokens. A factor of the
product's ``mean_free`` list is compared after each sample's mean is removed from the
difference (its velocities are only defined up to a translation). Fixed factors (a
:class:`~flowmatch.paths.ProductPath` factor given as None) have no loss.

Reduction. Each factor's loss is first reduced *per sample*: for a ragged factor of a
:class:`~flowmatch.geometry.ProductPoint` (one row per atom) by the mean over the sample's rows
(``rows="mean"``, every crystal weighs the same whatever its size) or their sum
(``rows="sum"``); for a dense factor by the mean over its non-batch token dimensions (discrete)
or the sum over the point (continuous). The weighted sum over factors is then averaged over
samples (``reduction="mean"``) or returned per sample (``"none"``, shape [S]).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from flowmatch.geometry.discrete import Discrete
from flowmatch.geometry.product import Product, ProductPoint
from flowmatch.paths.base import PathSample
from flowmatch.training.discrete_loss import discrete_cross_entropy
from flowmatch.training.loss import cfm_loss

_REDUCTIONS = ("mean", "sum", "none")


def _per_sample(layout: Mapping[str, Tensor], name: str, values: Tensor, rows: str) -> Tensor:
    """Row losses of factor ``name`` → one value per sample."""
    if isinstance(layout, ProductPoint) and layout.is_ragged(name):
        seg = layout.segments
        return seg.mean(values) if rows == "mean" else seg.sum(values)
    return values.reshape(values.shape[0], -1).mean(-1) if values.dim() > 1 else values


def product_loss(
    outputs: Mapping[str, Tensor],
    samples: Mapping[str, PathSample],
    geometry: Product,
    weights: Mapping[str, float] | None = None,
    *,
    per_dimension: bool = True,
    keep_unmasked: bool = True,
    rows: str = "mean",
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of per-factor losses; returns (total, {factor: loss}).

    ``outputs``: the field's dict (tangent vectors / logits; fixed factors may be absent);
    ``samples``: the :class:`~flowmatch.paths.ProductPath` draw. ``weights`` default to 1 for
    every factor; a factor missing from ``weights`` gets 1, a weight for an unknown factor is
    an error. ``total`` and every part are reduced by ``reduction`` over samples ("mean",
    "sum", or "none" for [S] per-sample values).
    """
    if not isinstance(geometry, Product):
        raise TypeError(f"geometry must be a Product, got {type(geometry).__name__}")
    if rows not in ("mean", "sum"):
        raise ValueError(f"rows must be 'mean' or 'sum', got {rows!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    names = set(geometry.factors)
    fixed = set(getattr(samples, "fixed", ()))
    if set(samples) != names:
        raise ValueError(f"samples must have the factors {sorted(names)}, got {sorted(samples)}")
    if not isinstance(outputs, Mapping) or set(outputs) - names or (names - fixed) - set(outputs):
        got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
        raise ValueError(f"outputs must have the factors {sorted(names - fixed)}"
                         + (f" (fixed factors {sorted(fixed)} may be omitted)" if fixed else "")
                         + f", got {got}")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - names)
    if unknown:
        raise ValueError(f"weights name unknown factors {unknown}; factors are {sorted(names)}")
    layout = getattr(samples, "x_t", None)
    if layout is None:
        layout = {k: s.x_t for k, s in samples.items()}
    parts: dict[str, Tensor] = {}
    for name, g in geometry.factors.items():
        if name in fixed:
            continue
        s = samples[name]
        if g.is_discrete:
            if not isinstance(g, Discrete):
                raise TypeError(f"discrete factor {name!r} must be a Discrete space")
            per_row = discrete_cross_entropy(outputs[name], s.x1, s.x_t, g,
                                             keep_unmasked=keep_unmasked, reduction="none")
        else:
            if s.dx_t is None:
                raise ValueError(f"the path sample of continuous factor {name!r} has no dx_t")
            prediction, target = outputs[name], s.dx_t
            if name in geometry.mean_free:
                diff = geometry.remove_mean(layout, name, prediction - target)
                per_row = cfm_loss(diff, diff.new_zeros(()).expand_as(diff), g, s.x_t,
                                   reduction="none")
            else:
                per_row = cfm_loss(prediction, target, g, s.x_t, reduction="none")
            if per_dimension:
                per_row = per_row / max(g.dim, 1)
        per_sample = _per_sample(layout, name, per_row, rows)
        parts[name] = per_sample
    total = sum(weights.get(k, 1.0) * v for k, v in parts.items())

    def reduce(v: Tensor) -> Tensor:
        return v.mean() if reduction == "mean" else v.sum() if reduction == "sum" else v

    return reduce(total), {k: reduce(v) for k, v in parts.items()}

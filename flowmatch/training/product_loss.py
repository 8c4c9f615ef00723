"""One loss for a joint flow on a Product: regression on continuous factors, cross-entropy on
discrete ones, weighted and summed.

Continuous factor k contributes E‖u_θ − u_t‖²_g (the Riemannian CFM loss of
:func:`~flowmatch.training.loss.cfm_loss`), divided by the factor's dimension when
``per_dimension`` is set so factors of different sizes are comparable (FlowMM weights
coordinates : lattice : types as 400 : 1 : 40 on such per-dimension losses). Discrete factor k
contributes the mean cross-entropy −log p_{1|t}(x₁ | x_t) of its tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from flowmatch.geometry.discrete import Discrete
from flowmatch.geometry.product import Product
from flowmatch.paths.base import PathSample
from flowmatch.training.discrete_loss import discrete_cross_entropy
from flowmatch.training.loss import cfm_loss


def product_loss(
    outputs: Mapping[str, Tensor],
    samples: Mapping[str, PathSample],
    geometry: Product,
    weights: Mapping[str, float] | None = None,
    *,
    per_dimension: bool = True,
    keep_unmasked: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of per-factor losses; returns (total, {factor: loss}).

    ``outputs``: the field's dict (tangent vectors / logits); ``samples``: the
    :class:`~flowmatch.paths.ProductPath` draw. ``weights`` default to 1 for every factor;
    a factor missing from ``weights`` gets 1, a weight for an unknown factor is an error.
    """
    if not isinstance(geometry, Product):
        raise TypeError(f"geometry must be a Product, got {type(geometry).__name__}")
    names = set(geometry.factors)
    for label, given in (("outputs", outputs), ("samples", samples)):
        if set(given) != names:
            raise ValueError(f"{label} must have the factors {sorted(names)}, got {sorted(given)}")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - names)
    if unknown:
        raise ValueError(f"weights name unknown factors {unknown}; factors are {sorted(names)}")
    parts: dict[str, Tensor] = {}
    for name, g in geometry.factors.items():
        s = samples[name]
        if g.is_discrete:
            if not isinstance(g, Discrete):
                raise TypeError(f"discrete factor {name!r} must be a Discrete space")
            parts[name] = discrete_cross_entropy(outputs[name], s.x1, s.x_t, g,
                                                 keep_unmasked=keep_unmasked)
        else:
            if s.dx_t is None:
                raise ValueError(f"the path sample of continuous factor {name!r} has no dx_t")
            loss = cfm_loss(outputs[name], s.dx_t, g, s.x_t)
            parts[name] = loss / max(g.dim, 1) if per_dimension else loss
    total = sum(weights.get(k, 1.0) * v for k, v in parts.items())
    return total, parts

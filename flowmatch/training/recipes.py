"""Recipes: a velocity field and its :func:`~flowmatch.training.fit` settings in one call.

:func:`train_flow` is the recipe of the Riemannian benchmarks (``benchmarks/sphere_earth.py``
on S², ``benchmarks/torus_rna.py`` on T⁷): Riemannian conditional flow matching on the
geodesic CondOT path with AdamW on a cosine schedule, a parameter EMA, optional
marginal-velocity targets, times weighted towards the data and geodesic data noise; it returns
the frozen EMA field, ready for :func:`flowmatch.evaluation.flow_nll`. :func:`build_field`
makes its network.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch
from torch import Tensor, nn

from flowmatch.geometry.base import Geometry
from flowmatch.models.ambient import AmbientField
from flowmatch.models.resnet import ResidualMLP
from flowmatch.models.wrappers import TangentProjected
from flowmatch.paths.geodesic import GeodesicPath
from flowmatch.training.fit import fit
from flowmatch.training.time_sampling import KumaraswamyTime


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def build_field(geometry: Geometry, in_dim: int, out_dim: int, *, hidden: int, layers: int,
                features: nn.Module | None = None, blocks: int = 0) -> TangentProjected:
    """u(x, t) = P_x f(x, t) for f an :class:`~flowmatch.models.AmbientField` of ``layers``
    hidden layers of width ``hidden`` or, with ``blocks`` > 0, a
    :class:`~flowmatch.models.ResidualMLP` of that many blocks (``layers`` then unused).

    Both take ``features`` φ(x) [B, in_dim] (x itself when None) and a 32-dimensional time
    embedding of scale 20 and max period 100, and output [B, out_dim] ambient numbers, made
    tangent to ``geometry`` by :class:`~flowmatch.models.TangentProjected`.
    """
    _check_int("blocks", blocks, 0)
    net: nn.Module
    if blocks:
        net = ResidualMLP(in_dim, out_dim, hidden=hidden, blocks=blocks, features=features,
                          time_embed_dim=32, time_scale=20.0, max_period=100.0)
    else:
        net = AmbientField(in_dim, out_dim, hidden=hidden, layers=layers, features=features,
                           time_embed_dim=32, time_scale=20.0, max_period=100.0)
    return TangentProjected(net, geometry)


def train_flow(geometry: Geometry, train: Tensor, *, hidden: int, layers: int, steps: int,
               batch: int, lr: float, seed: int, features: nn.Module | None = None,
               in_dim: int | None = None, out_dim: int | None = None,
               marginal_target: int | Tensor | Literal["all"] | None = None,
               time_power: float = 1.0, weight_decay: float = 0.0, data_noise: float = 0.0,
               blocks: int = 0) -> tuple[nn.Module, float]:
    """Riemannian CFM on the geodesic CondOT path; returns (EMA field, CPU seconds of training).

    ``train`` [N, *point_shape] holds points of ``geometry``. The field is
    :func:`build_field`\\ (geometry, in_dim, out_dim, ...), with ``in_dim`` defaulting to
    ``features.out_dim`` (or the points' last axis without features) and ``out_dim`` to the
    points' last axis; its initial weights come from ``torch.manual_seed(seed)`` and every
    draw of training from ``fit(seed=seed)``. Training: ``steps`` AdamW updates of batch
    ``batch`` at learning rate ``lr`` (cosine to 0 after min(200, steps // 10) warm-up steps)
    and ``weight_decay``, EMA decay min(0.999, 1 − 10 / steps).

    * ``marginal_target``: regress on the marginal velocity over the batch plus that many
      reference draws (``fit(marginal_target=N)``), over the whole of ``train`` ("all"), or
      on the conditional velocity (None).
    * ``time_power`` P: training times t = 1 − (1 − u)^P, u ~ U(0, 1)
      (:class:`~flowmatch.training.KumaraswamyTime`\\ (1, 1/P); P = 1 uniform), weight near
      the data where sharp densities are made.
    * ``data_noise`` ε > 0: train on x1 = exp_y(ε P_y ξ), ξ ~ N(0, I) ambient, for training
      points y: the training law smoothed by a kernel of geodesic radius ≈ ε (on S² close to
      a von Mises–Fisher kernel of κ = 1/ε²), a regulariser against fitting the few thousand
      training points themselves; the marginal-velocity reference draws are smoothed alike.

    The returned field is in eval mode with its parameters frozen.
    """
    if not torch.is_tensor(train) or train.dim() < 1 or train.shape[0] < 1:
        raise ValueError(f"train must be a tensor of at least one point [N, *point_shape], got "
                         f"{tuple(train.shape) if torch.is_tensor(train) else type(train)}")
    _check_int("steps", steps, 1)
    if isinstance(time_power, bool) or not isinstance(time_power, (int, float)) \
            or not (math.isfinite(time_power) and time_power > 0):
        raise ValueError(f"time_power must be a positive finite number, got {time_power!r}")
    if isinstance(data_noise, bool) or not isinstance(data_noise, (int, float)) \
            or not (math.isfinite(data_noise) and data_noise >= 0):
        raise ValueError(f"data_noise must be a finite number ≥ 0, got {data_noise!r}")
    if isinstance(marginal_target, str) and marginal_target != "all":
        raise ValueError(f"marginal_target must be None, an int ≥ 0, a tensor of points or "
                         f"'all', got {marginal_target!r}")
    if in_dim is None:
        in_dim = getattr(features, "out_dim", None) if features is not None else None
    torch.manual_seed(seed)
    d = train.shape[-1]
    model = build_field(geometry, in_dim or d, out_dim or d, hidden=hidden, layers=layers,
                        features=features, blocks=blocks)
    cpu0 = time.process_time()

    def sample_data(n: int, gen: torch.Generator) -> Tensor:
        y = train[torch.randint(0, train.shape[0], (n,), generator=gen)]
        if data_noise == 0:
            return y
        return geometry.expmap(y, data_noise * geometry.random_tangent(y, generator=gen))

    # an EMA horizon of ~1/10 of the run: 0.999 would still sit near the initial weights
    # after a few hundred quick-mode steps (and under 10 steps, no averaging at all)
    ema = max(0.0, min(0.999, 1.0 - 10.0 / steps))
    if isinstance(marginal_target, str):  # "all", checked above
        marginal_target = train
    result = fit(model, sample_data, GeodesicPath(geometry), geometry, steps=steps,
                 batch_size=batch, lr=lr, weight_decay=weight_decay, ema_decay=ema,
                 lr_schedule="cosine",
                 warmup_steps=min(200, steps // 10), seed=seed, progress=False,
                 marginal_target=marginal_target,
                 time_sampler=None if time_power == 1 else KumaraswamyTime(1.0, 1 / time_power),
                 log_every=max(1, steps // 10))
    field = result.ema_model if result.ema_model is not None else result.model
    field.eval()
    for p in field.parameters():
        p.requires_grad_(False)
    return field, time.process_time() - cpu0

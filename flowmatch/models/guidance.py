"""Classifier-free guidance: condition dropout for training and the guided field for sampling."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def drop_condition(
    cond: Tensor,
    p: float,
    null_cond: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace each sample's condition by ``null_cond`` with probability ``p``.

    ``cond`` has shape [B, *c] and ``null_cond`` shape [*c] (or anything broadcastable to it);
    the B Bernoulli(p) draws are independent. Training on the result teaches one network both
    u(x, t | c) and the unconditional u(x, t | ∅), which :class:`ClassifierFreeGuidance` mixes.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    if cond.dim() < 1:
        raise ValueError(f"cond must have a batch dimension, got shape {tuple(cond.shape)}")
    null = torch.as_tensor(null_cond, device=cond.device).to(cond.dtype)
    if p == 0.0:
        return cond
    drop = torch.rand(cond.shape[0], generator=generator, device=cond.device) < p
    drop = drop.reshape(-1, *([1] * (cond.dim() - 1)))
    return torch.where(drop, null.expand(cond.shape[1:]), cond)


class ClassifierFreeGuidance(nn.Module):
    """The guided velocity u_w = u(x, t | ∅) + w (u(x, t | c) − u(x, t | ∅)).

    ``scale`` w = 0 is the unconditional field, w = 1 the conditional one, w > 1 extrapolates
    towards the condition (sharper, less diverse samples). The wrapped field is called as
    ``field(x, t, cond=...)``.

    ``null_cond`` is the value meaning "no condition" (per sample, e.g. ``model.null_cond``).
    When it is given, both terms come from one forward pass on the doubled batch
    [x; x] with conditions [c; ∅]; with ``null_cond=None`` the unconditional term is
    ``field(x, t)`` called without ``cond`` (two passes). At w = 0 or w = 1 only the needed
    pass runs, so those scales reproduce the plain fields exactly.
    """

    def __init__(
        self,
        field: Callable[..., Tensor],
        scale: float,
        *,
        null_cond: Tensor | int | float | None = None,
    ) -> None:
        super().__init__()
        if not callable(field):
            raise TypeError(f"field must be callable, got {type(field).__name__}")
        scale = float(scale)
        if scale != scale or scale in (float("inf"), float("-inf")):
            raise ValueError(f"scale must be finite, got {scale!r}")
        self.field = field
        self.scale = scale
        self.null_cond = None if null_cond is None else torch.as_tensor(null_cond)

    def _unconditional(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if self.null_cond is None:
            return self.field(x, t)
        null = self.null_cond.to(device=cond.device, dtype=cond.dtype)
        return self.field(x, t, cond=null.expand(cond.shape).contiguous())

    def forward(self, x: Tensor, t: Tensor, *, cond: Tensor) -> Tensor:
        if cond.dim() < 1 or cond.shape[0] != x.shape[0]:
            raise ValueError(
                f"cond must have one row per sample ({x.shape[0]}), got shape {tuple(cond.shape)}"
            )
        w = self.scale
        if w == 1.0:
            return self.field(x, t, cond=cond)
        if w == 0.0:
            return self._unconditional(x, t, cond)
        if self.null_cond is None:
            u_cond = self.field(x, t, cond=cond)
            u_uncond = self.field(x, t)
        else:
            batch = x.shape[0]
            null = self.null_cond.to(device=cond.device, dtype=cond.dtype)
            cond2 = torch.cat([cond, null.expand(cond.shape)], dim=0)
            t = torch.as_tensor(t, device=x.device)
            if t.numel() == 1:  # a shared time: give each half of the doubled batch its copy
                t = t.reshape(1).expand(batch)
            u_both = self.field(torch.cat([x, x], dim=0), torch.cat([t, t]), cond=cond2)
            u_cond, u_uncond = u_both[:batch], u_both[batch:]
        return u_uncond + w * (u_cond - u_uncond)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


class ProductGuidance(nn.Module):
    """Classifier-free guidance of a product field: one scale w for every factor.

    ``field(x, t, cond=c)`` returns a mapping factor → output. A continuous factor's velocity is
    mixed as in :class:`ClassifierFreeGuidance`, u_w = u(·|∅) + w (u(·|c) − u(·|∅)); a factor
    named in ``discrete`` returns posterior logits, mixed in log-probability space,

        log p_w = log p(·|∅) + w (log p(·|c) − log p(·|∅))

    (softmax renormalises; this is :class:`~flowmatch.models.DiscreteGuidance` with its scale
    w − 1). w = 0 is the unconditional field, w = 1 the conditional one (one pass each), other w
    cost two passes: x may be a ragged :class:`~flowmatch.geometry.ProductPoint`, which is not
    doubled into one batch. ``null_cond`` is the condition meaning "none", broadcast to the
    shape of ``cond`` (e.g. NaN for a network that reads NaN as a dropped label).
    """

    def __init__(self, field: Callable[..., Mapping[str, Tensor]], scale: float, *,
                 null_cond: Tensor | float, discrete: Sequence[str] = ()) -> None:
        super().__init__()
        if not callable(field):
            raise TypeError(f"field must be callable, got {type(field).__name__}")
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale!r}")
        if isinstance(discrete, str):
            raise TypeError("discrete must be a sequence of factor names, not a string")
        self.field, self.scale = field, scale
        self.null_cond = torch.as_tensor(null_cond)
        self.discrete = tuple(discrete)

    def forward(self, x: Any, t: Tensor, *, cond: Tensor) -> dict[str, Tensor]:
        w = self.scale
        null = self.null_cond.to(device=cond.device, dtype=cond.dtype).expand(cond.shape)
        if w == 1.0:
            return dict(self.field(x, t, cond=cond))
        unconditional = dict(self.field(x, t, cond=null.contiguous()))
        if w == 0.0:
            return unconditional
        conditional = dict(self.field(x, t, cond=cond))
        if set(conditional) != set(unconditional):
            raise ValueError("the field returned different factors with and without the "
                             f"condition: {sorted(conditional)} vs {sorted(unconditional)}")
        missing = [name for name in self.discrete if name not in conditional]
        if missing:
            raise ValueError(f"discrete factors {missing} are not among the field's outputs "
                             f"{sorted(conditional)}")
        out = {}
        for name, u_c in conditional.items():
            u_u = unconditional[name]
            if name in self.discrete:
                u_c, u_u = torch.log_softmax(u_c, dim=-1), torch.log_softmax(u_u, dim=-1)
            out[name] = u_u + w * (u_c - u_u)
        return out

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, discrete={self.discrete}"

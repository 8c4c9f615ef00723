"""A multilayer-perceptron velocity field for flat data of any fixed shape."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flowmatch._validation import validation_enabled
from flowmatch.models.embedding import SinusoidalTimeEmbedding


class MLP(nn.Module):
    """Velocity field u_θ(x, t[, c]) as a multilayer perceptron.

    A point is a tensor of shape ``point_shape`` (default ``(dim,)``) holding ``dim`` numbers;
    ``forward(x, t, cond=...)`` takes a batch x of shape [B, *point_shape] and times t of shape
    [B] (a scalar or [1] is broadcast to the batch) and returns a vector of the same shape as x —
    an ambient velocity, to be projected by :class:`~flowmatch.models.TangentProjected` on a
    curved geometry.

    The input of the first layer is the concatenation of the flattened x, a sinusoidal embedding
    of t and, for conditional models, an embedding of the condition. ``layers`` hidden layers of
    width ``hidden`` follow, each a Linear map and the activation, then a Linear read-out.

    Conditioning (at most one of the two):

    * ``num_classes=K``: ``cond`` is an integer tensor [B] with values in 0 … K − 1, or the *null
      class* K meaning "no condition" (used by classifier-free guidance); ``cond=None`` is the
      null class for every sample. ``null_cond`` is ``tensor(K)``.
    * ``cond_dim=C``: ``cond`` is a float tensor [B, C]; the null condition is the zero vector
      (``cond=None`` is the same as zeros), so condition dropout must replace c by 0.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 512,
        layers: int = 4,
        *,
        activation: Callable[[], nn.Module] = nn.SiLU,
        time_embed_dim: int = 64,
        time_scale: float = 1000.0,
        cond_dim: int | None = None,
        num_classes: int | None = None,
        class_embed_dim: int = 32,
        point_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("layers", layers),
                            ("time_embed_dim", time_embed_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if cond_dim is not None and num_classes is not None:
            raise ValueError(
                f"give at most one of cond_dim and num_classes, got cond_dim={cond_dim} and "
                f"num_classes={num_classes}"
            )
        if cond_dim is not None and (not isinstance(cond_dim, int) or cond_dim < 1):
            raise ValueError(f"cond_dim must be a positive integer, got {cond_dim!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.point_shape = (dim,) if point_shape is None else tuple(int(s) for s in point_shape)
        if math.prod(self.point_shape) != dim:
            raise ValueError(
                f"point_shape {self.point_shape} holds {math.prod(self.point_shape)} numbers "
                f"but dim is {dim}"
            )
        self.dim = dim
        self.cond_dim = cond_dim
        self.num_classes = num_classes

        self.time_embedding = SinusoidalTimeEmbedding(time_embed_dim, scale=time_scale)
        in_features = dim + time_embed_dim
        if num_classes is not None:
            # index num_classes is the learned null class of classifier-free guidance
            self.class_embedding = nn.Embedding(num_classes + 1, class_embed_dim)
            in_features += class_embed_dim
        elif cond_dim is not None:
            in_features += cond_dim

        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), activation()]
            width = hidden
        blocks.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*blocks)

    @property
    def null_cond(self) -> Tensor | None:
        """The condition value meaning "unconditional" (None for an unconditional model)."""
        if self.num_classes is not None:
            return torch.tensor(self.num_classes)
        if self.cond_dim is not None:
            return torch.zeros(self.cond_dim)
        return None

    def _check(self, x: Tensor, t: Tensor) -> None:
        if x.dim() < 1 or tuple(x.shape[1:]) != self.point_shape:
            raise ValueError(
                f"x must have shape [B, {', '.join(map(str, self.point_shape))}], "
                f"got shape {tuple(x.shape)}"
            )
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, x.shape[0])):
            raise ValueError(
                f"t must be a scalar or of shape [B] = [{x.shape[0]}], got shape {tuple(t.shape)}"
            )

    def _cond_features(self, cond: Tensor | None, batch: int, like: Tensor) -> Tensor | None:
        if self.num_classes is not None:
            if cond is None:
                cond = torch.full((batch,), self.num_classes, dtype=torch.long, device=like.device)
            if cond.shape != (batch,) or cond.is_floating_point() or cond.is_complex():
                raise ValueError(
                    f"cond must be an integer tensor of shape [B] = [{batch}] for a model with "
                    f"num_classes={self.num_classes}, got {cond.dtype} of shape "
                    f"{tuple(cond.shape)}"
                )
            if validation_enabled() and cond.numel():
                lo, hi = int(cond.min()), int(cond.max())
                if lo < 0 or hi > self.num_classes:
                    raise ValueError(
                        f"cond must hold classes in [0, {self.num_classes}] (the last one is the "
                        f"null class), got values in [{lo}, {hi}]"
                    )
            return self.class_embedding(cond)
        if self.cond_dim is not None:
            if cond is None:
                return like.new_zeros(batch, self.cond_dim)
            if cond.shape != (batch, self.cond_dim):
                raise ValueError(
                    f"cond must have shape [B, cond_dim] = [{batch}, {self.cond_dim}], got "
                    f"shape {tuple(cond.shape)}"
                )
            return cond.to(like.dtype)
        if cond is not None:
            raise ValueError(
                "cond was given but this MLP is unconditional (build it with cond_dim= or "
                "num_classes=)"
            )
        return None

    def forward(self, x: Tensor, t: Tensor, *, cond: Tensor | None = None) -> Tensor:
        if not torch.is_tensor(t):
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        self._check(x, t)
        batch = x.shape[0]
        if t.dim() == 0 or t.shape[0] != batch:
            t = t.reshape(1).expand(batch)
        flat = x.reshape(batch, self.dim)
        parts = [flat, self.time_embedding(t).to(flat.dtype)]
        c = self._cond_features(cond, batch, flat)
        if c is not None:
            parts.append(c.to(flat.dtype))
        return self.net(torch.cat(parts, dim=-1)).reshape(x.shape)

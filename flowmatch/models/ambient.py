"""A plain MLP on features of the points: an ambient velocity field for embedded manifolds."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowmatch._validation import expand_time_like
from flowmatch.models.embedding import SinusoidalTimeEmbedding


class AmbientField(nn.Module):
    """f(x, t) = W_L σ(… σ(W_1 [φ(x), e(t)])): an MLP on features φ(x) and a time embedding e(t).

    A thin combination of existing pieces: ``features`` φ (a module mapping points [B, ...] to
    [B, in_dim], e.g. :class:`~flowmatch.models.RandomFourierFeatures` of the sphere's R³
    coordinates or :class:`~flowmatch.models.TorusFourierFeatures` of torus angles; without it
    x must be [B, in_dim]), a :class:`SinusoidalTimeEmbedding` e and ``layers`` hidden
    Linear + ``activation`` layers of width ``hidden``. It is the plain counterpart of
    :class:`~flowmatch.models.ResidualMLP` (same features and time embedding, no residual
    blocks), and differs from :class:`~flowmatch.models.MLP` in taking φ(x) rather than x and
    in ``out_dim`` ≠ ``in_dim`` (a torus of n angles has 2n features but n velocity components).

    ``forward(x, t)`` takes x [B, ...] and t [B] (a scalar or [1] is broadcast) and returns an
    ambient vector [B, out_dim] (default ``in_dim``); on a curved geometry wrap the field in
    :class:`~flowmatch.models.TangentProjected`.

    The default time embedding (scale 20, max period 100: frequencies 0.2 … 20 rad per unit
    time) keeps the field smooth enough in t for fixed-step likelihood integration.
    """

    def __init__(self, in_dim: int, out_dim: int | None = None, *, hidden: int = 256,
                 layers: int = 4, features: nn.Module | None = None,
                 activation: Callable[[], nn.Module] = nn.SiLU, time_embed_dim: int = 32,
                 time_scale: float = 20.0, max_period: float = 100.0) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden", hidden),
                            ("layers", layers), ("time_embed_dim", time_embed_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if features is not None and not callable(features):
            raise ValueError(f"features must be a module or None, got {type(features).__name__}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.time_embedding = SinusoidalTimeEmbedding(time_embed_dim, scale=time_scale,
                                                      max_period=max_period)
        blocks: list[nn.Module] = []
        width = in_dim + time_embed_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), activation()]
            width = hidden
        blocks.append(nn.Linear(width, out_dim))
        # `net` and `features` name the weights in the fields saved by
        # benchmarks/sphere_earth.py --save-models: renaming them would orphan those checkpoints
        self.net = nn.Sequential(*blocks)
        self.features = features

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        batch = x.shape[0]
        t = expand_time_like(t, x).reshape(-1).expand(batch)
        h = x if self.features is None else self.features(x)
        if h.dim() != 2 or h.shape[-1] != self.in_dim:
            what = "x" if self.features is None else "features(x)"
            raise ValueError(f"{what} must have shape [B, in_dim] = [{batch}, {self.in_dim}], "
                             f"got shape {tuple(h.shape)}")
        return self.net(torch.cat([h, self.time_embedding(t).to(h.dtype)], dim=-1))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"

"""Sinusoidal embedding of the flow time t ∈ [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalTimeEmbedding(nn.Module):
    """Map times t of shape [B] to features of shape [B, dim].

    With ``half = dim // 2`` frequencies ω_k = max_period^(−k / half), k = 0 … half − 1, the
    embedding is ``[cos(s t ω_k), sin(s t ω_k)]`` (a zero column is appended when ``dim`` is
    odd). ``s = scale`` stretches t ∈ [0, 1] so that the fastest feature oscillates ``scale / 2π``
    times over the unit interval while the slowest stays nearly linear: a network can then
    resolve both fine and coarse changes of the velocity in time. The module has no parameters.
    """

    freqs: Tensor

    def __init__(self, dim: int, *, scale: float = 1000.0, max_period: float = 10_000.0) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an integer ≥ 2, got {dim!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if not max_period > 1:
            raise ValueError(f"max_period must be > 1, got {max_period!r}")
        self.dim = dim
        self.scale = float(scale)
        self.max_period = float(max_period)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        # a buffer (not a parameter) so .to(device/dtype) moves it; not saved in state dicts
        # because it is a pure function of the constructor arguments
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        if t.dim() != 1:
            raise ValueError(f"t must have shape [B], got shape {tuple(t.shape)}")
        args = (self.scale * t.to(self.freqs.dtype)).unsqueeze(-1) * self.freqs
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.dim % 2:
            emb = torch.nn.functional.pad(emb, (0, 1))
        return emb  # in the module's dtype (follows .to(dtype)), whatever t's dtype

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale:g}, max_period={self.max_period:g}"

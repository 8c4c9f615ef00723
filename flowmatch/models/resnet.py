"""A residual multilayer-perceptron velocity field, with the time fed to every block."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowmatch._validation import expand_time_like
from flowmatch.models.embedding import SinusoidalTimeEmbedding


class TimeResidualBlock(nn.Module):
    """h ↦ h + W₂ σ(W₁ σ(h) + U e): a pre-activation residual block conditioned on e = e(t).

    h is [B, width] and e a time embedding [B, time_dim]. The identity path keeps a deep stack
    trainable at a learning rate where a plain MLP of the same depth is not, and adding U e in
    every block lets each one change with time (a plain MLP sees t only at its input).
    """

    def __init__(self, width: int, time_dim: int, *,
                 activation: Callable[[], nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.inner = nn.Linear(width, width)
        self.time = nn.Linear(time_dim, width, bias=False)
        self.outer = nn.Linear(width, width)
        self.act = activation()

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return h + self.outer(self.act(self.inner(self.act(h)) + self.time(e)))


class ResidualMLP(nn.Module):
    """Velocity field f(x, t) = W_out σ(h_K) from K :class:`TimeResidualBlock` s.

    h₀ = W_in [φ(x), e(t)] with φ = ``features`` (a module mapping points [B, ...] to [B,
    in_dim]: Fourier features, (cos, sin) of torus angles, …; without it x must be [B, in_dim])
    and e a :class:`SinusoidalTimeEmbedding`; then h_k = h_{k−1} + W₂ σ(W₁ σ(h_{k−1}) + U_k e).
    ``forward(x, t)`` takes x [B, ...] and t [B] (a scalar or [1] is broadcast) and returns an
    ambient vector [B, out_dim] (default ``in_dim``) — on a curved geometry wrap the field in
    :class:`~flowmatch.models.TangentProjected`.

    On the RNA torsion angles (T⁷) six blocks of width 256 reached a lower validation NLL than
    the plain four-layer MLP with the same features at the same steps (see
    ``benchmarks/torus_rna.py``).
    """

    def __init__(self, in_dim: int, out_dim: int | None = None, *, hidden: int = 256,
                 blocks: int = 4, features: nn.Module | None = None,
                 activation: Callable[[], nn.Module] = nn.SiLU, time_embed_dim: int = 32,
                 time_scale: float = 20.0, max_period: float = 100.0) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden", hidden),
                            ("blocks", blocks), ("time_embed_dim", time_embed_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.features = features
        self.time_embedding = SinusoidalTimeEmbedding(time_embed_dim, scale=time_scale,
                                                      max_period=max_period)
        self.inp = nn.Linear(in_dim + time_embed_dim, hidden)
        self.blocks = nn.ModuleList(TimeResidualBlock(hidden, time_embed_dim,
                                                      activation=activation)
                                    for _ in range(blocks))
        self.act = activation()
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        batch = x.shape[0]
        t = expand_time_like(t, x).reshape(-1).expand(batch)
        h = x if self.features is None else self.features(x)
        if h.dim() != 2 or h.shape[-1] != self.in_dim:
            what = "x" if self.features is None else "features(x)"
            raise ValueError(f"{what} must have shape [B, in_dim] = [{batch}, {self.in_dim}], "
                             f"got shape {tuple(h.shape)}")
        e = self.time_embedding(t).to(h.dtype)
        h = self.inp(torch.cat([h, e], dim=-1))
        for block in self.blocks:
            h = block(h, e)
        return self.out(self.act(h))

"""Distributions of the training time t ∈ [0, 1] (which times the loss looks at)."""

from __future__ import annotations

import torch
from torch import Tensor


class UniformTime:
    """t ~ U(0, 1): the plain flow-matching objective."""

    def __call__(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        return torch.rand(batch_size, generator=generator, device=device, dtype=dtype)

    def __repr__(self) -> str:
        return "UniformTime()"


class LogitNormalTime:
    """t = sigmoid(m + s z), z ~ N(0, 1) (Esser et al. 2024): more weight on intermediate times.

    Its density is p(t) = φ((logit t − m) / s) / (s t (1 − t)); ``mean`` m > 0 favours times
    near the data end t = 1 of this library's convention.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if not std > 0:
            raise ValueError(f"std must be positive, got {std!r}")
        self.mean = float(mean)
        self.std = float(std)

    def __call__(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        z = torch.randn(batch_size, generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(self.mean + self.std * z)

    def __repr__(self) -> str:
        return f"LogitNormalTime(mean={self.mean:g}, std={self.std:g})"

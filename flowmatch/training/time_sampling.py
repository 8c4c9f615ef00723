"""Distributions of the training time t ∈ [0, 1] (which times the loss looks at)."""

from __future__ import annotations

import math

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


class KumaraswamyTime:
    """t ~ Kumaraswamy(a, b), density a b t^{a−1} (1 − t^a)^{b−1} on (0, 1).

    Drawn by inverting the CDF F(t) = 1 − (1 − t^a)^b: t = (1 − (1 − u)^{1/b})^{1/a} with
    u ~ U(0, 1) from the caller's generator, so runs stay reproducible on any device.
    ``a = 1, b = 1/p`` is Beta(1, 1/p): 1 − t ~ U^p, i.e. t = 1 − (1 − u)^p, which puts weight
    (1 − t)^{1/p − 1} / p on times near the data end t = 1, where a sharp density is resolved
    (on the earth catalogues p = 3 lowered the validation NLL by ~0.2 nats at equal cost;
    ``benchmarks/sphere_earth.py``). ``b = 1`` gives t = u^{1/a}, Beta(a, 1).

    Draws lie in [0, 1): a value that rounds to 1 is replaced by the largest number below 1 of
    the dtype, as for :class:`UniformTime`, since paths contract to a point there.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        for name, value in (("a", a), ("b", b)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or not value > 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.a, self.b = float(a), float(b)

    def __call__(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        u = torch.rand(batch_size, generator=generator, device=device, dtype=dtype)
        # 1 − t^a = (1 − u)^{1/b}, written with log1p/expm1 so small u keeps its digits
        one_minus = torch.exp(torch.log1p(-u) / self.b)
        t = torch.exp(torch.log1p(-one_minus) / self.a) if self.a != 1.0 else 1 - one_minus
        below_one = torch.nextafter(torch.ones((), dtype=t.dtype, device=t.device),
                                    torch.zeros((), dtype=t.dtype, device=t.device))
        return t.clamp(max=float(below_one))

    def __repr__(self) -> str:
        return f"KumaraswamyTime(a={self.a:g}, b={self.b:g})"

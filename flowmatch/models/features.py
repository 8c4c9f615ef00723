"""Fourier features of points: inputs for networks on Euclidean space, spheres and tori.

An MLP on raw coordinates is biased towards slowly varying functions (the spectral bias of
Rahaman et al. 2019), so a velocity field on x alone stays smoother than concentrated data.
Feeding it sinusoids of x lets the first layer resolve finer detail (Tancik et al., *Fourier
Features Let Networks Learn High Frequency Functions in Low Dimensional Domains*, 2020):

* :class:`RandomFourierFeatures` — x ↦ [x, sin(x B), cos(x B)] with a fixed Gaussian matrix B.
  Smooth on Rⁿ, hence on any embedded manifold (the sphere's unit vectors, for example).
* :class:`TorusFourierFeatures` — angles θ ↦ [cos(hθ), sin(hθ)] for per-angle harmonics h and
  [cos(θ K), sin(θ K)] for a random *integer* matrix K. Integer frequencies make every feature a
  function on the torus: θ and θ + 2π m (m ∈ Zⁿ) give the same features, so the network cannot
  see the seam of the chart [0, 2π)ⁿ.

The frequency matrices are buffers drawn once from a seeded generator (saved in state dicts),
so the same constructor arguments give the same features in every run and every checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _frequency_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """The generator the frequencies are drawn from: ``generator``, or a fresh one seeded with
    ``seed`` (default 0)."""
    if generator is not None:
        if seed is not None:
            raise ValueError(f"give seed or generator, not both (got seed={seed!r} and a "
                             "generator)")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got "
                             f"{type(generator).__name__}")
        return generator
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def _check_input(x: Tensor, dim: int, what: str) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got "
                         f"{x.dtype if torch.is_tensor(x) else type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape [..., {dim}] ({what}), got {tuple(x.shape)}")


class RandomFourierFeatures(nn.Module):
    """x ↦ [x, sin(x B), cos(x B)] with a fixed Gaussian matrix B [in_dim, num], B_ij ~ N(0, σ²).

    Input x [..., in_dim] (points of Rⁿ or of a manifold embedded in it, e.g. unit vectors on
    the sphere); output [..., out_dim] with out_dim = in_dim + 2 num (2 num without the input).
    Each pair (sin, cos)(b_j · x) is a plane wave of wavelength 2π/|b_j| ≈ 2π/(σ √in_dim), so
    σ (``scale``) sets the finest detail the first layer sees directly. The features are smooth
    in x (derivatives bounded by |B|), which keeps ODE likelihood integration well conditioned.

    Args:
        in_dim: n, the size of the last axis of x.
        num: number of frequencies (columns of B), ≥ 1.
        scale: σ > 0, the standard deviation of the entries of B.
        seed: seed of a private generator B is drawn from (default 0), so the features do not
            depend on, or disturb, the global random state.
        generator: draw B from this generator instead of ``seed``.
        include_input: put x itself in front of the sinusoids (default True).
    """

    frequencies: Tensor

    def __init__(self, in_dim: int, num: int, scale: float, *, seed: int | None = None,
                 generator: torch.Generator | None = None, include_input: bool = True) -> None:
        super().__init__()
        _check_count("in_dim", in_dim, 1)
        _check_count("num", num, 1)
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        gen = _frequency_generator(seed, generator)
        self.in_dim, self.num, self.scale = in_dim, num, float(scale)
        self.include_input = bool(include_input)
        self.register_buffer("frequencies", torch.randn(in_dim, num, generator=gen) * scale)
        self.out_dim = (in_dim if self.include_input else 0) + 2 * num

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_dim, "in_dim")
        z = x @ self.frequencies.to(x.dtype)
        parts = [x, torch.sin(z), torch.cos(z)] if self.include_input else [torch.sin(z),
                                                                           torch.cos(z)]
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, num={self.num}, scale={self.scale:g}, "
                f"include_input={self.include_input}, out_dim={self.out_dim}")


class TorusFourierFeatures(nn.Module):
    """Angles θ [..., dim] ↦ [cos(hθ), sin(hθ) for h = 1 … harmonics; cos(θ K), sin(θ K)].

    A point of the flat torus Tⁿ is a vector of n angles (radians, any representative). Two
    kinds of integer-frequency features, all exactly 2π-periodic in every angle:

    * per-angle harmonics: for h = 1 … ``harmonics``, cos(h θ_d) and sin(h θ_d) for every
      angle d (harmonics = 1 gives the usual embedding of Tⁿ in R²ⁿ by (cos θ, sin θ));
    * ``num`` mixing frequencies: the columns k_j of K [dim, num], K_dj = round(N(0, σ²)),
      giving cos(k_j · θ) and sin(k_j · θ), waves that couple several angles. Rounding keeps
      the frequencies integer, which is what makes them functions on the torus (a column may
      round to 0 and give a constant feature; it is kept so a seed fixes the layout).

    Output layout: [cos(1θ), …, cos(Hθ), sin(1θ), …, sin(Hθ), cos(θK), sin(θK)], each block
    [..., dim] or [..., num]; out_dim = 2 dim · harmonics + 2 num.

    Args:
        dim: n, the number of angles.
        num: number of random mixing frequencies (0 for harmonics only).
        scale: σ > 0 of the Gaussian the mixing frequencies are rounded from (unused if
            num = 0).
        harmonics: highest per-angle harmonic H ≥ 0.
        seed, generator: where K is drawn from, as in :class:`RandomFourierFeatures`.
    """

    frequencies: Tensor

    def __init__(self, dim: int, num: int = 0, scale: float = 1.0, *, harmonics: int = 1,
                 seed: int | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_count("dim", dim, 1)
        _check_count("num", num, 0)
        _check_count("harmonics", harmonics, 0)
        if num > 0 and not (isinstance(scale, (int, float)) and math.isfinite(scale)
                            and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        if num == 0 and harmonics == 0:
            raise ValueError("TorusFourierFeatures needs num ≥ 1 or harmonics ≥ 1, got both 0")
        gen = _frequency_generator(seed, generator)
        self.dim, self.num, self.scale, self.harmonics = dim, num, float(scale), harmonics
        k = torch.round(torch.randn(dim, num, generator=gen) * scale)
        self.register_buffer("frequencies", k)
        self.out_dim = 2 * dim * harmonics + 2 * num

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.dim, "dim angles")
        # harmonic 1 is cos θ itself (no multiplication), so the common case costs no more
        # than the plain (cos, sin) embedding
        waves = [x if h == 1 else h * x for h in range(1, self.harmonics + 1)]
        parts = [torch.cos(w) for w in waves] + [torch.sin(w) for w in waves]
        if self.num:
            z = x @ self.frequencies.to(x.dtype)
            parts += [torch.cos(z), torch.sin(z)]
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num={self.num}, scale={self.scale:g}, "
                f"harmonics={self.harmonics}, out_dim={self.out_dim}")

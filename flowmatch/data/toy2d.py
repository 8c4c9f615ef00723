"""Two-dimensional toy distributions for quick experiments and tests.

Each data set is an object with ``sample(n, generator=None, *, dtype=None, device=None)``
returning a float tensor [n, 2] (on the generator's device when a generator is given), so it can
be passed to :func:`flowmatch.training.fit` as ``sample_data``. The checkerboard and the
Gaussian mixture also have a closed-form ``log_prob``, so the true negative log-likelihood
(the entropy) is known and a model's NLL can be compared with it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")


def _where(generator: torch.Generator | None, device) -> torch.device:
    if generator is not None:
        if device is not None and torch.device(device) != generator.device:
            raise ValueError(f"device {device} differs from the generator's {generator.device}")
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


class ToyDataset:
    """Base class: ``sample`` draws points of shape [n, 2]."""

    name: str = ""
    dim: int = 2

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        _check_n(n)
        dev = _where(generator, device)
        return self._sample(n, generator, dtype or torch.get_default_dtype(), dev)

    def _sample(self, n: int, generator, dtype: torch.dtype, device: torch.device) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Checkerboard(ToyDataset):
    """Uniform distribution on the dark squares of a ``k × k`` checkerboard covering [−L, L]².

    A cell (i, j) (column i, row j, counted from the lower-left corner) is occupied when i + j is
    even: k² / 2 cells (k even) of side s = 2L / k, total area A = k² s² / 2 = 2 L². The density
    is 1 / A on the occupied cells and 0 elsewhere, so the entropy (the NLL of the true density)
    is log A — log 32 ≈ 3.466 nats for the default k = 4, L = 4.
    """

    name = "checkerboard"

    def __init__(self, squares: int = 4, half_width: float = 4.0) -> None:
        if not isinstance(squares, int) or squares < 2 or squares % 2:
            raise ValueError(f"squares must be an even integer ≥ 2, got {squares!r}")
        if not half_width > 0:
            raise ValueError(f"half_width must be positive, got {half_width!r}")
        self.squares = squares
        self.half_width = float(half_width)
        self.side = 2 * self.half_width / squares
        self.area = squares * squares / 2 * self.side**2

    @property
    def entropy(self) -> float:
        """Differential entropy in nats (= log of the occupied area)."""
        return math.log(self.area)

    def _sample(self, n, generator, dtype, device):
        k = self.squares
        # occupied cells: every row j has k/2 columns i with i ≡ j (mod 2)
        row = torch.randint(k, (n,), generator=generator, device=device)
        col = 2 * torch.randint(k // 2, (n,), generator=generator, device=device) + row % 2
        u = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
        cells = torch.stack([col, row], dim=-1).to(torch.float64)
        x = -self.half_width + self.side * (cells + u)
        return x.to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """log density at x [..., 2]: −log A on the occupied squares, −inf elsewhere."""
        if x.shape[-1] != 2:
            raise ValueError(f"x must have shape [..., 2], got shape {tuple(x.shape)}")
        cell = torch.floor((x + self.half_width) / self.side)
        inside = ((cell >= 0) & (cell < self.squares)).all(-1)
        occupied = inside & ((cell[..., 0] + cell[..., 1]) % 2 == 0)
        value = torch.full(x.shape[:-1], -math.log(self.area), dtype=x.dtype, device=x.device)
        return value.masked_fill(~occupied, float("-inf"))

    def __repr__(self) -> str:
        return f"Checkerboard(squares={self.squares}, half_width={self.half_width:g})"


class EightGaussians(ToyDataset):
    """Equal mixture of 8 isotropic Gaussians N(μ_k, σ² I), μ_k = r (cos 2πk/8, sin 2πk/8)."""

    name = "8gaussians"

    def __init__(self, radius: float = 4.0, std: float = 0.5) -> None:
        if not radius > 0 or not std > 0:
            raise ValueError(f"radius and std must be positive, got {radius!r} and {std!r}")
        self.radius = float(radius)
        self.std = float(std)

    def centers(self, dtype=torch.float64, device=None) -> Tensor:
        angle = 2 * math.pi * torch.arange(8, dtype=torch.float64, device=device) / 8
        return (self.radius * torch.stack([angle.cos(), angle.sin()], -1)).to(dtype)

    def _sample(self, n, generator, dtype, device):
        k = torch.randint(8, (n,), generator=generator, device=device)
        z = torch.randn(n, 2, generator=generator, device=device, dtype=torch.float64)
        return (self.centers(device=device)[k] + self.std * z).to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """log (1/8 Σ_k N(x; μ_k, σ² I)), shape [...]."""
        if x.shape[-1] != 2:
            raise ValueError(f"x must have shape [..., 2], got shape {tuple(x.shape)}")
        mu = self.centers(dtype=x.dtype, device=x.device)
        sq = (x.unsqueeze(-2) - mu).pow(2).sum(-1)
        log_n = -0.5 * sq / self.std**2 - math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(log_n, dim=-1) - math.log(8)

    def __repr__(self) -> str:
        return f"EightGaussians(radius={self.radius:g}, std={self.std:g})"


class Moons(ToyDataset):
    """Two interleaved half circles with Gaussian noise, scaled and centred around the origin.

    Upper moon: (cos θ, sin θ), lower moon: (1 − cos θ, 0.5 − sin θ), θ ~ U(0, π); both are
    shifted by (−0.5, −0.25), multiplied by ``scale`` and perturbed by N(0, noise² I).
    """

    name = "moons"

    def __init__(self, noise: float = 0.05, scale: float = 2.0) -> None:
        if not noise >= 0 or not scale > 0:
            raise ValueError(f"noise must be ≥ 0 and scale > 0, got {noise!r} and {scale!r}")
        self.noise = float(noise)
        self.scale = float(scale)

    def _sample(self, n, generator, dtype, device):
        f64 = torch.float64
        theta = math.pi * torch.rand(n, generator=generator, device=device, dtype=f64)
        lower = torch.rand(n, generator=generator, device=device, dtype=f64) < 0.5
        x = torch.where(lower, 1 - theta.cos(), theta.cos())
        y = torch.where(lower, 0.5 - theta.sin(), theta.sin())
        pts = torch.stack([x - 0.5, y - 0.25], -1) * self.scale
        pts = pts + self.noise * torch.randn(n, 2, generator=generator, device=device, dtype=f64)
        return pts.to(dtype)

    def __repr__(self) -> str:
        return f"Moons(noise={self.noise:g}, scale={self.scale:g})"


class Spirals(ToyDataset):
    """Two interleaved Archimedean spirals r = a·φ with Gaussian noise.

    φ is drawn so that points are uniform along arc length approximately (φ = φ_max √u); the
    second arm is the first rotated by π.
    """

    name = "spirals"

    def __init__(self, turns: float = 1.5, radius: float = 4.0, noise: float = 0.1) -> None:
        if not turns > 0 or not radius > 0 or not noise >= 0:
            raise ValueError(
                f"turns and radius must be positive and noise ≥ 0, got {turns!r}, {radius!r}, "
                f"{noise!r}"
            )
        self.turns = float(turns)
        self.radius = float(radius)
        self.noise = float(noise)

    def _sample(self, n, generator, dtype, device):
        f64 = torch.float64
        phi_max = 2 * math.pi * self.turns
        # r ∝ φ makes the arc length grow like φ², so φ ∝ √u spreads points evenly along it
        phi = phi_max * torch.rand(n, generator=generator, device=device, dtype=f64).sqrt()
        arm = torch.randint(2, (n,), generator=generator, device=device).to(f64)
        r = self.radius * phi / phi_max
        angle = phi + math.pi * arm
        pts = torch.stack([r * angle.cos(), r * angle.sin()], -1)
        pts = pts + self.noise * torch.randn(n, 2, generator=generator, device=device, dtype=f64)
        return pts.to(dtype)

    def __repr__(self) -> str:
        return f"Spirals(turns={self.turns:g}, radius={self.radius:g}, noise={self.noise:g})"


TOY_DATASETS: dict[str, type[ToyDataset]] = {
    cls.name: cls for cls in (Checkerboard, EightGaussians, Moons, Spirals)
}
"""Toy data sets by name: ``TOY_DATASETS["checkerboard"]()`` builds one with default settings."""


def get_toy_dataset(name: str, **options) -> ToyDataset:
    """Build the toy data set registered as ``name`` (see ``TOY_DATASETS``)."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name](**options)

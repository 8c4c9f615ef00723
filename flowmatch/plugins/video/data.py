"""Procedural video data with known answers: an analytic Gaussian video and bouncing shapes.

* :class:`GaussianVideo`: every pixel's time series is an independent Gaussian AR(1) process.
  Its flow-matching velocity, conditional laws and ODE transport map are closed-form, so samplers
  and conditioning schemes can be checked against exact answers.
* :func:`bouncing_shapes`: discs moving at constant velocity and reflecting off the walls,
  rendered with soft edges; returns the clips together with the true positions and velocities,
  so generated motion can be scored against physics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowmatch.plugins.video.conventions import check_video

__all__ = ["BouncingShapes", "GaussianVideo", "bouncing_shapes"]


class GaussianVideo:
    """Videos [B, C, T, H, W] whose pixels are i.i.d. stationary Gaussian AR(1) series in time.

    Frame k of a pixel: z_k = m + y_k, y_{k+1} = ρ·y_k + √(1 − ρ²)·n_k, y_1 ~ N(0, v), so the
    frame covariance is Σ_jk = v·ρ^|j−k| and the mean is m for every frame. Stationary AR(1) is
    time-reversible, so extending forwards and backwards are mirror images.

    On the CondOT path x_t = t·x1 + (1 − t)·ε the marginal velocity is linear:
        u(x, t) = μ + A_t (x − tμ),   A_t = (tΣ − (1 − t)I)(t²Σ + (1 − t)²I)⁻¹  (acting on frames),
    nonsingular on [0, 1], and the ODE map is x_1 = μ + Σ^{1/2} ε (symmetric square root).
    Computations run in float64.
    """

    def __init__(self, num_frames: int, rho: float = 0.9, var: float = 1.0, mean: float = 0.0,
                 channels: int = 1, height: int = 1, width: int = 1) -> None:
        if not -1 < rho < 1:
            raise ValueError(f"rho must lie in (-1, 1) for a stationary AR(1), got {rho}")
        if var <= 0:
            raise ValueError(f"var must be > 0, got {var}")
        if num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        self.T, self.rho, self.var, self.mean = num_frames, rho, var, mean
        self.shape = (channels, num_frames, height, width)
        k = torch.arange(num_frames, dtype=torch.float64)
        self.cov = var * rho ** (k[:, None] - k[None, :]).abs()
        self.mu = torch.full((num_frames,), float(mean), dtype=torch.float64)

    # frames sit on axis 2 of [B, C, T, H, W]
    @staticmethod
    def _apply(M: Tensor, x: Tensor) -> Tensor:
        """Apply a [T', T] (or [B, T', T]) matrix along the frame axis."""
        if M.dim() == 2:
            return torch.einsum("st,bcthw->bcshw", M, x)
        return torch.einsum("bst,bcthw->bcshw", M, x)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n clips [n, C, T, H, W] (float64)."""
        eps = torch.randn(n, *self.shape, generator=generator, dtype=torch.float64)
        L = torch.linalg.cholesky(self.cov)
        return self._apply(L, eps) + self.mu[:, None, None]

    @staticmethod
    def _velocity(x: Tensor, t: Tensor, mu: Tensor, cov: Tensor) -> Tensor:
        """u = μ + A_t (x − tμ) for a Gaussian N(μ, Σ) over frames; t [B]; μ broadcastable."""
        lam, V = torch.linalg.eigh(cov)
        tt = t.to(torch.float64)[:, None]
        g = (tt * lam - (1 - tt)) / (tt**2 * lam + (1 - tt) ** 2)  # [B, T]
        A = torch.einsum("st,bt,ut->bsu", V, g, V)
        t5 = t.to(torch.float64)[:, None, None, None, None]
        return mu + GaussianVideo._apply(A, x.to(torch.float64) - t5 * mu)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact unconditional velocity field; t is [B] or per-frame [B, T] (flowmatch time).

        Per frame, with D = diag(t_1..t_T): x_t = D x1 + (I − D) ε, and
        u = E[x1 − ε | x_t] = μ + (ΣD − (I − D)) C⁻¹ (x − Dμ), C = DΣD + (I − D)²,
        where C is positive definite for all t ∈ [0, 1]^T; frame k of u is the velocity of
        frame k along its own time (the sampler scales it by that frame's step).
        """
        check_video("x", x)
        if t.dim() < 2:
            return self._velocity(x, t, self.mu[:, None, None], self.cov).to(x.dtype)
        if t.shape[-1] != self.T:
            raise ValueError(f"per-frame t has {t.shape[-1]} frames, the video has {self.T}")
        d = t.to(torch.float64).expand(x.shape[0], self.T)
        if bool((d == d[:1]).all()):  # one schedule for the whole batch: solve once
            d = d[:1]
        D, ImD = torch.diag_embed(d), torch.diag_embed(1 - d)
        C = D @ self.cov @ D + ImD @ ImD
        M = torch.linalg.solve(C, (self.cov @ D - ImD).transpose(1, 2)).transpose(1, 2)
        mu = self.mu[:, None, None]
        xc = x.to(torch.float64) - d[:, None, :, None, None] * mu
        M = M.expand(x.shape[0], self.T, self.T)
        return (mu + self._apply(M, xc)).to(x.dtype)

    def conditional_moments(self, known: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Law of the unknown frames given the known ones (a [T] mask shared by the batch).

        Returns the conditional mean [B, C, U, H, W] and frame covariance [U, U], with
        μ_U|K = μ_U + Σ_UK Σ_KK⁻¹ (x_K − μ_K), Σ_U|K = Σ_UU − Σ_UK Σ_KK⁻¹ Σ_KU.
        """
        if known.dim() != 1 or known.shape[0] != self.T:
            raise ValueError(f"known must be a [T={self.T}] mask, got {tuple(known.shape)}")
        K, U = known.nonzero().flatten(), (~known).nonzero().flatten()
        S = self.cov
        G = torch.linalg.solve(S[K][:, K], S[K][:, U]).T  # Σ_UK Σ_KK⁻¹, [U, K]
        xk = values.to(torch.float64)[:, :, K] - self.mu[K][:, None, None]
        mean = self.mu[U][:, None, None] + self._apply(G, xk)
        cov = S[U][:, U] - G @ S[K][:, U]
        return mean, cov

    def conditional_field(self, known: Tensor):
        """The exact velocity of the unknown frames given the known ones (``known`` [T]).

        A callable ``field(x, t)`` for :class:`VideoSampler` with ``conditioning="per_frame"``:
        t is [B, T] with 1 on known frames (their clean values are read from x); the unknown
        frames share one time. It is what a model trained with that frame mask converges to.
        """
        K_mask = known.clone()
        U = (~K_mask).nonzero().flatten()

        def field(x: Tensor, t: Tensor) -> Tensor:
            check_video("x", x)
            tu = t[:, U[0]] if t.dim() == 2 else t
            mean, cov = self.conditional_moments(K_mask, x)
            u = torch.zeros_like(x, dtype=torch.float64)
            u[:, :, U] = self._velocity(x[:, :, U], tu, mean, cov)
            return u.to(x.dtype)

        return field

    def flow_map(self, eps: Tensor) -> Tensor:
        """Exact endpoint of the ODE started at noise ε: μ + Σ^{1/2} ε."""
        lam, V = torch.linalg.eigh(self.cov)
        root = V @ torch.diag(lam.sqrt()) @ V.T
        return self._apply(root, eps.to(torch.float64)) + self.mu[:, None, None]


@dataclass
class BouncingShapes:
    """A batch of bouncing-disc clips and their ground truth.

    video: [B, 1, T, H, W] in [−1, 1] (background −1, discs +1); positions, velocities:
    [B, K, T, 2] in pixels (x = column, y = row); radius: [B, K] pixels. Discs move at constant
    speed and reflect elastically off the walls (they may overlap each other).
    """

    video: Tensor
    positions: Tensor
    velocities: Tensor
    radius: Tensor


def _reflect(p: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Fold unconstrained positions into [lo, hi] (billiard reflection); returns (pos, sign)."""
    span = hi - lo
    q = torch.remainder(p - lo, 2 * span)
    sign = torch.where(q <= span, torch.ones_like(q), -torch.ones_like(q))
    return lo + torch.where(q <= span, q, 2 * span - q), sign


def bouncing_shapes(
    batch_size: int,
    *,
    num_frames: int = 8,
    size: int = 16,
    num_objects: int = 1,
    radius: tuple[float, float] = (2.0, 3.0),
    speed: tuple[float, float] = (0.5, 1.5),
    edge: float = 0.5,
    generator: torch.Generator | None = None,
) -> BouncingShapes:
    """Render ``batch_size`` clips of ``num_objects`` discs bouncing in a size×size box.

    The unfolded trajectory p0 + k·v is folded into the box (so positions are exact at every
    frame, reflections included); centres keep one pixel more than the radius from the edge.
    Discs are drawn with a soft rim (a logistic of scale ``edge`` pixels in the distance to the
    rim), so images are smooth functions of position and a disc's mass barely aliases.
    """
    if min(batch_size, num_frames, size, num_objects) <= 0:
        raise ValueError("batch_size, num_frames, size and num_objects must be positive")
    if not 0 < radius[0] <= radius[1] < size / 2 - 2:
        raise ValueError(f"radius range must satisfy 0 < lo ≤ hi < size/2 − 2, got {radius}")
    if not 0 <= speed[0] <= speed[1]:
        raise ValueError(f"speed range must satisfy 0 ≤ lo ≤ hi, got {speed}")
    g = generator
    B, K, T = batch_size, num_objects, num_frames
    r = radius[0] + (radius[1] - radius[0]) * torch.rand(B, K, generator=g)
    # one pixel of margin keeps the soft rim inside the frame, so a disc's mass is conserved
    lo, hi = r[..., None] + 1, size - 2 - r[..., None]
    p0 = lo + (hi - lo) * torch.rand(B, K, 2, generator=g)
    ang = 2 * math.pi * torch.rand(B, K, generator=g)
    sp = speed[0] + (speed[1] - speed[0]) * torch.rand(B, K, generator=g)
    v = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1) * sp[..., None]
    k = torch.arange(T, dtype=torch.float32)
    raw = p0[:, :, None] + k[None, None, :, None] * v[:, :, None]  # [B, K, T, 2]
    pos, sign = _reflect(raw, lo[..., None], hi[..., None])
    vel = v[:, :, None] * sign
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    d = torch.sqrt((xx - pos[..., 0, None, None]) ** 2 + (yy - pos[..., 1, None, None]) ** 2)
    cover = torch.sigmoid((r[:, :, None, None, None] - d) / max(edge, 1e-6))  # [B,K,T,H,W]
    occ = 1 - torch.prod(1 - cover, dim=1)  # union of discs
    video = (2 * occ - 1)[:, None]
    return BouncingShapes(video=video, positions=pos, velocities=vel, radius=r)

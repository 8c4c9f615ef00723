"""Physics of bouncing-disc clips: does a generated video keep one disc moving like a disc?

FVD needs downloaded I3D weights; clips of :func:`~flowmatch.plugins.video.data.bouncing_shapes`
have a known physics instead, so generated motion is scored against it. A clip is
[B, 1, T, H, W] with values in [−1, 1] (background −1, disc +1). Its *occupancy* is the pixel
value mapped to [0, 1]; every metric is built from it:

* mass m_{b,k} = Σ_pixels o_{b,k}: a disc neither appears, vanishes nor changes size, so the
  mass of a real clip is constant over its frames;
* centroid c_{b,k} = Σ o·(x, y) / Σ o in pixels (x = column, y = row): between bounces a real
  disc moves at constant velocity, so the second difference of the centroid is zero except
  at the wall reflections;
* connected components of the binarised occupancy (o > 0.5, 4-connected): one disc per frame.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from flowmatch._validation import check_finite
from flowmatch.plugins.video.conventions import check_video

__all__ = ["STEADY_ACCEL", "centroid_accel_per_clip", "occupancy", "physics",
           "trajectory_accel"]

STEADY_ACCEL = 0.05
"""|Second difference| of the centroid (px/frame²) below which a frame triplet counts as steady
motion in :func:`physics`: between bounces the estimator's error on real clips is ≈ 0.003
px/frame²; a bounce gives up to twice the speed normal to the wall (≤ 3 px/frame² here)."""


def occupancy(video: Tensor) -> Tensor:
    """Disc occupancy o = clamp((x + 1)/2, 0, 1) of clips [B, 1, T, H, W]; returns [B, T, H, W].

    Values outside [−1, 1] (a sampler's overshoot) count as empty or full pixels. The result is
    float32 whatever the input dtype.
    """
    check_video("video", video)
    if video.shape[1] != 1:
        raise ValueError(f"video must have one channel (disc occupancy), got C = "
                         f"{video.shape[1]} (shape {tuple(video.shape)})")
    return ((video[:, 0].float() + 1) / 2).clamp(0, 1)


def physics(video: Tensor) -> dict[str, float]:
    """Mass variation, object count, centroid speed and acceleration of one-disc clips.

    Args:
        video: [B, 1, T, H, W] in [−1, 1], T ≥ 3 (the acceleration needs three frames); any
            device and floating dtype (computed in float32 on the CPU).

    Returns plain floats, each a mean over clips b and frames k (o, m, c as in the module
    docstring; m̄_b = mean_k m_{b,k}, floored at 1e-6):

    * ``mass_error``: mean |m_{b,k} − m̄_b| / m̄_b (0 for a perfectly permanent disc);
    * ``mean_mass``: mean m_{b,k}, in pixels (≈ π r² for a disc of radius r);
    * ``one_object_frames``: fraction of frames with exactly one connected component;
    * ``centroid_speed``: mean |c_{b,k+1} − c_{b,k}|, pixels per frame;
    * ``centroid_accel``: mean |c_{b,k+1} − 2 c_{b,k} + c_{b,k−1}|, pixels per frame²; compare
      it with :func:`trajectory_accel` of the true positions, which is not 0 because of the
      bounces;
    * ``centroid_accel_median``: the median of the same |second differences| over all clips
      and frame triplets: about 0.003 px/frame² for real clips (most triplets have no bounce),
      so it measures the jitter of motion between bounces, which the mean mixes with the
      bounces;
    * ``steady_fraction``: the fraction of frame triplets whose |second difference| is below
      ``STEADY_ACCEL`` = 0.05 px/frame² (straight, uniform motion); about 0.7 for real clips
      of 8 frames, the rest being bounces.

    A frame with no occupancy has its centroid at (0, 0), which shows up as a large speed and
    acceleration rather than being skipped.
    """
    check_video("video", video)
    if video.shape[2] < 3:
        raise ValueError(f"video must have T ≥ 3 frames for the centroid acceleration, got "
                         f"T = {video.shape[2]} (shape {tuple(video.shape)})")
    check_finite("video", video)
    occ = occupancy(video.detach().cpu())
    B, T, H, W = occ.shape
    mass = occ.sum(dim=(2, 3))  # [B, T]
    mbar = mass.mean(1, keepdim=True).clamp_min(1e-6)
    mass_err = float(((mass - mbar).abs() / mbar).mean())
    c = _centroids(occ)
    speed = (c[:, 1:] - c[:, :-1]).norm(dim=-1)
    acc = (c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).norm(dim=-1)
    binary = (occ > 0.5).numpy()
    counts = np.array([[ndimage.label(binary[b, k])[1] for k in range(T)] for b in range(B)])
    return {"mass_error": mass_err, "mean_mass": float(mass.mean()),
            "one_object_frames": float((counts == 1).mean()),
            "centroid_speed": float(speed.mean()), "centroid_accel": float(acc.mean()),
            "centroid_accel_median": float(acc.flatten().median()),
            "steady_fraction": float((acc < STEADY_ACCEL).float().mean())}


def _centroids(occ: Tensor) -> Tensor:
    """Occupancy-weighted centres [B, T, 2] (x = column, y = row) of occupancies [B, T, H, W]."""
    H, W = occ.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32),
                            torch.arange(W, dtype=torch.float32), indexing="ij")
    w = occ / occ.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return torch.stack([(w * xs).sum(dim=(2, 3)), (w * ys).sum(dim=(2, 3))], -1)


def centroid_accel_per_clip(video: Tensor) -> Tensor:
    """|c_{k+1} − 2 c_k + c_{k−1}| of every clip and frame triplet, [B, T − 2] (px/frame²).

    The per-clip values behind ``physics``' ``centroid_accel`` (their mean),
    ``centroid_accel_median`` and ``steady_fraction``, e.g. for standard errors over clips.
    """
    check_video("video", video)
    if video.shape[2] < 3:
        raise ValueError(f"video must have T ≥ 3 frames, got T = {video.shape[2]}")
    c = _centroids(occupancy(video.detach().cpu()))
    return (c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).norm(dim=-1)


def trajectory_accel(positions: Tensor) -> float:
    """Mean |p_{k+1} − 2 p_k + p_{k−1}| of the first disc's true centres, pixels per frame².

    ``positions`` is [B, K, T, 2] (``BouncingShapes.positions``), T ≥ 3. This is the value that
    ``physics(video)["centroid_accel"]`` estimates from the pixels of a one-disc clip: nonzero
    only at the frames where the disc bounces off a wall.
    """
    if not torch.is_tensor(positions) or positions.dim() != 4 or positions.shape[-1] != 2:
        raise ValueError(f"positions must be a tensor of shape [B, K, T, 2], got "
                         f"{getattr(positions, 'shape', type(positions).__name__)}")
    if positions.shape[2] < 3:
        raise ValueError(f"positions must have T ≥ 3 frames, got T = {positions.shape[2]}")
    p = positions[:, 0]
    return float((p[:, 2:] - 2 * p[:, 1:-1] + p[:, :-2]).norm(dim=-1).mean())

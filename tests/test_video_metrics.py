"""Physics metrics of bouncing-disc clips: exact on real clips, alarmed by broken physics."""

from __future__ import annotations

import pytest
import torch

from flowmatch.plugins.video import bouncing_shapes, occupancy, physics, trajectory_accel


def _clips(seed: int, n: int = 64, frames: int = 8, size: int = 16):
    return bouncing_shapes(n, num_frames=frames, size=size,
                           generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_real_clips_conserve_mass_keep_one_disc_and_match_the_true_acceleration(seed):
    data = _clips(seed)
    ph = physics(data.video)
    # the soft rim stays inside the frame, so a disc's mass barely aliases (measured 0.08 %)
    assert ph["mass_error"] < 0.01
    assert ph["one_object_frames"] == 1.0
    # the centroid of the pixels tracks the true centre: second differences agree to < 1 %
    # (measured 0.25 vs 0.25, 0.28 vs 0.28); nonzero only at the bounces
    true_acc = trajectory_accel(data.positions)
    assert 0.1 < true_acc < 0.5
    assert ph["centroid_accel"] == pytest.approx(true_acc, rel=0.01)
    # mass ≈ π r² with r ~ U(2, 3): between π·4 and π·9
    assert 4 * torch.pi < ph["mean_mass"] < 9 * torch.pi
    assert 0.5 < ph["centroid_speed"] < 1.5  # speeds are drawn from U(0.5, 1.5) px/frame


def test_real_motion_is_steady_between_bounces_and_a_jittering_disc_is_not():
    # 1,024 real clips: most frame triplets have no bounce, where the pixel centroid moves
    # straight to ≈ 0.003 px/frame² (measured median 0.003, steady fraction 0.71)
    real = physics(_clips(6, n=1024).video)
    assert real["centroid_accel_median"] < 0.02
    assert 0.55 < real["steady_fraction"] < 0.85
    # a still disc shifted by one pixel on every other frame: |second difference| 2 everywhere
    still = _clips(7, n=8).video[:, :, :1].expand(-1, -1, 6, -1, -1).clone()
    still[:, :, 1::2] = still[:, :, 1::2].roll(1, dims=-1)
    jitter = physics(still)
    assert jitter["centroid_accel_median"] == pytest.approx(2.0, abs=0.05)
    assert jitter["steady_fraction"] == 0.0


def test_a_still_disc_has_no_speed_acceleration_or_mass_change():
    still = _clips(2, n=4).video[:, :, :1].expand(-1, -1, 6, -1, -1)
    ph = physics(still)
    assert ph["centroid_speed"] == 0 and ph["centroid_accel"] == 0
    assert ph["centroid_accel_median"] == 0 and ph["steady_fraction"] == 1.0
    assert ph["mass_error"] == 0 and ph["one_object_frames"] == 1.0


def test_a_teleporting_disc_accelerates_far_more_than_a_bouncing_one():
    real = _clips(3).video
    teleport = real.clone()
    teleport[:, :, 4:] = real.roll(1, dims=0)[:, :, 4:]  # frames 4.. show another clip's disc
    assert physics(teleport)["centroid_accel"] > 3 * physics(real)["centroid_accel"]


def test_two_discs_per_frame_are_never_one_object():
    # two 16×16 clips side by side: each disc stays more than a pixel from its box's border
    # (binarised at 0.5), so every frame holds exactly two components
    a, b = _clips(4, n=8).video, _clips(5, n=8).video
    ph = physics(torch.cat([a, b], dim=-1))
    assert ph["one_object_frames"] == 0.0


def test_occupancy_maps_minus_one_to_empty_and_clamps_overshoot():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 5, 1, 1)
    assert occupancy(x).flatten().tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert occupancy(x.double()).dtype == torch.float32


def test_bad_input_raises_a_clear_error():
    video = _clips(6, n=2).video
    with pytest.raises(ValueError, match=r"video must be a video of shape \[B, C, T, H, W\]"):
        physics(video[:, 0])  # rank 4
    with pytest.raises(ValueError, match="one channel"):
        physics(video.expand(-1, 2, -1, -1, -1))
    with pytest.raises(ValueError, match="T ≥ 3 frames"):
        physics(video[:, :, :2])
    with pytest.raises(ValueError, match="must be finite"):
        physics(torch.full_like(video, float("nan")))
    with pytest.raises(ValueError, match=r"positions must be a tensor of shape \[B, K, T, 2\]"):
        trajectory_accel(torch.zeros(2, 8, 2))

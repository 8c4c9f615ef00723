"""The native video velocity network and the bouncing-shapes data."""

from __future__ import annotations

import pytest
import torch

from flowmatch.plugins.video import (
    GaussianVideo,
    bouncing_shapes,
    first_frame_mask,
    masked_mse,
    video_path_sample,
)
from flowmatch.plugins.video.model import VideoVelocityNet


def _randomise(net):
    # the output layer and adaLN gates start at zero (adaLN-Zero); give them values so the
    # dependence on t and on the mask is visible
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if float(p.detach().abs().max()) == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def test_shapes_time_broadcast_and_zero_init():
    net = VideoVelocityNet(channels=2, width=16, depth=2, patch=2)
    x = torch.randn(3, 2, 5, 8, 8)
    assert float(net(x, torch.rand(3)).abs().max()) == 0  # adaLN-Zero: starts at u = 0
    _randomise(net)
    t = torch.rand(3)
    out = net(x, t)
    assert out.shape == x.shape
    torch.testing.assert_close(out, net(x, t[:, None].expand(3, 5)))  # [B] ≡ repeated [B, T]
    tf = t[:, None].expand(3, 5).clone()
    tf[:, 2] = 1.0
    assert float((net(x, tf) - out).abs().max()) > 1e-4  # per-frame t is used


@torch.no_grad()
def test_mask_conditioning_inputs():
    net = VideoVelocityNet(channels=1, width=16, depth=2, mask_conditioning=True)
    _randomise(net)
    x, ref = torch.randn(2, 1, 4, 6, 6), torch.randn(2, 1, 4, 6, 6)
    t = torch.rand(2)
    free = net(x, t)
    cond = net(x, t, known=first_frame_mask(4), reference=ref)
    assert float((free - cond).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="reference"):
        net(x, t, known=first_frame_mask(4))
    plain = VideoVelocityNet(channels=1, width=16, depth=2)
    with pytest.raises(TypeError, match="mask_conditioning"):
        plain(x, t, known=first_frame_mask(4), reference=ref)


@pytest.mark.parametrize("kw", [dict(attention="temporal"),
                                dict(attention="global", attention_blocks=(1,)),
                                dict(temporal_dilations=(1, 2))])
@torch.no_grad()
def test_attention_and_dilated_variants(kw):
    net = VideoVelocityNet(channels=1, width=24, depth=2, patch=2, heads=4, **kw)
    x = torch.randn(2, 1, 6, 8, 8)
    t = torch.rand(2)
    assert float(net(x, t).abs().max()) == 0  # still adaLN-Zero at initialisation
    _randomise(net)
    out = net(x, t)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    tf = t[:, None].expand(2, 6).clone()
    tf[:, 3] = 1.0
    assert float((net(x, tf) - out).abs().max()) > 1e-4
    if kw.get("attention") == "global":
        assert list(net.attention) == ["1"]  # only after block 1


@torch.no_grad()
def test_temporal_reach_of_one_block():
    # One block's 3-frame convolution lets frame 0 see frames 0 and 1 only. Swapping two later
    # frames keeps the block's GroupNorm statistics (frames enter them as a multiset), so
    # frame 0 of the block's features must not change at all — unless attention (any distance)
    # or a temporal dilation of 2 (frames 0 and 2) reaches them. (The features are read before
    # the output GroupNorm, whose statistics do see the other frames.)
    x = torch.randn(2, 1, 6, 4, 4, generator=torch.Generator().manual_seed(3))
    t = torch.full((2,), 0.5)

    def change_at_frame0(swap, **kw):
        torch.manual_seed(0)
        net = VideoVelocityNet(channels=1, width=16, depth=1, heads=2, **kw)
        _randomise(net)
        seen = []
        net.out_norm.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        x2 = x.clone()
        x2[:, :, list(swap)] = x[:, :, list(reversed(swap))]
        net(x, t), net(x2, t)
        return float((seen[1] - seen[0])[:, :, 0].abs().max())

    assert change_at_frame0((4, 5)) < 1e-5
    assert change_at_frame0((4, 5), attention="temporal") > 1e-3
    assert change_at_frame0((4, 5), attention="global") > 1e-3
    assert change_at_frame0((2, 3)) < 1e-5
    assert change_at_frame0((2, 3), temporal_dilations=(2,)) > 1e-3


def test_model_bad_input():
    net = VideoVelocityNet(channels=1, width=8, depth=1, patch=2)
    with pytest.raises(ValueError, match="5 dims"):
        net(torch.zeros(2, 1, 4, 4), torch.rand(2))
    with pytest.raises(ValueError, match="channels"):
        net(torch.zeros(2, 3, 4, 4, 4), torch.rand(2))
    with pytest.raises(ValueError, match=r"\[B, T=4\]"):
        net(torch.zeros(2, 1, 4, 4, 4), torch.rand(2, 3))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.zeros(2, 1, 4, 5, 5), torch.rand(2))
    with pytest.raises(ValueError, match="attention must be"):
        VideoVelocityNet(attention="spatial")
    with pytest.raises(ValueError, match="attention_blocks"):
        VideoVelocityNet(depth=2, attention="temporal", attention_blocks=(2,))
    with pytest.raises(ValueError, match="divisible by attention heads"):
        VideoVelocityNet(width=10, attention="temporal", heads=4)
    with pytest.raises(ValueError, match="temporal_dilations"):
        VideoVelocityNet(temporal_dilations=(0,))


def test_training_approaches_the_exact_field_loss():
    # On a Gaussian video the flow-matching loss has a known floor, attained by the exact
    # field; a short masked (i2v) training run must close most of the gap from zero output.
    torch.manual_seed(0)
    gv = GaussianVideo(6, rho=0.9, height=4, width=4)
    known = first_frame_mask(6)
    g = torch.Generator().manual_seed(1)
    x1v = gv.sample(2048, generator=g).float()
    x0v = torch.randn(x1v.shape, generator=g)
    tv = torch.rand(2048, generator=g) * 0.98 + 0.01
    xt, target, tf = video_path_sample(x0v, x1v, tv, known=known)
    floor = float(masked_mse(gv.conditional_field(known)(xt.double(), tf.double()).float(),
                             target, known))
    zero = float(masked_mse(torch.zeros_like(target), target, known))
    net = VideoVelocityNet(channels=1, width=16, depth=2, time_dim=32, mask_conditioning=True)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(250):
        x1 = gv.sample(64, generator=g).float()
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(64, generator=g)
        x_t, tgt, t_frames = video_path_sample(x0, x1, t, known=known)
        loss = masked_mse(net(x_t, t_frames, known=known, reference=x1), tgt, known)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        val = float(masked_mse(net(xt, tf, known=known, reference=x1v), target, known))
    # measured: floor ≈ 0.53, zero output ≈ 2.0; require ≥ 80 % of the gap closed
    assert val < floor + 0.2 * (zero - floor), (val, floor, zero)


def test_bouncing_shapes_ground_truth():
    d = bouncing_shapes(6, num_frames=20, size=16, num_objects=2, speed=(1.0, 2.0),
                        generator=torch.Generator().manual_seed(0))
    assert d.video.shape == (6, 1, 20, 16, 16)
    assert float(d.video.min()) >= -1 and float(d.video.max()) <= 1
    r = d.radius[..., None, None]
    # every disc stays inside the box
    assert bool((d.positions >= r + 1 - 1e-5).all())
    assert bool((d.positions <= 14 - r + 1e-5).all())
    # constant speed, and position differences equal velocities except across a bounce
    speed = d.velocities.norm(dim=-1)
    torch.testing.assert_close(speed, speed[..., :1].expand_as(speed))
    step = d.positions[:, :, 1:] - d.positions[:, :, :-1]
    same = (torch.sign(d.velocities[:, :, 1:]) == torch.sign(d.velocities[:, :, :-1]))
    torch.testing.assert_close(step[same], d.velocities[:, :, 1:][same], atol=1e-4, rtol=0)
    # a single disc's rendered mass stays constant over frames (soft edges, no occlusion)
    one = bouncing_shapes(4, num_frames=10, size=16, generator=torch.Generator().manual_seed(1))
    mass = ((one.video + 1) / 2).sum(dim=(1, 3, 4))
    assert float(((mass - mass.mean(1, keepdim=True)).abs() / mass.mean(1, keepdim=True)).max()
                 ) < 0.01

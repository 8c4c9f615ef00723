"""The bouncing-disc recipe runs on the core loop `fit` and is the loop it documents.

`train_bouncing` once had its own loop; the reference below is that loop, written from the
recipe's formulas (draw order clips → noise → times from one generator; loss mean ‖v − (x1 −
x0)‖²; rate lr · min(1, (n + 1)/50) · (1 + cos πn/N)/2 with np.cos; clip 1; EMA decay
min(ema, (1 + n)/(10 + n))). Through `fit` the numbers must be the same to the last bit.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from flowmatch.plugins.video import bouncing_shapes, video_path_sample
from flowmatch.plugins.video.timesteps import sample_training_t
from flowmatch.plugins.video.training import WARMUP_STEPS, build_net, net_config, train_bouncing

DATA = dict(frames=4, size=8, radius=(1.0, 1.5))


def tiny_net():
    torch.manual_seed(0)
    return build_net(net_config(channels=1, width=8, depth=2, patch=2, dilations=[1, 2],
                                temporal_dilations=[1, 2], attention="temporal",
                                attention_blocks=[1]))


def reference_loop(net, *, steps, batch, lr, ema, t_method, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    averaged = copy.deepcopy(net).requires_grad_(False)
    losses = []
    for n in range(steps):
        rate = lr * min(1.0, (n + 1) / WARMUP_STEPS) * 0.5 * (1 + np.cos(np.pi * (n / steps)))
        for group in opt.param_groups:
            group["lr"] = rate
        x1 = bouncing_shapes(batch, num_frames=DATA["frames"], size=DATA["size"],
                             radius=DATA["radius"], generator=g).video
        x0 = torch.randn(x1.shape, generator=g)
        t = sample_training_t(batch, method=t_method, generator=g)
        x_t, target, _ = video_path_sample(x0, x1, t)
        loss = (net(x_t, t) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(ema, (1 + n) / (10 + n))
        with torch.no_grad():
            for pe, p in zip(averaged.parameters(), net.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
    return averaged, losses


@pytest.mark.parametrize("settings", [
    dict(steps=55, batch=4, lr=2e-3, ema=0.995, t_method="logit_normal", seed=0),
    dict(steps=12, batch=3, lr=3e-3, ema=0.9, t_method="uniform", seed=2),
])
def test_train_bouncing_is_its_documented_loop_bit_for_bit(settings):
    expected_ema, expected = reference_loop(tiny_net(), **settings)
    result = train_bouncing(tiny_net(), **DATA, **settings)
    assert result.steps == settings["steps"]
    assert result.losses == expected
    for a, b in zip(result.ema.parameters(), expected_ema.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in result.ema.parameters())


def test_train_bouncing_with_a_wall_clock_budget():
    result = train_bouncing(tiny_net(), steps=1, batch=2, budget_s=0.5, **DATA)
    assert result.steps == len(result.losses) >= 1  # steps is ignored under a budget
    assert result.seconds >= 0.5
    with pytest.raises(ValueError, match="budget_s must be > 0"):
        train_bouncing(tiny_net(), steps=1, budget_s=0.0, **DATA)
    with pytest.raises(ValueError, match="ema must lie in"):
        train_bouncing(tiny_net(), steps=1, ema=1.0, **DATA)


def test_train_bouncing_stops_on_a_non_finite_loss():
    net = tiny_net()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite at step 0"):
        train_bouncing(net, steps=3, batch=2, **DATA)

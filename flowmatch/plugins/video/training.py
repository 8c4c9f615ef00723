"""Training recipe and checkpoints for :class:`VideoVelocityNet` on procedural bouncing discs.

:func:`train_bouncing` is the recipe that ``benchmarks/video_bouncing.py`` and
``flowmatch video train`` share, run by the core loop :func:`flowmatch.training.fit`: fresh
:func:`bouncing_shapes` clips every step, noise x0 ~ N(0, I), σ = 1 − t drawn from
:func:`sample_training_t` (logit-normal by default), the straight path (the core
``CondOTPath``, the same numbers as :func:`video_path_sample`) and the unweighted velocity
MSE; AdamW (no weight decay) with a 50-step linear warm-up multiplying a cosine decay to 0
over the whole run, gradient norm clipped at 1, and an exponential moving average of the
weights.

A checkpoint (:func:`save_bouncing_checkpoint`) is a dict of plain Python types and tensors,
so it loads with ``torch.load(weights_only=True)`` and nothing executable is unpickled::

    {"format": "flowmatch.video.bouncing/1",
     "config": {"net": VideoVelocityNet keyword arguments, "data": bouncing_shapes settings,
                "train": recipe and run summary},
     "state_dict": EMA weights}
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flowmatch.paths import CondOTPath, PathSample
from flowmatch.plugins.video.data import bouncing_shapes
from flowmatch.plugins.video.model import VideoVelocityNet
from flowmatch.plugins.video.timesteps import sample_training_t
from flowmatch.training import fit

__all__ = ["CHECKPOINT_FORMAT", "BouncingTrainResult", "bouncing_radius", "build_net",
           "load_bouncing_checkpoint", "net_config", "recipe_attention_blocks",
           "save_bouncing_checkpoint", "train_bouncing"]

CHECKPOINT_FORMAT = "flowmatch.video.bouncing/1"
WARMUP_STEPS = 50


@dataclass
class BouncingTrainResult:
    """What :func:`train_bouncing` returns.

    ema: the averaged network (no gradients; the trained network itself is ``net``, updated in
    place); steps: optimiser steps taken; seconds: wall-clock time of the loop; losses: the
    training loss of every step.
    """

    ema: nn.Module
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def bouncing_radius(size: int) -> tuple[float, float]:
    """Disc radius range that scales with the frame: (2, 3) pixels at size 16, (1, 1.5) at 8.

    :func:`bouncing_shapes` needs radius < size/2 − 2, which (size/8, 3·size/16) meets for
    every size ≥ 8.
    """
    return (size / 8, 3 * size / 16)


def recipe_attention_blocks(depth: int) -> list[int]:
    """Blocks followed by attention in the measured recipe: the odd ones (1, 3 at depth 4).

    At depth 1 there is no odd block, so block 0. benchmarks/video_bouncing.py and
    ``flowmatch video train`` both use this default.
    """
    return list(range(1, depth, 2)) or [0]


def train_bouncing(
    net: nn.Module,
    *,
    steps: int,
    batch: int = 16,
    frames: int = 8,
    size: int = 16,
    objects: int = 1,
    radius: tuple[float, float] = (2.0, 3.0),
    lr: float = 2e-3,
    ema: float = 0.995,
    t_method: str = "logit_normal",
    t_loc: float = 0.0,
    t_scale: float = 1.0,
    seed: int = 0,
    budget_s: float | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> BouncingTrainResult:
    """Train ``net`` in place by flow matching on fresh bouncing-disc clips every step.

    A recipe over the core loop :func:`flowmatch.training.fit`. Each step draws, from one
    ``torch.Generator`` seeded with ``seed`` and in this order, the clips x1 [batch, 1,
    frames, size, size] (``bouncing_shapes`` with ``objects`` discs of ``radius``), the noise
    x0 ~ N(0, I) and the times t (:func:`sample_training_t`); the loss is mean ‖net(x_t, t) −
    (x1 − x0)‖² on x_t = t·x1 + (1 − t)·x0 (the straight path). The learning rate at step n
    (0-based) of a run whose progress is f ∈ [0, 1) is lr · min(1, (n + 1)/50) · (1 + cos πf)/2,
    with f = n/steps, or elapsed/budget_s when ``budget_s`` (wall-clock seconds) is given —
    then ``steps`` is ignored and the result depends on machine load. AdamW without weight
    decay, the gradient norm clipped at 1. The EMA decay at step n is
    min(ema, (1 + n)/(10 + n)), a short warm-up of the average. ``progress`` shows a tqdm bar.
    ``device`` and ``dtype`` move ``net`` (and the batches) there, as in :func:`fit`; the
    generator then lives on ``device``, and on a device other than the CPU each batch of
    clips is drawn on the CPU from a generator seeded by it (so a CUDA run is reproducible
    but draws other clips than a CPU run). ``net`` is left in eval mode.

    Raises ``FloatingPointError`` as soon as a loss is not finite.
    """
    if budget_s is None and (int(steps) != steps or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"budget_s must be > 0 seconds, got {budget_s}")
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if not 0 <= ema < 1:
        raise ValueError(f"ema must lie in [0, 1), got {ema}")

    def clips(n: int, generator: torch.Generator) -> torch.Tensor:
        if generator.device.type != "cpu":
            # bouncing_shapes draws on the CPU: seed a CPU generator from the device's stream
            seed_ = int(torch.randint(2**62, (1,), generator=generator,
                                      device=generator.device))
            generator = torch.Generator().manual_seed(seed_)
        return bouncing_shapes(n, num_frames=frames, size=size, num_objects=objects,
                               radius=radius, generator=generator).video

    def times(n: int, *, generator: torch.Generator | None = None,
              device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
        return sample_training_t(n, method=t_method, loc=t_loc, scale=t_scale,
                                 generator=generator, device=device,
                                 dtype=dtype or torch.float32)

    def mse(prediction: torch.Tensor, sample: PathSample, geometry: None) -> torch.Tensor:
        return (prediction - sample.dx_t).pow(2).mean()  # unweighted, per pixel

    def cosine(step: int, progress: float) -> float:
        # np.cos, not math.cos: the benchmark's numbers are bit-identical to earlier runs
        return 0.5 * (1 + np.cos(np.pi * progress))

    def ema_decay(n: int) -> float:
        return min(ema, (1 + n) / (10 + n))  # short warm-up of the average

    result = fit(net, clips, CondOTPath(), steps=None if budget_s is not None else int(steps),
                 batch_size=int(batch), lr=lr, weight_decay=0.0, ema_decay=ema_decay,
                 grad_clip=1.0, lr_schedule=cosine, warmup_steps=WARMUP_STEPS,
                 time_sampler=times, loss=mse, seed=seed, budget_s=budget_s,
                 progress=progress, log_every=1, device=device, dtype=dtype)
    return BouncingTrainResult(result.ema_model, result.steps, result.seconds, result.losses)


# -- checkpoints ------------------------------------------------------------------------------
_NET_KEYS = ("channels", "width", "depth", "dilations", "time_dim", "mask_conditioning",
             "patch", "temporal_dilations", "attention", "attention_blocks", "heads")


def net_config(**kwargs: Any) -> dict[str, Any]:
    """Complete :class:`VideoVelocityNet` keyword arguments as plain types (tuples → lists).

    Missing arguments get the network's defaults, so a checkpoint records the full
    architecture even if those defaults change later.
    """
    import inspect

    unknown = sorted(set(kwargs) - set(_NET_KEYS))
    if unknown:
        raise ValueError(f"unknown VideoVelocityNet arguments {unknown}; known: {_NET_KEYS}")
    defaults = {k: p.default for k, p in inspect.signature(VideoVelocityNet).parameters.items()}
    out = {k: kwargs.get(k, defaults[k]) for k in _NET_KEYS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def build_net(config: dict[str, Any]) -> VideoVelocityNet:
    """A fresh :class:`VideoVelocityNet` from :func:`net_config`'s dict (lists → tuples)."""
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return VideoVelocityNet(**kw)


def save_bouncing_checkpoint(path: str | os.PathLike[str], net: nn.Module,
                             config: dict[str, Any]) -> None:
    """Write ``{"format", "config", "state_dict"}`` atomically (temporary file, then rename).

    ``config`` must hold a ``"net"`` entry (:func:`net_config`) and only plain Python types;
    ``net``'s weights (the EMA network, usually) are stored as its ``state_dict``.
    """
    from flowmatch.training.checkpoint import save_checkpoint

    if "net" not in config:
        raise ValueError("config must hold the architecture under 'net' (see net_config)")
    _check_plain("config", config)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "config": config, "state_dict": state})


def _check_plain(name: str, value: Any) -> None:
    """Raise unless ``value`` is built from exact dict/list/tuple/str/int/float/bool/None.

    Exact types: a ``str`` subclass such as ``torch.__version__`` (TorchVersion) would be
    pickled as its class, which a weights-only load refuses.
    """
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"{name} keys must be str, got {k!r} ({type(k).__name__})")
            _check_plain(f"{name}[{k!r}]", v)
    elif type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(f"{name}[{i}]", v)
    elif value is not None and type(value) not in (str, int, float, bool):
        raise TypeError(f"{name} must be a plain Python value (dict, list, str, int, float, "
                        f"bool or None) for a weights-only checkpoint, got {value!r} of type "
                        f"{type(value).__name__}")


def load_bouncing_checkpoint(path: str | os.PathLike[str]
                             ) -> tuple[VideoVelocityNet, dict[str, Any]]:
    """Read a checkpoint of :func:`save_bouncing_checkpoint` (weights only); rebuild its net.

    Returns the network in eval mode without gradients, and the checkpoint's config. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` for anything else that is not
    such a checkpoint (unreadable, another format, weights that do not fit the config).
    """
    from flowmatch.training.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    name = str(path)
    fmt = state.get("format")
    if fmt != CHECKPOINT_FORMAT:
        hint = ""
        if fmt is None and state and all(torch.is_tensor(v) for v in state.values()):
            hint = (" It looks like a bare state_dict (e.g. from benchmarks/video_bouncing.py "
                    "--save-model), which lacks the architecture; train with "
                    "`flowmatch video train` instead.")
        raise ValueError(f"model {name!r} must be a {CHECKPOINT_FORMAT!r} checkpoint, got "
                         f"format {fmt!r}.{hint}")
    config, weights = state.get("config"), state.get("state_dict")
    if not isinstance(config, dict) or not isinstance(config.get("net"), dict) \
            or not isinstance(weights, dict):
        raise ValueError(f"model {name!r} must hold a 'config' dict with a 'net' entry and a "
                         f"'state_dict'; it holds the keys {sorted(state)}")
    try:
        net = build_net(config["net"])
        net.load_state_dict(weights)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"model {name!r}: its weights do not fit the network of its config "
                         f"{config['net']}: {err}") from err
    return net.eval().requires_grad_(False), config

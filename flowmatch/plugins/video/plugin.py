"""Command-line registration of the video plugin (``flowmatch video ...``).

The core CLI finds this module through the ``flowmatch.plugins`` entry point and calls
:func:`register_cli` with its argparse sub-parsers. Nothing heavy is imported here: torch and
the plugin modules load only when a ``video`` sub-command runs, so ``flowmatch --help`` stays
fast.

Sub-commands:
    flowmatch video schedule --steps 28 --shift 3     print the σ / t / timestep schedule
    flowmatch video bouncing --out strip.png          render procedural bouncing-shape clips
    flowmatch video train --out model.pt              train VideoVelocityNet on bouncing discs
    flowmatch video sample --model model.pt --out samples.png [--gif samples.gif]
                                                      sample clips, print their physics next
                                                      to real clips' (--first-frame-from-data:
                                                      image-to-video from a real first frame)

``train`` runs the recipe of benchmarks/video_bouncing.py (``training.train_bouncing``; the
same arguments give the same weights) and writes a weights-only checkpoint
(``training.save_bouncing_checkpoint``) that ``sample`` rebuilds the network from. Pictures are
written by :func:`save_strip` (a labelled grid, frames enlarged) and :func:`save_gif`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from flowmatch.cli import add_run_options, progress_wanted, resolve_device, resolve_dtype

__all__ = ["StripLayout", "read_strip_layout", "register_cli", "save_gif", "save_strip"]

_RAW = argparse.RawDescriptionHelpFormatter

EXAMPLES_VIDEO = """examples:
  flowmatch video schedule --steps 28 --shift 3
  flowmatch video bouncing --out clips.png --num 4 --frames 8
  flowmatch video train --out bouncing.pt --steps 2000
  flowmatch video sample --model bouncing.pt --out samples.png --gif samples.gif
"""

EXAMPLES_SCHEDULE = """examples:
  flowmatch video schedule --steps 28 --shift 3
  flowmatch video schedule --steps 50 --mu 1.15 --terminal 0.02
  flowmatch video schedule --steps 20 --shift 5 --compare-diffusers
"""

EXAMPLES_BOUNCING = """examples:
  flowmatch video bouncing --out clips.png
  flowmatch video bouncing --out clips.png --num 6 --frames 12 --size 32 --objects 2 --seed 1
"""

EXAMPLES_TRAIN = """examples:
  flowmatch video train --out bouncing.pt                      the benchmark's recipe
  flowmatch video train --out quick.pt --steps 500 --width 32  a rough, quick model
  flowmatch video train --out gpu.pt --device cuda --dtype float32 --quiet
"""

EXAMPLES_SAMPLE = """examples:
  flowmatch video sample --model bouncing.pt --out samples.png
  flowmatch video sample --model bouncing.pt --out samples.png --gif samples.gif --num 4
  flowmatch video sample --model bouncing.pt --out i2v.png --first-frame-from-data --seed 3
  flowmatch video sample --model bouncing.pt --out s.png --method euler --steps 32 --device cuda
"""


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``video`` command (with its sub-commands) to a CLI's sub-parsers."""
    video = subparsers.add_parser("video", help="flow matching for video latents",
                                  description="Flow matching for video latents [B, C, T, H, "
                                  "W]: print sampling schedules, render procedural clips, and "
                                  "train and sample a small video velocity network on "
                                  "bouncing discs.", epilog=EXAMPLES_VIDEO, formatter_class=_RAW)
    sub = video.add_subparsers(dest="video_command", required=True, metavar="COMMAND")

    sch = sub.add_parser("schedule", help="print a sampling schedule (shifted once)",
                         description="Print the sigma / t / timestep schedule of N sampling "
                         "steps, shifted once (static shift s or exponential shift mu).",
                         epilog=EXAMPLES_SCHEDULE, formatter_class=_RAW)
    sch.add_argument("--steps", type=int, default=28, help="sampling steps N (default 28)")
    group = sch.add_mutually_exclusive_group()
    group.add_argument("--shift", type=float, default=None, help="static shift s > 0")
    group.add_argument("--mu", type=float, default=None, help="exponential shift (s = e^mu)")
    sch.add_argument("--terminal", type=float, default=None, help="stretch to this last sigma")
    sch.add_argument("--compare-diffusers", action="store_true",
                     help="also print diffusers' set_timesteps(N) sigmas (shifted twice)")
    sch.set_defaults(func=_cmd_schedule)

    bounce = sub.add_parser("bouncing", help="render bouncing-shape clips to a PNG strip",
                            description="Render procedural bouncing-disc clips (the training "
                            "data of `flowmatch video train`) as a labelled PNG strip: rows "
                            "are clips, columns frames.", epilog=EXAMPLES_BOUNCING,
                            formatter_class=_RAW)
    bounce.add_argument("--out", required=True, help="output .png path")
    bounce.add_argument("--num", type=_positive_int, default=4, help="clips (default 4)")
    bounce.add_argument("--frames", type=_positive_int, default=8,
                        help="frames per clip (default 8)")
    bounce.add_argument("--size", type=_positive_int, default=16,
                        help="frame side in pixels (default 16)")
    bounce.add_argument("--objects", type=_positive_int, default=1,
                        help="discs per clip (default 1)")
    bounce.add_argument("--seed", type=int, default=0, help="seed of the clips (default 0)")
    bounce.set_defaults(func=_cmd_bouncing)

    train = sub.add_parser(
        "train", help="train a video velocity network on procedural bouncing discs",
        description="Train VideoVelocityNet by flow matching on fresh bouncing-disc clips "
        "(the recipe of benchmarks/video_bouncing.py: AdamW, 50-step warm-up and cosine "
        "decay, EMA 0.995, sigma = 1 - t ~ logit-normal(0, 1), velocity MSE) and save the EMA "
        "weights as a weights-only checkpoint for `flowmatch video sample`. The disc radius "
        "scales with --size (2-3 px at 16).", epilog=EXAMPLES_TRAIN, formatter_class=_RAW)
    train.add_argument("--out", required=True, help="checkpoint path (written atomically)")
    train.add_argument("--steps", type=_positive_int, default=16000,
                       help="optimiser steps (default 16000, about 26 min on one thread)")
    train.add_argument("--batch", type=_positive_int, default=16,
                       help="clips per optimiser step (default 16)")
    train.add_argument("--width", type=_positive_int, default=48, help="hidden channels")
    train.add_argument("--depth", type=_positive_int, default=4, help="residual blocks")
    train.add_argument("--frames", type=_frames, default=8, help="frames per clip (≥ 3)")
    train.add_argument("--size", type=_size, default=16, help="frame side, even and ≥ 8")
    train.add_argument("--lr", type=_positive_float, default=2e-3, help="peak learning rate")
    train.add_argument("--threads", type=_positive_int, default=None,
                       help="torch CPU threads (default: torch's choice)")
    train.add_argument("--temporal-dilations", type=_int_list, default=[1, 2],
                       help="comma-separated dilation of each block's temporal convolution")
    train.add_argument("--attention", choices=["none", "temporal", "global"],
                       default="temporal",
                       help="self-attention after the blocks (default temporal)")
    train.add_argument("--attention-blocks", type=_int_list, default=None,
                       help="comma-separated block indices followed by attention (default the "
                            "odd ones, 1,3 at depth 4; block 0 at depth 1)")
    add_run_options(train, seed_help="initialisation and data seed (default 0)")
    train.set_defaults(func=_cmd_train)

    smp = sub.add_parser(
        "sample", help="sample clips from a trained checkpoint and score their physics",
        description="Sample clips from a `flowmatch video train` checkpoint with a fixed-step "
        "ODE solver on the shifted grid sigma = linspace(1, 1/steps, steps) + [0], write them "
        "as a labelled PNG strip (rows = clips, columns = frames) and print their physics "
        "(mass error, one-object frames, centroid acceleration and speed) next to real "
        "clips'.", epilog=EXAMPLES_SAMPLE, formatter_class=_RAW)
    smp.add_argument("--model", required=True, help="checkpoint from `flowmatch video train`")
    smp.add_argument("--out", required=True, help="output .png strip")
    smp.add_argument("--gif", default=None, help="optional animated GIF of the samples")
    smp.add_argument("--num", type=_positive_int, default=8, help="clips to sample (default 8)")
    smp.add_argument("--method", choices=["euler", "heun", "midpoint"], default="heun",
                     help="ODE solver (default heun)")
    smp.add_argument("--steps", type=_positive_int, default=16,
                     help="solver steps (default 16; Heun spends 2·steps − 1 network calls, "
                          "midpoint 2·steps)")
    smp.add_argument("--shift", type=_positive_float, default=1.0,
                     help="static shift of the sigma grid (1 = none)")
    smp.add_argument("--threads", type=_positive_int, default=None,
                     help="torch CPU threads (default: torch's choice)")
    smp.add_argument("--first-frame-from-data", action="store_true",
                     help="image-to-video: condition on frame 0 of real clips (per-frame for a "
                          "mask-conditioned net, else by replacement, which is biased)")
    add_run_options(smp, seed_help="seed of the noise and the real clips (default 0)")
    smp.set_defaults(func=_cmd_sample)
    return video


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _frames(text: str) -> int:
    value = int(text)
    if value < 3:
        raise argparse.ArgumentTypeError(
            f"must be ≥ 3 (the centroid acceleration needs three frames), got {value}")
    return value


def _size(text: str) -> int:
    value = int(text)
    if value < 8 or value % 2:
        raise argparse.ArgumentTypeError(
            f"must be an even number ≥ 8 (patch 2, and the discs need room), got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers, e.g. 1,2, got {text!r}") from None
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative integers, got {text!r}")
    return values


def _fail(command: str, err: BaseException, code: int = 1) -> int:
    print(f"flowmatch video {command}: error: {err}", file=sys.stderr)
    return code


def _cmd_schedule(args: argparse.Namespace) -> int:
    from flowmatch.plugins.video.timesteps import diffusers_double_shift_sigmas, flow_sigmas

    try:
        sig = flow_sigmas(args.steps, shift=args.shift, mu=args.mu, terminal=args.terminal)
    except ValueError as err:
        return _fail("schedule", err, 2)
    other = None
    if args.compare_diffusers:
        if args.mu is not None or args.terminal is not None:
            raise SystemExit("--compare-diffusers supports a static --shift only")
        other = diffusers_double_shift_sigmas(args.steps, args.shift or 1.0)
    head = f"{'i':>3} {'sigma':>10} {'t':>10} {'timestep':>10}"
    print(head + (f" {'diffusers':>10}" if other is not None else ""))
    for i, s in enumerate(sig.tolist()):
        row = f"{i:>3} {s:>10.6f} {1 - s:>10.6f} {1000 * s:>10.3f}"
        if other is not None:
            row += f" {float(other[i]):>10.6f}"
        print(row)
    return 0


def _cmd_bouncing(args: argparse.Namespace) -> int:
    import torch

    from flowmatch.plugins.video.data import bouncing_shapes

    data = bouncing_shapes(args.num, num_frames=args.frames, size=args.size,
                           num_objects=args.objects,
                           generator=torch.Generator().manual_seed(args.seed))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_strip(data.video, args.out,
               title=f"bouncing discs, {args.objects} per clip, {args.size}x{args.size} px, "
                     f"seed {args.seed}")
    print(f"rendered {args.num} clips of {args.frames} frames")
    print(f"wrote {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import time

    import torch

    from flowmatch import __version__
    from flowmatch.plugins.video.training import (
        WARMUP_STEPS,
        bouncing_radius,
        build_net,
        net_config,
        recipe_attention_blocks,
        save_bouncing_checkpoint,
        train_bouncing,
    )

    if args.attention_blocks is not None and args.attention == "none":
        return _fail("train", "--attention-blocks needs --attention temporal or global", 2)
    dtype = resolve_dtype("video train", args.dtype)
    if dtype is None:
        return 2
    out = Path(args.out)
    if out.is_dir():
        return _fail("train", f"--out {str(out)!r} is a folder; give a file path", 2)
    device = resolve_device("video train", args.device)
    if device is None:
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)  # fail now, not after the training run
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # architecture of benchmarks/video_bouncing.py: patch 2, spatial dilations 1, 2, 1, 2
    try:
        blocks = args.attention_blocks
        if blocks is None and args.attention != "none":
            blocks = recipe_attention_blocks(args.depth)
        arch = net_config(channels=1, width=args.width, depth=args.depth, patch=2,
                          dilations=[1, 2, 1, 2], temporal_dilations=args.temporal_dilations,
                          attention=args.attention, attention_blocks=blocks)
        torch.manual_seed(args.seed)  # the network's initialisation, as in the benchmark
        net = build_net(arch)
    except ValueError as err:
        return _fail("train", err, 2)
    data = dict(frames=args.frames, size=args.size, objects=1,
                radius=list(bouncing_radius(args.size)))
    recipe = dict(steps=args.steps, batch=args.batch, lr=args.lr, ema=0.995,
                  warmup_steps=WARMUP_STEPS, t_method="logit_normal", t_loc=0.0, t_scale=1.0,
                  seed=args.seed)
    started = time.perf_counter()
    result = train_bouncing(
        net, steps=args.steps, batch=args.batch, frames=args.frames, size=args.size,
        objects=1, radius=tuple(data["radius"]), lr=args.lr, ema=recipe["ema"],
        t_method=recipe["t_method"], t_loc=recipe["t_loc"], t_scale=recipe["t_scale"],
        seed=args.seed, progress=progress_wanted(args.quiet), device=device, dtype=dtype)
    tail = result.losses[-max(1, len(result.losses) // 10):]
    head = result.losses[:max(1, len(result.losses) // 10)]
    final_loss = sum(tail) / len(tail)
    params = sum(p.numel() for p in net.parameters())
    config = {"net": arch, "data": data,
              "train": {**recipe, "seconds": round(result.seconds, 2),
                        "final_loss": final_loss, "parameters": params,
                        "threads": torch.get_num_threads(), "device": str(device),
                        "dtype": args.dtype, "flowmatch": str(__version__),
                        "torch": str(torch.__version__)}}
    from flowmatch.training.distributed import is_main_process

    if not is_main_process():  # under torchrun every rank holds the same weights: one writes
        return 0
    save_bouncing_checkpoint(out, result.ema, config)
    print(f"trained {result.steps} steps in {time.perf_counter() - started:.1f} s ({params} "
          f"parameters, {device}, {args.dtype}, threads {torch.get_num_threads()}); training "
          f"loss {sum(head) / len(head):.4f} (first 10%) → {final_loss:.4f} (last 10%)")
    print(f"wrote {out}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from flowmatch.plugins.video.conditioning import first_frame_mask
    from flowmatch.plugins.video.data import bouncing_shapes
    from flowmatch.plugins.video.metrics import STEADY_ACCEL, physics, trajectory_accel
    from flowmatch.plugins.video.samplers import VideoSampler
    from flowmatch.plugins.video.timesteps import flow_time_grid
    from flowmatch.plugins.video.training import load_bouncing_checkpoint

    dtype = resolve_dtype("video sample", args.dtype)
    if dtype is None:
        return 2
    device = resolve_device("video sample", args.device)
    if device is None:
        return 2
    try:
        net, config = load_bouncing_checkpoint(args.model)
    except (FileNotFoundError, ValueError) as err:
        return _fail("sample", err)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    net = net.to(device=device, dtype=dtype)
    data = config.get("data", {})
    try:
        frames, size = int(data["frames"]), int(data["size"])
        radius = tuple(float(r) for r in data["radius"])
    except (KeyError, TypeError, ValueError) as err:
        return _fail("sample", f"model {args.model!r} lacks the data settings "
                     f"(frames, size, radius) in its config: {err!r}")
    g = torch.Generator().manual_seed(args.seed)
    real = bouncing_shapes(args.num, num_frames=frames, size=size,
                           num_objects=int(data.get("objects", 1)), radius=radius, generator=g)
    x0 = torch.randn(real.video.shape, generator=g).to(device=device, dtype=dtype)
    reference = real.video.to(device=device, dtype=dtype)
    # sigma = linspace(1, 1/N, N) shifted once, then 0 (no tiny last step; the benchmark's grid)
    grid = flow_time_grid(args.steps, shift=args.shift,
                          sigma_min=1.0 / args.steps if args.steps > 1 else 0.0)
    grid = grid.to(device=device, dtype=dtype)
    model, cond, note = net, {}, None
    if args.first_frame_from_data:
        known = first_frame_mask(frames).to(device)
        if net.mask_conditioning:
            def model(x, t):
                return net(x, t, known=known, reference=reference)

            cond = dict(known=known, reference=reference, conditioning="per_frame")
            note = "frame 0 given from the data clips (mask-conditioned net, per-frame time)"
        else:
            cond = dict(known=known, reference=reference, conditioning="replace")
            note = ("frame 0 given from the data clips by replacement: this net was trained "
                    "without mask conditioning, so the other frames see only the noised frame "
                    "0, which is biased (see flowmatch/plugins/video/samplers.py)")
    # a bar over the network calls: Euler spends one a step, midpoint two, Heun two but one on
    # its last step (which ends at t = 1)
    calls = {"euler": args.steps, "heun": max(1, 2 * args.steps - 1),
             "midpoint": 2 * args.steps}[args.method]
    from tqdm.auto import tqdm

    bar = tqdm(total=calls, desc="sample", unit="call", disable=not progress_wanted(args.quiet))

    def field(x, t, **kw):
        bar.update(1)
        return model(x, t, **kw)

    sampler = VideoSampler(field, args.method)
    with torch.no_grad(), bar:
        x = sampler.sample(x0, time_grid=grid, **cond)
    x = x.float().cpu()
    ph_s, ph_d = physics(x), physics(real.video)
    true_acc = trajectory_accel(real.positions)
    for path in (args.out, args.gif):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    cond_note = ", frame 0 from data" if args.first_frame_from_data else ""
    save_strip(x, args.out, row_labels=[f"sample {i}" for i in range(args.num)],
               title=f"samples: {args.method}, {args.steps} steps, shift {args.shift:g}, seed "
                     f"{args.seed}{cond_note}")
    if args.gif is not None:
        save_gif(x, args.gif)

    print(f"{args.method}, {args.steps} steps ({sampler.nfe} network calls), shift "
          f"{args.shift:g}: {args.num} clips of {frames} frames, {size}×{size} px, on "
          f"{device} in {args.dtype}")
    if note is not None:
        print(note)
    print(f"{'':<9}{'mass err':>10}{'1 object':>10}{'|accel|':>10}{'median':>8}{'steady':>8}"
          f"{'speed':>8}{'mass':>8}")
    for name, ph in (("samples", ph_s), ("data", ph_d)):
        print(f"{name:<9}{ph['mass_error']:>10.4f}{ph['one_object_frames']:>10.3f}"
              f"{ph['centroid_accel']:>10.3f}{ph['centroid_accel_median']:>8.3f}"
              f"{ph['steady_fraction']:>8.3f}{ph['centroid_speed']:>8.3f}"
              f"{ph['mean_mass']:>8.2f}")
    print(f"(centroid |accel| mean and median in px/frame², steady: fraction of frame triplets "
          f"with |accel| < {STEADY_ACCEL}; speed in px/frame, mass in px; data: {args.num} "
          f"real clips, true |accel| from their positions {true_acc:.3f})")
    print(f"wrote {args.out}" + (f" and {args.gif}" if args.gif is not None else ""))
    return 0


def save_gif(video, path: str, *, scale: int = 4, duration_ms: int = 150) -> None:
    """Save clips [B, 1, T, H, W] in [−1, 1] as an animated GIF, clips side by side.

    Each GIF frame is one video frame of every clip, enlarged ``scale`` times (nearest
    neighbour); it loops forever at ``duration_ms`` per frame.
    """
    import numpy as np
    from PIL import Image

    from flowmatch.plugins.video.metrics import occupancy

    occ = (occupancy(video.detach().cpu()) * 255).byte().numpy()  # [B, T, H, W]
    B, T, H, W = occ.shape
    frames = [Image.fromarray(np.concatenate(list(occ[:, k]), axis=1)).resize(
        (W * B * scale, H * scale), Image.NEAREST) for k in range(T)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)


STRIP_KEY = "flowmatch.strip"
"""Name of the PNG text chunk in which :func:`save_strip` records its :class:`StripLayout`."""


@dataclass(frozen=True)
class StripLayout:
    """Where :func:`save_strip` put each frame: frame ``k`` of clip ``b`` is the block of
    pixels ``image[top + b·(cell_h + gap) : … + cell_h, left + k·(cell_w + gap) : … + cell_w]``,
    each video pixel a ``scale`` × ``scale`` square.

    ``width`` and ``height`` are the image's size in pixels; ``clips`` and ``frames`` the grid.
    """

    clips: int
    frames: int
    scale: int
    cell_h: int
    cell_w: int
    gap: int
    top: int
    left: int
    width: int
    height: int

    def box(self, clip: int, frame: int) -> tuple[int, int, int, int]:
        """Pixel rows and columns ``(y0, x0, y1, x1)`` (end-exclusive) of one frame."""
        y0 = self.top + clip * (self.cell_h + self.gap)
        x0 = self.left + frame * (self.cell_w + self.gap)
        return y0, x0, y0 + self.cell_h, x0 + self.cell_w


def read_strip_layout(path: str | Path) -> StripLayout:
    """The :class:`StripLayout` that :func:`save_strip` stored in a PNG's text chunk."""
    from PIL import Image

    with Image.open(path) as image:
        text = getattr(image, "text", {}).get(STRIP_KEY)
    if text is None:
        raise ValueError(f"{str(path)!r} has no {STRIP_KEY!r} text chunk: not written by "
                         "save_strip")
    return StripLayout(**json.loads(text))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow ≥ 10.1, FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()  # the small bitmap font


def save_strip(video, path: str | Path, *, scale: int | None = None,
               row_labels: list[str] | None = None, frame_labels: list[str] | None = None,
               title: str | None = None) -> StripLayout:
    """Save clips [B, 1, T, H, W] in [−1, 1] as a labelled PNG grid (rows = clips, columns =
    frames) and return its :class:`StripLayout`.

    Frames are enlarged ``scale`` times by nearest neighbour (default: the smallest factor
    that makes a frame at least 64 px on its longer side), in gray levels (−1 black, 1 white)
    separated by white gaps. Each column is labelled with its frame index (``t=0``, ``t=1``,
    …: the time axis of the clip, not the flow time), each row with ``row_labels`` (default
    ``clip 0``, ``clip 1``, …), and ``title``, if given, heads the picture. The layout is also
    stored in the PNG's ``flowmatch.strip`` text chunk (:func:`read_strip_layout`), so that a
    script can cut the frames out again.
    """
    import numpy as np
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    v = ((video.detach().float().cpu().clamp(-1, 1) + 1) / 2)[:, 0]  # [B, T, H, W]
    B, T, H, W = v.shape
    if scale is None:
        scale = max(1, math.ceil(64 / max(H, W)))
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    rows = [f"clip {b}" for b in range(B)] if row_labels is None else list(row_labels)
    cols = [f"t={k}" for k in range(T)] if frame_labels is None else list(frame_labels)
    if len(rows) != B or len(cols) != T:
        raise ValueError(f"row_labels must have {B} entries and frame_labels {T}, got "
                         f"{len(rows)} and {len(cols)}")
    font = _font(12)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        x0, y0, x1, y1 = measure.textbbox((0, 0), text, font=font)
        return x1 - x0, y1 - y0

    pad, gap = 4, 2
    line_h = max(text_size(t)[1] for t in [*cols, *rows, "Ag"]) + pad
    cell_h, cell_w = H * scale, W * scale
    left = max(text_size(r)[0] for r in rows) + 2 * pad
    title_h = line_h + pad if title else 0
    top = title_h + line_h + pad
    width = max(left + T * cell_w + (T - 1) * gap + pad,
                (text_size(title)[0] + 2 * pad) if title else 0)
    height = top + B * cell_h + (B - 1) * gap + pad
    layout = StripLayout(clips=B, frames=T, scale=int(scale), cell_h=cell_h, cell_w=cell_w,
                         gap=gap, top=top, left=left, width=width, height=height)

    image = Image.new("L", (width, height), 255)
    pixels = (v.numpy() * 255).round().astype(np.uint8)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((pad, pad), title, fill=0, font=font)
    for k, label in enumerate(cols):
        _, x0, _, x1 = layout.box(0, k)
        w, _ = text_size(label)
        draw.text(((x0 + x1 - w) // 2, title_h + pad // 2), label, fill=0, font=font)
    for b, label in enumerate(rows):
        y0, _, y1, _ = layout.box(b, 0)
        _, h = text_size(label)
        draw.text((pad, (y0 + y1 - h) // 2 - 2), label, fill=0, font=font)
        for k in range(T):
            frame = Image.fromarray(pixels[b, k]).resize((cell_w, cell_h), Image.NEAREST)
            y0, x0, _, _ = layout.box(b, k)
            image.paste(frame, (x0, y0))
    info = PngInfo()
    info.add_text(STRIP_KEY, json.dumps(asdict(layout)))
    if title:
        info.add_text("Title", title)
    image.save(path, pnginfo=info)
    return layout

"""Command-line registration of the video plugin (``flowmatch video ...``).

The core CLI finds this module through the ``flowmatch.plugins`` entry point and calls
:func:`register_cli` with its argparse sub-parsers. Nothing heavy is imported here: torch and
the plugin modules load only when a ``video`` sub-command runs, so ``flowmatch --help`` stays
fast.

Sub-commands:
    flowmatch video schedule --steps 28 --shift 3     print the σ / t / timestep schedule
    flowmatch video bouncing --out strip.png          render procedural bouncing-shape clips
"""

from __future__ import annotations

import argparse

__all__ = ["register_cli"]


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``video`` command (with its sub-commands) to a CLI's sub-parsers."""
    video = subparsers.add_parser("video", help="flow matching for video latents",
                                  description=__doc__.split("\n\n")[0])
    sub = video.add_subparsers(dest="video_command", required=True)

    sch = sub.add_parser("schedule", help="print a sampling schedule (shifted once)")
    sch.add_argument("--steps", type=int, default=28)
    group = sch.add_mutually_exclusive_group()
    group.add_argument("--shift", type=float, default=None, help="static shift s > 0")
    group.add_argument("--mu", type=float, default=None, help="exponential shift (s = e^mu)")
    sch.add_argument("--terminal", type=float, default=None, help="stretch to this last sigma")
    sch.add_argument("--compare-diffusers", action="store_true",
                     help="also print diffusers' set_timesteps(N) sigmas (shifted twice)")
    sch.set_defaults(func=_cmd_schedule)

    bounce = sub.add_parser("bouncing", help="render bouncing-shape clips to a PNG strip")
    bounce.add_argument("--out", required=True, help="output .png path")
    bounce.add_argument("--num", type=int, default=4)
    bounce.add_argument("--frames", type=int, default=8)
    bounce.add_argument("--size", type=int, default=16)
    bounce.add_argument("--objects", type=int, default=1)
    bounce.add_argument("--seed", type=int, default=0)
    bounce.set_defaults(func=_cmd_bouncing)
    return video


def _cmd_schedule(args: argparse.Namespace) -> int:
    from flowmatch.plugins.video.timesteps import diffusers_double_shift_sigmas, flow_sigmas

    sig = flow_sigmas(args.steps, shift=args.shift, mu=args.mu, terminal=args.terminal)
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
    save_strip(data.video, args.out)
    print(f"wrote {args.num} clips of {args.frames} frames to {args.out}")
    return 0


def save_strip(video, path: str) -> None:
    """Save clips [B, 1, T, H, W] in [−1, 1] as a PNG grid (rows = clips, columns = frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = ((video.detach().float().clamp(-1, 1) + 1) / 2)[:, 0]  # [B, T, H, W]
    B, T, H, W = v.shape
    grid = v.permute(0, 2, 1, 3).reshape(B * H, T * W).numpy()
    plt.imsave(path, grid, cmap="gray", vmin=0, vmax=1)

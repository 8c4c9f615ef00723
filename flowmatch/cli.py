"""The ``flowmatch`` command line: built-in subcommands plus plugin subcommands.

Only argparse is imported at start-up; each subcommand imports what it needs when it runs, so
``flowmatch --help`` stays fast. Plugins add subcommands through the entry-point group
``flowmatch.plugins``: the entry point names a module (or an object) with a
``register_cli(subparsers)`` function (or is that function), which adds parsers and sets
``func`` (a callable taking the parsed arguments and returning an exit code or None) with
``set_defaults``. Plugins are loaded only when the command line asks for something that is not
built in (a plugin command, or the help listing); one that fails to load is reported with a
warning and skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

PLUGIN_GROUP = "flowmatch.plugins"
DEMO_DATASETS = ("checkerboard", "8gaussians", "moons", "spirals")
"""Names of ``flowmatch.data.TOY_DATASETS``, listed here so --help needs no torch import."""


# -- shared option handling --------------------------------------------------------------------
DTYPES = ("float32", "float64")

EXAMPLES_MAIN = """examples:
  flowmatch demo                                     learn the 2D checkerboard, plot samples
  flowmatch demo --dataset moons --steps 500 --out moons.png
  flowmatch video train --out bouncing.pt --steps 2000
  flowmatch video sample --model bouncing.pt --out samples.png --gif samples.gif
  flowmatch COMMAND --help                           the options of one command
"""

EXAMPLES_DEMO = """examples:
  flowmatch demo
  flowmatch demo --dataset 8gaussians --steps 500 --out gaussians.png
  flowmatch demo --device cuda --dtype float64 --seed 3 --quiet

The PNG shows data beside flow samples and states W2(samples, data) next to W2 between two
independent data sets of the same size: finite-sample noise alone gives that much, so a W2
close to it is as good as the estimate can tell.
"""


def progress_wanted(quiet: bool) -> bool:
    """Whether to draw progress bars: not with ``--quiet``, and only when stderr is a terminal
    (a log file or a pipe gets no bar)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return not quiet and bool(isatty and isatty())


def resolve_dtype(command: str, text: str) -> Any:
    """``--dtype`` to a torch dtype; an unknown name prints one error line and returns None."""
    if text not in DTYPES:
        print(f"flowmatch {command}: error: --dtype must be one of {', '.join(DTYPES)}, got "
              f"{text!r}", file=sys.stderr)
        return None
    import torch

    return getattr(torch, text)


def resolve_device(command: str, text: str) -> Any:
    """``--device`` to a usable torch device; an unusable one prints one error line and returns
    None (a CUDA name on a CPU build raises an AssertionError deep inside torch otherwise)."""
    import torch

    try:
        device = torch.device(text)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"flowmatch {command}: error: --device {text!r} is not usable here: {first}",
              file=sys.stderr)
        return None
    return device


def add_run_options(p: argparse.ArgumentParser, *, seed_help: str,
                    device: bool = True, dtype: bool = True) -> None:
    """--seed, --device, --dtype and --quiet, worded the same for every command that trains or
    samples. ``--no-progress`` stays as an alias of ``--quiet``."""
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    if device:
        p.add_argument("--device", default="cpu",
                       help="torch device to train or sample on, e.g. cpu, cuda, cuda:1, mps "
                            "(default cpu)")
    if dtype:
        p.add_argument("--dtype", default="float32", metavar="{" + ",".join(DTYPES) + "}",
                       help="floating-point precision of the network and the data "
                            "(default float32)")
    p.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bars (they are also off when stderr is not a terminal)")


# -- demo -------------------------------------------------------------------------------------
def _add_demo(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a 2D flow on a toy data set in seconds and plot its samples",
        description="Train an MLP velocity field by flow matching on a 2D toy distribution, "
        "sample it with the midpoint ODE solver, report the Wasserstein-2 distance to fresh "
        "data and write a PNG of samples next to data.",
        epilog=EXAMPLES_DEMO, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", choices=DEMO_DATASETS, default="checkerboard",
                   help="the 2D toy distribution to learn (default checkerboard)")
    p.add_argument("--steps", type=_positive_int, default=2000,
                   help="training updates (default 2000)")
    p.add_argument("--batch-size", type=_positive_int, default=256,
                   help="data points per training update (default 256)")
    p.add_argument("--hidden", type=_positive_int, default=256, help="MLP width (default 256)")
    p.add_argument("--layers", type=_positive_int, default=4,
                   help="MLP hidden layers (default 4)")
    p.add_argument("--lr", type=float, default=5e-3,
                   help="peak learning rate of AdamW, cosine decay to 0 (default 5e-3)")
    p.add_argument("--samples", type=_positive_int, default=2000,
                   help="samples drawn for the plot and the W2 estimate (default 2000)")
    p.add_argument("--ode-steps", type=_positive_int, default=50,
                   help="midpoint steps of the sampler, 2 field evaluations each (default 50)")
    p.add_argument("--out", default="demo.png", help="where to write the PNG (default demo.png)")
    add_run_options(p, seed_help="seed of the initialisation, the training data and the "
                                 "samples (default 0)")
    p.set_defaults(func=_run_demo)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _w2_assignment(a: Any, b: Any) -> float:
    """Exact W2 between two equal-size point clouds (optimal assignment on squared distances).

    POT's network simplex (``ot.emd2``) when POT is installed — about 9× faster than scipy's
    assignment solver at 2,000 points — and ``scipy.optimize.linear_sum_assignment`` otherwise;
    both solve the same linear program exactly.
    """
    import numpy as np
    import torch

    cost = torch.cdist(a.double().cpu(), b.double().cpu()).pow(2).numpy()
    try:
        import ot
    except ImportError:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        return float(np.sqrt(cost[rows, cols].mean()))
    w = np.full(len(cost), 1.0 / len(cost))
    return float(np.sqrt(ot.emd2(w, w, cost, numItermax=10**7)))


def _run_demo(args: argparse.Namespace) -> int:
    # check what can fail before spending the training time
    dtype = resolve_dtype("demo", args.dtype)
    if dtype is None:
        return 2
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        print(f"flowmatch demo: error: the folder of --out {args.out!r} does not exist",
              file=sys.stderr)
        return 2
    device = resolve_device("demo", args.device)
    if device is None:
        return 2
    import torch

    from flowmatch.data import get_toy_dataset
    from flowmatch.models import MLP
    from flowmatch.paths import CondOTPath
    from flowmatch.solvers import ODESolver
    from flowmatch.training import fit

    started = time.perf_counter()
    data = get_toy_dataset(args.dataset)
    torch.manual_seed(args.seed)  # the network's initialisation
    model = MLP(2, hidden=args.hidden, layers=args.layers)
    result = fit(model, data.sample, CondOTPath(), steps=args.steps, batch_size=args.batch_size,
                 lr=args.lr, ema_decay=0.99, lr_schedule="cosine", warmup_steps=0,
                 seed=args.seed, progress=progress_wanted(args.quiet), device=device,
                 dtype=dtype)
    trained = time.perf_counter()

    generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    x0 = torch.randn(args.samples, 2, generator=generator, device=device, dtype=dtype)
    with torch.no_grad():
        samples = ODESolver(result.ema_model).sample(x0, method="midpoint",
                                                     num_steps=args.ode_steps)
    fresh = data.sample(args.samples, generator)
    other = data.sample(args.samples, generator)
    w2 = _w2_assignment(samples, fresh)
    # empirical W2 at finite n is biased upwards by sampling noise: two independent data sets
    # of the same size, scored by the same routine, show how much; so does the untransformed
    # source, for the other end of the scale
    floor = _w2_assignment(other, fresh)
    noise = _w2_assignment(x0, fresh)
    extra = ""
    if args.dataset == "checkerboard":
        on = float(torch.isfinite(data.log_prob(samples)).float().mean())
        on_noise = float(torch.isfinite(data.log_prob(x0)).float().mean())
        extra = f"; {100 * on:.0f}% of samples on the dark squares (source: {100 * on_noise:.0f}%)"

    _plot(fresh.cpu(), samples.float().cpu(), args, w2=w2, floor=floor, noise=noise)
    print(
        f"{args.dataset}: W2(samples, data) = {w2:.3f} (data vs data: {floor:.3f}, source "
        f"noise: {noise:.3f}, n = {args.samples}){extra}; trained {args.steps} steps in "
        f"{trained - started:.1f} s on {device} in {args.dtype}, total "
        f"{time.perf_counter() - started:.1f} s"
    )
    print(f"wrote {args.out}")
    return 0


def demo_caption(w2: float, floor: float, noise: float, n: int) -> str:
    """The lines under the demo picture: W2 of the samples beside the data-vs-data baseline."""
    return (f"W2(samples, data) = {w2:.3f}; W2(data, data) = {floor:.3f} for two independent "
            f"draws of n = {n}, the floor at this n\n"
            f"(source noise vs data: {noise:.3f}; the closer to the floor, the better)")


def _plot(data: Any, samples: Any, args: argparse.Namespace, *, w2: float, floor: float,
          noise: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    both = list(data.abs().max(0).values) + list(samples.abs().max(0).values)
    lim = min(float(max(both)) * 1.05, 8.0)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.8), sharex=True, sharey=True)
    for ax, pts, title in ((axes[0], data, f"data ({args.dataset}, n = {args.samples})"),
                           (axes[1], samples,
                            f"flow samples: W2 = {w2:.3f} (data vs data {floor:.3f})")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, linewidths=0)
        ax.set_title(title, fontsize=11)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    caption = demo_caption(w2, floor, noise, args.samples)
    fig.suptitle(f"flowmatch demo: {args.steps} training steps, midpoint × {args.ode_steps}")
    fig.text(0.5, 0.02, caption, ha="center", va="bottom", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    # the caption also goes into the PNG's text chunk, where a script can read it back
    fig.savefig(args.out, dpi=100, metadata={"Description": caption.replace("\n", " ")})
    plt.close(fig)


# -- plugins ----------------------------------------------------------------------------------
# the plugins shipped inside the package, registered by pyproject.toml's entry points; a source
# checkout run without installing (PYTHONPATH=.) has no entry-point metadata and uses these
SHIPPED_PLUGINS = {"crystal": "flowmatch.plugins.crystal.plugin",
                   "video": "flowmatch.plugins.video.plugin"}


def _plugin_entry_points() -> list[Any]:
    from importlib.metadata import EntryPoint, entry_points

    found = list(entry_points(group=PLUGIN_GROUP))
    names = {ep.name for ep in found}
    if not any(ep.value in SHIPPED_PLUGINS.values() for ep in found):
        found += [EntryPoint(name, value, PLUGIN_GROUP) for name, value in
                  SHIPPED_PLUGINS.items() if name not in names]
    return found


def _load_plugins(subparsers: Any) -> None:
    for ep in _plugin_entry_points():
        try:
            obj = ep.load()
            register: Callable[[Any], None] | None = getattr(obj, "register_cli", None)
            if register is None and callable(obj) and not isinstance(obj, type):
                register = obj
            if register is None:
                continue  # a plugin without CLI commands
            register(subparsers)
        except Exception as err:  # a broken plugin must not take the whole CLI down
            warnings.warn(
                f"flowmatch plugin {ep.name!r} ({ep.value}) could not be loaded and is skipped: "
                f"{type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=2,
            )


# -- entry point ------------------------------------------------------------------------------
BUILTIN_COMMANDS = ("demo",)


def build_parser(*, with_plugins: bool = True) -> argparse.ArgumentParser:
    """The full argument parser (with plugin subcommands unless ``with_plugins=False``)."""
    from flowmatch import __version__

    parser = argparse.ArgumentParser(
        prog="flowmatch",
        description="Flow matching on general manifolds. Run `flowmatch demo` for a quick "
        "2D example.",
        epilog=EXAMPLES_MAIN, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flowmatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(subparsers)
    if with_plugins:
        _load_plugins(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # plugins are imported only when the command is not a built-in one (or help is wanted)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(with_plugins=command not in BUILTIN_COMMANDS)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 1
    try:
        code = func(args)
    except BrokenPipeError:
        # the reader of our output went away (`flowmatch ... | head`): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())

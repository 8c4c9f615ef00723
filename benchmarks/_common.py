"""Conventions shared by the benchmark scripts: common flags, threads, the JSON result file.

Import it before torch (``import _common`` sorts first among the third-party imports): it sets
``OMP_WAIT_POLICY=PASSIVE`` unless the caller chose a policy, because OpenMP reads the variable
once, when torch loads it, and spinning worker threads make small ops 100–200× slower on a
shared 2-core machine (../shared/notes/machine-gotchas.md).

Every benchmark takes ``--quick`` (a budget under ~3 minutes on 2 cores), ``--json PATH`` and
``--threads``, most ``--data-dir``, and writes

    {"benchmark": NAME, "config": {..., "command": "python benchmarks/NAME.py ARGS"},
     "rows": [{"system", "metric", "value", "unit", "better", ...}, ...]}

so that ``benchmarks/report.py`` can render any of them and every number can be reproduced.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # not at run time: torch must load after OMP_WAIT_POLICY is set below
    from flowmatch.evaluation import Likelihood

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
QUICK_HELP = "small budget (< 3 min on 2 cores)"


def benchmark_parser(
    description: str,
    *,
    threads: int = 1,
    data_dir: Literal["shared", "unused"] | None = "shared",
    seed: int | None = None,
) -> argparse.ArgumentParser:
    """A parser with the flags every benchmark shares; the script adds its own after these.

    Adds ``--quick``, ``--json PATH`` (default None: print only) and ``--threads`` (default
    ``threads``); ``--data-dir`` defaulting to ../shared/data (``data_dir="shared"``), accepted
    but ignored (``"unused"``, for scripts on synthetic data, default None) or absent (None);
    and ``--seed`` with default ``seed`` when that is not None.
    """
    if data_dir not in ("shared", "unused", None):
        raise ValueError(f"data_dir must be 'shared', 'unused' or None, got {data_dir!r}")
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help=QUICK_HELP)
    ap.add_argument("--json", type=Path, default=None,
                    help="write the results as JSON here (benchmarks/results/NAME.json)")
    if data_dir == "shared":
        ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help=f"folder holding the shared data sets (default {DEFAULT_DATA})")
    elif data_dir == "unused":
        ap.add_argument("--data-dir", type=Path, default=None, help="unused (synthetic data)")
    ap.add_argument("--threads", type=int, default=threads,
                    help=f"torch intra-op threads (default {threads})")
    if seed is not None:
        ap.add_argument("--seed", type=int, default=seed)
    return ap


def set_threads(threads: int) -> None:
    """torch.set_num_threads(threads), after checking it is a positive integer."""
    import torch

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)


def _mixture_size(text: str) -> int:
    k = int(text)
    if k < 1:
        raise argparse.ArgumentTypeError(f"--mixture must be at least 1, got {k}")
    return k


def add_mixture_arg(ap: argparse.ArgumentParser) -> None:
    """``--mixture K``: also score the equal-weight mixture of K fields per split."""
    ap.add_argument("--mixture", type=_mixture_size, default=1,
                    help="K > 1: also train K − 1 more fields per split (training seeds "
                         "s + 1000 k) and score the mixture density (1/K) Σ_k p_k beside the "
                         "single field (member k = 0)")


def member_seed(seed: int, member: int) -> int:
    """Training seed (initialisation and draws) of mixture member ``member`` on split ``seed``:
    member 0 is the single field, trained with the split's own seed."""
    return seed + 1000 * member


def score_mixtures(members: list[list[dict]]) -> tuple[list[float], float]:
    """Per split, the mean NLL of the equal-weight mixture of its members, from their per-point
    NLLs (``"nll"`` [N] of every run); and the members' total training CPU seconds."""
    import torch

    from flowmatch.solvers.mixture import mixture_log_prob

    nll = [float(-mixture_log_prob(-torch.stack([r["nll"] for r in split])).mean())
           for split in members]
    return nll, sum(r["train_cpu_s"] for split in members for r in split)


def mixture_row(k: int, metric: str, runs: list[float], train_cpu_s: float) -> dict[str, Any]:
    """The result row of a K-field mixture, mean ± std over the splits' ``runs``."""
    import statistics

    return {"system": f"flowmatch: mixture of {k}", "metric": metric,
            "value": statistics.fmean(runs),
            "std": statistics.stdev(runs) if len(runs) > 1 else 0.0, "runs": runs,
            "unit": "nats", "better": "lower", "train_cpu_s": train_cpu_s,
            "note": f"(1/{k}) Σ_k p_k of fields trained with seeds s + 1000 k; the flowmatch "
                    "row is its member k = 0"}


def exit_with_parent(parent_pid: int, poll_s: float = 2.0) -> None:
    """Pool-worker initializer: end this process once ``parent_pid`` is gone.

    Without it, killing a benchmark leaves its spawned workers computing their current task for
    many minutes, on the cores the next run needs (seen: two orphans halved a later run's speed).
    """
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_tasks(fn, tasks: list[tuple], jobs: int) -> list:
    """``[fn(*task) for task in tasks]``, in ``jobs`` worker processes when ``jobs`` > 1.

    ``fn`` must be a module-level function (the workers import it). The workers are spawned, not
    forked (a forked child would inherit torch's OpenMP state), and end with their parent.
    """
    if jobs <= 1:
        return [fn(*task) for task in tasks]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                             initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(fn, *task) for task in tasks]
        return [future.result() for future in futures]


def load_average() -> float:
    """The 1-minute load average of the machine (how busy the shared cores were)."""
    return os.getloadavg()[0]


def command_line(benchmark: str, argv: list[str] | None) -> str:
    """The command that reproduces this run: ``python benchmarks/NAME.py`` and its arguments
    (``argv`` when main() was called with a list, else the process's own)."""
    args = argv if argv is not None else sys.argv[1:]
    return f"python benchmarks/{benchmark}.py " + " ".join(args)


def write_result(path: Path | None, benchmark: str, config: dict[str, Any],
                 rows: list[dict[str, Any]], argv: list[str] | None) -> dict[str, Any]:
    """Assemble the result in the common layout and write it to ``path`` (if given).

    ``config["command"]`` is set to :func:`command_line` unless the caller set it; every row
    needs "system", "metric", "value", "unit" and "better". Returns the result dict.
    """
    for i, row in enumerate(rows):
        missing = [k for k in ("system", "metric", "value", "unit", "better") if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks the keys {missing} of the common layout: {row}")
    config = dict(config)
    config.setdefault("command", command_line(benchmark, argv))
    out = {"benchmark": benchmark, "config": config, "rows": rows}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
    return out


def add_likelihood_args(ap: argparse.ArgumentParser) -> None:
    """``--likelihood`` / ``--tol`` / ``--eval-steps``: how the test NLL is integrated."""
    ap.add_argument("--likelihood", choices=("dopri5", "bosh3", "rk4"), default="dopri5",
                    help="integration of the NLL: an error-controlled method (default) or RK4")
    ap.add_argument("--tol", type=float, default=1e-5,
                    help="atol = rtol of the adaptive likelihood")
    ap.add_argument("--eval-steps", type=int, default=100, help="steps of --likelihood rk4")


def likelihood_from_args(args: argparse.Namespace) -> Likelihood:
    """The :class:`flowmatch.evaluation.Likelihood` of :func:`add_likelihood_args`' flags."""
    from flowmatch.evaluation import Likelihood

    if not args.tol > 0 or args.eval_steps < 1:
        raise SystemExit("--tol must be positive and --eval-steps at least 1")
    return Likelihood(args.likelihood, args.tol, args.eval_steps)


def describe_model(hidden: int, layers: int, blocks: int) -> str:
    """Words for the network of ``flowmatch.training.recipes.build_field``, for summaries."""
    if blocks:
        return f"ResidualMLP of {blocks} blocks × {hidden}"
    return f"{layers}×{hidden} SiLU MLP"


def marginal_target_arg(text: str):
    """argparse type of ``--marginal-target``: 'none' → None, 'all', or an int ≥ 0."""
    if text == "none":
        return None
    if text == "all":
        return "all"
    value = int(text)
    if value < 0:
        raise ValueError("--marginal-target takes 'none', 'all' or an int ≥ 0")
    return value


def describe_marginal_target(value) -> str:
    """Words for a ``--marginal-target`` value, for the printed run summary."""
    if value is None:
        return "conditional targets"
    if value == "all":
        return "marginal targets over the whole training split"
    return f"marginal targets over the batch + {value} reference draws"

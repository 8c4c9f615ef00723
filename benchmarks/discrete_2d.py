"""Discrete flow matching on the discretised 2D checkerboard, beside flow_matching (the peer).

    python benchmarks/discrete_2d.py [--quick] [--json PATH] [--threads N] [--data-dir DIR]

Data: the checkerboard of flowmatch.data.toy2d (4 × 4 squares on [−4, 4]²), each coordinate
binned into 128 tokens: a point is 2 tokens of a 128-way vocabulary, uniform over the 8,192
occupied cells, so the true entropy log 8192 = 9.011 nats is the floor of any NELBO.

For each source (mask, uniform) two identical MLPs (DiscreteMLP) are trained in one interleaved
loop with the same batches, optimiser and number of steps: one with flowmatch
(MixtureDiscretePath + cross-entropy under the keep-unmasked posterior), one with the peer's
MixtureDiscreteProbPath + cross-entropy (the peer's network also outputs a logit for the mask
token, which its solver requires). Reported per system:

* NELBO (nats per sample, flowmatch.training.discrete_nelbo — the generalised-KL bound of the
  process each system's sampler simulates) on fresh test points, and its gap to 9.011;
* support fraction: samples (100 steps) that land on an occupied cell;
* training steps/s (same network, measured step by step in the interleaved loop);
* sampling time of 100 steps and the same network's own time for 100 forward calls, timed in
  interleaved blocks (median of 3), at the 2D task and at a sequence size (vocabulary 128,
  length 64, batch 256, a 4-layer transformer of width 128; --quick: batch 64, 2 layers of
  width 64) where the sampler's bookkeeping matters.

Timings on the shared 2-core machine are provisional; the thread count is in the JSON config.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from flowmatch.data.toy2d import Checkerboard  # noqa: E402
from flowmatch.geometry.discrete import Discrete  # noqa: E402
from flowmatch.models.discrete import DiscreteMLP, DiscreteTransformer  # noqa: E402
from flowmatch.paths.mixture import MixtureDiscretePath  # noqa: E402
from flowmatch.paths.schedulers import PolynomialScheduler  # noqa: E402
from flowmatch.solvers.ctmc import DiscreteSolver  # noqa: E402
from flowmatch.training.discrete_loss import discrete_cross_entropy, discrete_nelbo  # noqa: E402

BINS = 128
BOARD = Checkerboard(squares=4, half_width=4.0)


def discretise(x: torch.Tensor) -> torch.Tensor:
    """Points of [−4, 4]² → 2 tokens in [0, 128): the bin index of each coordinate."""
    idx = torch.floor((x + BOARD.half_width) / (2 * BOARD.half_width) * BINS).long()
    return idx.clamp(0, BINS - 1)  # x = 4 exactly only by rounding of the sampler


def sample_tokens(n: int, g: torch.Generator) -> torch.Tensor:
    return discretise(BOARD.sample(n, generator=g, dtype=torch.float64))


def in_support(tokens: torch.Tensor) -> torch.Tensor:
    valid = ((tokens >= 0) & (tokens < BINS)).all(-1)
    square = tokens.clamp(0, BINS - 1) // (BINS // BOARD.squares)
    return valid & ((square[:, 0] + square[:, 1]) % 2 == 0)


def support_cells() -> int:
    grid = torch.cartesian_prod(torch.arange(BINS), torch.arange(BINS))
    return int(in_support(grid).sum())


class SliceLogits(nn.Module):
    """The peer's network minus its mask-token logit: posterior over the K data tokens."""

    def __init__(self, net: nn.Module, K: int) -> None:
        super().__init__()
        self.net, self.K = net, K

    def forward(self, x, t):
        return self.net(x, t)[..., : self.K]


def peer_modules():
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper

    class Probs(ModelWrapper):
        def forward(self, x, t, **extras):
            return torch.softmax(self.model(x, t), dim=-1)

    return MixtureDiscreteProbPath, PolynomialConvexScheduler, MixtureDiscreteEulerSolver, Probs


def train_pair(source: str, steps: int, batch: int, hidden: int, lr: float, seed: int):
    """Train a flowmatch and a peer network side by side on the same batches."""
    PeerPath, PeerSched, _, _ = peer_modules()
    sp = Discrete(BINS, source)
    path = MixtureDiscretePath(PolynomialScheduler(1))
    peer_path = PeerPath(PeerSched(n=1.0))
    torch.manual_seed(seed)
    ours = DiscreteMLP(2, sp.num_states, BINS, hidden=hidden, layers=4, embed_dim=64)
    torch.manual_seed(seed)
    theirs = DiscreteMLP(2, sp.num_states, sp.num_states, hidden=hidden, layers=4, embed_dim=64)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
            for k, m in (("flowmatch", ours), ("flow_matching", theirs))}
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(
        o, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps)))
        for k, o in opts.items()}
    seconds = {"flowmatch": 0.0, "flow_matching": 0.0}
    g = torch.Generator().manual_seed(seed)
    ce = nn.CrossEntropyLoss()
    for _ in range(steps):
        x1 = sample_tokens(batch, g)
        t = torch.rand(batch, generator=g)
        x0 = sp.sample_base(x1.shape, generator=g)
        # flowmatch step
        t0 = time.perf_counter()
        x_t = path.sample(x0, x1, t).x_t
        loss = discrete_cross_entropy(ours(x_t, t), x1, x_t, sp)
        opts["flowmatch"].zero_grad(set_to_none=True)
        loss.backward()
        opts["flowmatch"].step()
        scheds["flowmatch"].step()
        seconds["flowmatch"] += time.perf_counter() - t0
        # the peer's step on the same batch
        t0 = time.perf_counter()
        x_t = peer_path.sample(x_0=x0, x_1=x1, t=t).x_t
        logits = theirs(x_t, t)
        loss = ce(logits.flatten(0, 1), x1.flatten())
        opts["flow_matching"].zero_grad(set_to_none=True)
        loss.backward()
        opts["flow_matching"].step()
        scheds["flow_matching"].step()
        seconds["flow_matching"] += time.perf_counter() - t0
    return sp, path, peer_path, ours.eval(), theirs.eval(), {k: steps / v for k, v in
                                                                  seconds.items()}


def time_samplers(net_ours, net_peer, sp, path, peer_path, x0, steps: int, repeats: int = 3):
    """Median seconds of: our sampler, the peer's, and each network alone (100 calls)."""
    _, _, PeerSolver, Probs = peer_modules()
    ours = DiscreteSolver(net_ours, sp, path)
    peer = PeerSolver(model=Probs(net_peer), path=peer_path, vocabulary_size=net_peer.output_vocab)
    grid = torch.linspace(0, 1, steps + 1)
    t_fixed = torch.full((x0.shape[0],), 0.5)

    def network_only(net):
        for _ in range(steps):
            net(x0, t_fixed)

    runs = {
        "flowmatch": lambda: ours.sample(x0, num_steps=steps),
        "flow_matching": lambda: peer.sample(x_init=x0, step_size=None, time_grid=grid),
        "network_ours": lambda: network_only(net_ours),
        "network_peer": lambda: network_only(net_peer),
    }
    times = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(repeats):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small budget (< 3 min on 2 cores)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--data-dir", type=Path, default=None, help="unused: the data is synthetic")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", nargs="+", default=["mask", "uniform"],
                    choices=["mask", "uniform"])
    ap.add_argument("--train-steps", type=int, default=None, help="override the budget")
    ap.add_argument("--hidden", type=int, default=None, help="override the MLP width")
    ap.add_argument("--skip-seq-timing", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    cfg = {
        "threads": args.threads, "quick": args.quick, "seed": args.seed, "bins": BINS,
        "train_steps": 800 if q else 20000, "batch": 256 if q else 1024,
        "hidden": 128 if q else 512, "lr": 3e-3 if q else 2e-3, "scheduler": "kappa_t = t",
        "sample_steps": 100, "num_samples": 2000 if q else 50000,
        "nelbo_points": 500 if q else 5000, "nelbo_times": 8 if q else 64,
        "timing_batch_2d": 512 if q else 4096, "timing_repeats": 2 if q else 3,
        "timing_seq": {"vocab": 128, "length": 64, "batch": 64 if q else 256, "steps": 100,
                       "dim": 64 if q else 128, "layers": 2 if q else 4},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if args.train_steps is not None:
        cfg["train_steps"] = args.train_steps
    if args.hidden is not None:
        cfg["hidden"] = args.hidden
    cfg["sources"] = args.sources
    floor = math.log(support_cells())
    cfg["entropy_floor_nats"] = floor
    rows = []
    print(f"discretised checkerboard: {support_cells()} cells, entropy floor {floor:.3f} nats; "
          f"threads {args.threads}")
    start = time.perf_counter()
    for source in args.sources:
        sp, path, peer_path, ours, theirs, steps_s = train_pair(
            source, cfg["train_steps"], cfg["batch"], cfg["hidden"], cfg["lr"], args.seed)
        g = torch.Generator().manual_seed(args.seed + 1)
        test = sample_tokens(cfg["nelbo_points"], g)
        nelbo = {
            "flowmatch": float(discrete_nelbo(ours, test, path, sp, num_times=cfg["nelbo_times"],
                                              generator=g).mean()),
            # the peer's sampler does not keep unmasked tokens: its process's bound
            "flow_matching": float(discrete_nelbo(SliceLogits(theirs, BINS), test, path, sp,
                                                  num_times=cfg["nelbo_times"], generator=g,
                                                  keep_unmasked=False).mean()),
        }
        _, _, PeerSolver, Probs = peer_modules()
        x0 = sp.sample_base((cfg["num_samples"], 2), generator=g)
        with torch.no_grad():
            ours_x = DiscreteSolver(ours, sp, path).sample(x0, num_steps=cfg["sample_steps"],
                                                           generator=g)
            peer_x = PeerSolver(model=Probs(theirs), path=peer_path,
                                vocabulary_size=sp.num_states).sample(
                x_init=x0, step_size=None, time_grid=torch.linspace(0, 1, cfg["sample_steps"] + 1))
        support = {"flowmatch": float(in_support(ours_x).double().mean()),
                   "flow_matching": float(in_support(peer_x).double().mean())}
        timing = time_samplers(ours, theirs, sp, path, peer_path,
                               sp.sample_base((cfg["timing_batch_2d"], 2), generator=g),
                               cfg["sample_steps"], cfg["timing_repeats"])
        for system in ("flowmatch", "flow_matching"):
            net_key = "network_ours" if system == "flowmatch" else "network_peer"
            rows += [
                {"system": system, "metric": f"{source}/nelbo", "value": nelbo[system],
                 "unit": "nats/sample", "better": "lower"},
                {"system": system, "metric": f"{source}/nelbo_gap_to_entropy",
                 "value": nelbo[system] - floor, "unit": "nats/sample", "better": "lower"},
                {"system": system, "metric": f"{source}/support_fraction", "value": support[system],
                 "unit": "fraction", "better": "higher"},
                {"system": system, "metric": f"{source}/train_steps_per_s",
                 "value": steps_s[system], "unit": "steps/s", "better": "higher"},
                {"system": system, "metric": f"{source}/sample_s_2d_100_steps",
                 "value": timing[system], "unit": "s", "better": "lower"},
                {"system": system, "metric": f"{source}/sample_over_network_2d",
                 "value": timing[system] / timing[net_key], "unit": "x", "better": "lower"},
            ]
        print(f"[{source}] done at {time.perf_counter() - start:.0f} s", file=sys.stderr)

    # sampler overhead at a sequence size, on a transformer (random weights: cost only)
    ts = cfg["timing_seq"]
    if args.skip_seq_timing:
        ts["batch"] = 0
    sp = Discrete(ts["vocab"], "mask")
    if not ts["batch"]:
        return finish(args, cfg, rows, floor, start)
    PeerPath, PeerSched, _, _ = peer_modules()
    torch.manual_seed(args.seed)
    arch = {"dim": ts["dim"], "heads": 4, "layers": ts["layers"]}
    net_ours = DiscreteTransformer(ts["length"], sp.num_states, ts["vocab"], **arch).eval()
    net_peer = DiscreteTransformer(ts["length"], sp.num_states, sp.num_states, **arch).eval()
    x0 = sp.sample_base((ts["batch"], ts["length"]))
    timing = time_samplers(net_ours, net_peer, sp, MixtureDiscretePath(PolynomialScheduler(1)),
                           PeerPath(PeerSched(n=1.0)), x0, ts["steps"], cfg["timing_repeats"])
    for system, net_key in (("flowmatch", "network_ours"), ("flow_matching", "network_peer")):
        rows += [
            {"system": system, "metric": "seq/sample_s_100_steps", "value": timing[system],
             "unit": "s", "better": "lower"},
            {"system": system, "metric": "seq/network_only_s_100_calls",
             "value": timing[net_key], "unit": "s", "better": "lower"},
            {"system": system, "metric": "seq/sample_over_network", "unit": "x",
             "value": timing[system] / timing[net_key], "better": "lower"},
        ]
    return finish(args, cfg, rows, floor, start)


def finish(args, cfg, rows, floor, start) -> int:
    cfg["wall_s"] = time.perf_counter() - start
    metrics = sorted({r["metric"] for r in rows}, key=[r["metric"] for r in rows].index)
    table = {(r["system"], r["metric"]): r["value"] for r in rows}
    print(f"{'metric':36s} {'flowmatch':>12s} {'flow_matching':>14s}")
    for m in metrics:
        a, b = table.get(("flowmatch", m)), table.get(("flow_matching", m))
        print(f"{m:36s} {a:12.4g} {b:14.4g}")
    print(f"(entropy floor {floor:.3f} nats; threads {args.threads}; wall {cfg['wall_s']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "discrete_2d", "config": cfg, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

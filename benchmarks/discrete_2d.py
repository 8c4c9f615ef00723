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
* for flowmatch, the *exact* law of its 100-step sampler on all 129² states
  (flowmatch.solvers.exact.sampler_distribution): the exact NLL of the data under it (its
  cross-entropy with the uniform target, so NLL − 9.011 = KL(data ‖ sampler) exactly) and its
  exact probability mass on the support;
* the NELBO of the *exact* posterior (ExactPosterior on the known target): the floor of the bound
  itself. For the mask source it meets the entropy; for the uniform source it stays ≈ 1.7 nats
  above it whatever the model (the bound's conditional paths jump once, the generative chain may
  jump several times), so the uniform NELBO is compared with that floor and the exact NLL;
* training steps/s (same network, measured step by step in the interleaved loop);
* sampling time of 100 steps and the same network's own time for 100 forward calls, timed in
  interleaved blocks (median of 3), at the 2D task and at a sequence size (vocabulary 128,
  length 64, batch 256, a 2-layer transformer of width 64; --quick: batch 64) where the
  sampler's bookkeeping matters; there each sampler is also run on a constant-logits "network"
  (no model cost), which times the bookkeeping alone.

The ``metric`` source (flowmatch only: the peer has no such path) trains the same network on the
metric-induced path with kinetic-optimal rates (d = |i − j| on bins, β_t = 0.1 (t/(1 − t))^1.5,
posterior with the path's likelihood built in), and reports its NELBO and the support fraction
of both of its samplers' step methods.

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
from flowmatch.models.discrete import DiscreteMLP, DiscreteTransformer, ExactPosterior  # noqa: E402
from flowmatch.paths.metric_induced import (  # noqa: E402
    LikelihoodOffset,
    MetricInducedPath,
    PowerBetaScheduler,
)
from flowmatch.paths.mixture import MixtureDiscretePath  # noqa: E402
from flowmatch.paths.schedulers import PolynomialScheduler  # noqa: E402
from flowmatch.solvers.ctmc import DiscreteSolver  # noqa: E402
from flowmatch.solvers.exact import sampler_distribution  # noqa: E402
from flowmatch.solvers.metric_induced import MetricInducedSolver  # noqa: E402
from flowmatch.training.discrete_loss import discrete_cross_entropy, discrete_nelbo  # noqa: E402
from flowmatch.training.metric_induced_loss import metric_induced_nelbo  # noqa: E402

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
    return int(target_table().gt(0).sum())


def target_table() -> torch.Tensor:
    """The data law as a float64 table [BINS, BINS]: uniform over the occupied cells."""
    grid = torch.cartesian_prod(torch.arange(BINS), torch.arange(BINS))
    q = in_support(grid).double().view(BINS, BINS)
    return q / q.sum()


def exact_sampler_rows(net, sp, path, steps: int) -> dict[str, float]:
    """Exact NLL of the data, KL(data ‖ sampler) and support mass of the sampler's own law."""
    law = sampler_distribution(net, sp, path, 2, num_steps=steps)[:BINS, :BINS]
    target = target_table()
    support = target > 0
    nll = float(-(target[support] * law[support].clamp_min(1e-300).log()).sum())
    return {"exact_nll": nll, "exact_kl": nll - math.log(int(support.sum())),
            "exact_support_mass": float(law[support].sum())}


def paired_nelbo(field, test, path, sp, num_times: int, seed: int, keep_unmasked: bool = True
                 ) -> tuple[float, float]:
    """(mean, standard error) of the NELBO over ``test``, with a fixed seed for its draws.

    Common random numbers: every system's bound sees the same times, x0 and x_t, so differences
    between systems are not swamped by the estimator's heavy tail near t = 1.
    """
    per_sample = discrete_nelbo(field, test, path, sp, num_times=num_times,
                                keep_unmasked=keep_unmasked,
                                generator=torch.Generator().manual_seed(seed))
    return float(per_sample.mean()), float(per_sample.std() / len(per_sample) ** 0.5)


class AsFloat(nn.Module):
    """Casts a float64 posterior (ExactPosterior) to float32 logits, as a network returns."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, t).float()


class ConstantLogits(nn.Module):
    """A "network" that returns fixed logits: timing a sampler with it times its bookkeeping."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x, t, **extras):
        return self.logits


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


def run_metric(cfg: dict, seed: int) -> list[dict]:
    """The metric-induced path (d = |i − j| on bins, kinetic-optimal rates): flowmatch only.

    Same network, optimiser, schedule and batches as the mixture runs; the posterior carries the
    path's likelihood (LikelihoodOffset), trained by cross-entropy; sampled with both of
    MetricInducedSolver's step methods.
    """
    sp = Discrete(BINS, "uniform")
    path = MetricInducedPath.ordinal(BINS, PowerBetaScheduler(cfg["metric_beta_c"],
                                                              cfg["metric_beta_a"]))
    steps = cfg["train_steps"]
    torch.manual_seed(seed)
    net = DiscreteMLP(2, BINS, BINS, hidden=cfg["hidden"], layers=4, embed_dim=64)
    field = LikelihoodOffset(net, path)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        x1 = sample_tokens(cfg["batch"], g)
        t = torch.rand(cfg["batch"], generator=g)
        x_t = path.sample(None, x1, t, generator=g).x_t
        loss = discrete_cross_entropy(field(x_t, t), x1, x_t, sp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    steps_s = steps / (time.perf_counter() - t0)
    field.eval()
    g = torch.Generator().manual_seed(seed + 1)
    test = sample_tokens(cfg["nelbo_points"], g)
    per_sample = metric_induced_nelbo(field, test, path, sp, num_times=cfg["nelbo_times"],
                                      generator=torch.Generator().manual_seed(seed + 2))
    nelbo = float(per_sample.mean())
    stderr = float(per_sample.std() / len(per_sample) ** 0.5)
    floor = math.log(support_cells())
    rows = [
        {"system": "flowmatch", "metric": "metric/nelbo", "value": nelbo, "unit": "nats/sample",
         "better": "lower"},
        {"system": "flowmatch", "metric": "metric/nelbo_gap_to_entropy", "value": nelbo - floor,
         "unit": "nats/sample", "better": "lower"},
        {"system": "flowmatch", "metric": "metric/nelbo_stderr", "value": stderr,
         "unit": "nats/sample", "better": "lower"},
        {"system": "flowmatch", "metric": "metric/train_steps_per_s", "value": steps_s,
         "unit": "steps/s", "better": "higher"},
    ]
    x0 = sp.sample_base((cfg["num_samples"], 2), generator=g)
    for method in ("marginal", "sample_x1"):
        t0 = time.perf_counter()
        x = MetricInducedSolver(field, sp, path).sample(x0, num_steps=cfg["sample_steps"],
                                                        method=method, generator=g)
        secs = time.perf_counter() - t0
        rows += [
            {"system": "flowmatch", "metric": f"metric/{method}/support_fraction",
             "value": float(in_support(x).double().mean()), "unit": "fraction",
             "better": "higher"},
            {"system": "flowmatch", "metric": f"metric/{method}/sample_s_100_steps",
             "value": secs, "unit": "s", "better": "lower"},
        ]
    return rows


def time_samplers(net_ours, net_peer, sp, path, peer_path, x0, steps: int, repeats: int = 3,
                  bookkeeping: bool = False):
    """Median seconds of: our sampler, the peer's, and each network alone (100 calls).

    With ``bookkeeping``, also each sampler driven by constant logits (the networks' outputs at
    x0, t = 0.5): the sampler's own cost without any model.
    """
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
    if bookkeeping:
        with torch.no_grad():
            ours_c = DiscreteSolver(ConstantLogits(net_ours(x0, t_fixed)), sp, path)
            peer_c = PeerSolver(model=Probs(ConstantLogits(net_peer(x0, t_fixed))),
                                path=peer_path, vocabulary_size=net_peer.output_vocab)
        runs["bookkeeping_ours"] = lambda: ours_c.sample(x0, num_steps=steps)
        runs["bookkeeping_peer"] = lambda: peer_c.sample(x_init=x0, step_size=None,
                                                         time_grid=grid)
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
    ap.add_argument("--sources", nargs="+", default=["mask", "uniform", "metric"],
                    choices=["mask", "uniform", "metric"],
                    help="metric: the metric-induced path (flowmatch only; no peer counterpart)")
    ap.add_argument("--train-steps", type=int, default=None, help="override the budget")
    ap.add_argument("--hidden", type=int, default=None, help="override the MLP width")
    ap.add_argument("--skip-seq-timing", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    cfg = {
        "threads": args.threads, "quick": args.quick, "seed": args.seed, "bins": BINS,
        "train_steps": 800 if q else 8000, "batch": 256,
        "hidden": 128 if q else 256, "lr": 3e-3, "scheduler": "kappa_t = t",
        "sample_steps": 100, "num_samples": 2000 if q else 20000,
        "nelbo_points": 500 if q else 4000, "nelbo_times": 8 if q else 32,
        "timing_batch_2d": 512 if q else 4096, "timing_repeats": 2 if q else 3,
        "timing_seq": {"vocab": 128, "length": 64, "batch": 64 if q else 256, "steps": 100,
                       "dim": 64, "layers": 2},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "metric_beta_c": 0.1, "metric_beta_a": 1.5,
        "command": "python " + " ".join(["benchmarks/discrete_2d.py", *sys.argv[1:]]),
        "load_average_start": os.getloadavg()[0],
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
        if source == "metric":
            rows += run_metric(cfg, args.seed)
            print(f"[{source}] done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
            continue
        sp, path, peer_path, ours, theirs, steps_s = train_pair(
            source, cfg["train_steps"], cfg["batch"], cfg["hidden"], cfg["lr"], args.seed)
        g = torch.Generator().manual_seed(args.seed + 1)
        test = sample_tokens(cfg["nelbo_points"], g)
        post = ExactPosterior(target_table(), sp, path.scheduler)
        args_nelbo = (test, path, sp, cfg["nelbo_times"], args.seed + 2)
        nelbo = {
            "flowmatch": paired_nelbo(ours, *args_nelbo),
            # the peer's sampler does not keep unmasked tokens: its process's bound
            "flow_matching": paired_nelbo(SliceLogits(theirs, BINS), *args_nelbo,
                                          keep_unmasked=False),
            # the bound's own floor: the NELBO of the exact posterior of the known target
            "exact posterior": paired_nelbo(AsFloat(post), *args_nelbo),
        }
        rows += [{"system": system, "metric": f"{source}/nelbo_stderr", "value": v[1],
                  "unit": "nats/sample", "better": "lower"} for system, v in nelbo.items()]
        nelbo = {system: v[0] for system, v in nelbo.items()}
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
        exact = exact_sampler_rows(ours, sp, path, cfg["sample_steps"])
        rows += [{"system": "flowmatch", "metric": f"{source}/{k}", "value": v,
                  "unit": "fraction" if k.endswith("mass") else "nats/sample",
                  "better": "higher" if k.endswith("mass") else "lower"}
                 for k, v in exact.items()]
        rows.append({"system": "exact posterior", "metric": f"{source}/nelbo",
                     "value": nelbo["exact posterior"], "unit": "nats/sample", "better": "lower"})
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
                           PeerPath(PeerSched(n=1.0)), x0, ts["steps"], cfg["timing_repeats"],
                           bookkeeping=True)
    for system, net_key, book_key in (("flowmatch", "network_ours", "bookkeeping_ours"),
                                      ("flow_matching", "network_peer", "bookkeeping_peer")):
        rows += [
            {"system": system, "metric": "seq/sampler_only_s_100_steps",
             "value": timing[book_key], "unit": "s", "better": "lower"},
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
    systems = sorted({r["system"] for r in rows}, key=[r["system"] for r in rows].index)
    print(f"{'metric':36s}" + "".join(f" {s:>16s}" for s in systems))
    for m in metrics:
        cells = [table.get((s, m)) for s in systems]
        print(f"{m:36s}" + "".join(f" {'—':>16s}" if c is None else f" {c:16.4g}"
                                   for c in cells))
    print(f"(entropy floor {floor:.3f} nats; threads {args.threads}; wall {cfg['wall_s']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "discrete_2d", "config": cfg, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

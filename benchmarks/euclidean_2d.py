"""Euclidean 2D flow matching: flowmatch side by side with flow_matching, torchcfm and plain torch.

Same network (MLP 4×512, SiLU, sinusoidal time embedding), same data (checkerboard on [−4, 4]²,
batch 4096), same seed, optimiser (AdamW, lr 1e-3) and thread count for every system. Training
is interleaved: each round runs a block of steps of every system in turn, so outside load hits
all systems alike; steps/s is the median over blocks. Sampling draws N points with midpoint at
20 steps (40 function evaluations) from each system's own trained model through its own solver,
again interleaved over repeats, and is compared with 40 × one bare forward pass on N points.
Quality: exact W2 (POT, on 4,000 samples vs 4,000 fresh data) and test NLL of held-out data,
evaluated for every model by the same exact-divergence likelihood (flowmatch's, RK4, 100
steps) so the numbers differ only through the trained models. The checkerboard's entropy
(log 32 = 3.466 nats) is the NLL floor.

    python benchmarks/euclidean_2d.py --quick --json out.json --png samples.png
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import _common  # first: sets OMP_WAIT_POLICY before torch loads OpenMP
import numpy as np
import torch

from flowmatch.data.toy2d import Checkerboard
from flowmatch.models.mlp import MLP
from flowmatch.paths import CondOTPath
from flowmatch.solvers.ode import ODESolver
from flowmatch.training.loss import cfm_loss

SYSTEMS = ("plain torch", "flowmatch", "flow_matching", "torchcfm")


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MLP(2, hidden=512, layers=4)


# -- one training step per system --------------------------------------------------------------
def plain_step(model, opt, x1, gen):
    x0 = torch.randn(x1.shape, generator=gen)
    t = torch.rand(x1.shape[0], generator=gen)
    tt = t[:, None]
    x_t = tt * x1 + (1 - tt) * x0
    loss = (model(x_t, t) - (x1 - x0)).pow(2).sum(-1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def make_flowmatch_step():
    path = CondOTPath()

    def step(model, opt, x1, gen):
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.rand(x1.shape[0], generator=gen)
        s = path.sample(x0, x1, t)
        loss = cfm_loss(model(s.x_t, s.t), s.dx_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def make_flow_matching_step():
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    path = AffineProbPath(scheduler=CondOTScheduler())

    def step(model, opt, x1, gen):
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.rand(x1.shape[0], generator=gen)
        s = path.sample(t=t, x_0=x0, x_1=x1)
        loss = (model(s.x_t, s.t) - s.dx_t).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def make_torchcfm_step():
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    matcher = ConditionalFlowMatcher(sigma=0.0)

    def step(model, opt, x1, gen):
        x0 = torch.randn(x1.shape, generator=gen)
        # torchcfm draws t from the global RNG internally; that is part of its cost
        t, x_t, u_t = matcher.sample_location_and_conditional_flow(x0, x1)
        loss = (model(x_t, t) - u_t).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


# -- samplers ----------------------------------------------------------------------------------
def flowmatch_sampler(model):
    solver = ODESolver(model)

    def sample(x0):
        return solver.sample(x0, method="midpoint", num_steps=20), solver.nfe

    return sample


def flow_matching_sampler(model):
    from flow_matching.solver import ODESolver as PeerSolver
    from flow_matching.utils import ModelWrapper

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return self.model(x, t.expand(x.shape[0]))

    solver = PeerSolver(velocity_model=Wrapped(model))
    calls = {"n": 0}
    original = model.forward

    def counting(x, t, **kw):
        calls["n"] += 1
        return original(x, t, **kw)

    def sample(x0):
        calls["n"] = 0
        model.forward = counting
        try:
            out = solver.sample(x_init=x0, step_size=0.05, method="midpoint")
        finally:
            model.forward = original
        return out, calls["n"]

    return sample


def w2_exact(a: torch.Tensor, b: torch.Tensor) -> float:
    import ot

    a64, b64 = a.double().numpy(), b.double().numpy()
    cost = ot.dist(a64, b64)  # squared Euclidean
    w = np.full(len(a64), 1 / len(a64))
    return float(math.sqrt(ot.emd2(w, w, cost, numItermax=10_000_000)))


def nll(model, x: torch.Tensor) -> float:
    solver = ODESolver(model)

    def log_p0(z):
        return -0.5 * z.pow(2).sum(-1) - math.log(2 * math.pi)

    _, logp = solver.log_likelihood(x, log_p0, method="rk4", num_steps=100)
    return float(-logp.mean())


def median(xs):
    return float(statistics.median(xs))


def main(argv=None) -> int:
    ap = _common.benchmark_parser(__doc__.split("\n\n")[0], threads=2, data_dir=None, seed=0)
    ap.add_argument("--png", type=Path, help="write a figure of samples here")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--train-steps", type=int, default=None,
                    help="training steps per system (default 600; quick 40)")
    ap.add_argument("--block", type=int, default=None,
                    help="steps per interleaved timing block (default steps/12)")
    ap.add_argument("--samples", type=int, default=None,
                    help="samples drawn per timing repeat (default 50,000; quick 5,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nll-points", type=int, default=None, help="default 2,000; quick 300")
    args = ap.parse_args(argv)

    load_start = _common.load_average()
    steps = args.train_steps or (40 if args.quick else 600)
    block = args.block or max(1, steps // 12)
    n_samples = args.samples or (5_000 if args.quick else 50_000)
    n_nll = args.nll_points or (300 if args.quick else 2_000)
    _common.set_threads(args.threads)

    available = {"plain torch": plain_step, "flowmatch": make_flowmatch_step()}
    missing = {}
    for name, maker in (("flow_matching", make_flow_matching_step), ("torchcfm",
                                                                     make_torchcfm_step)):
        try:
            available[name] = maker()
        except ImportError as e:  # peers are optional (the bench extra)
            missing[name] = str(e)
    systems = [s for s in SYSTEMS if s in available]

    data = Checkerboard()
    models = {s: make_model(args.seed) for s in systems}
    opts = {s: torch.optim.AdamW(models[s].parameters(), lr=1e-3) for s in systems}
    data_gens = {s: torch.Generator().manual_seed(args.seed + 1) for s in systems}
    noise_gens = {s: torch.Generator().manual_seed(args.seed + 2) for s in systems}
    rates = {s: [] for s in systems}
    final_loss = {}

    print(f"training {len(systems)} systems × {steps} steps, batch {args.batch}, "
          f"threads {args.threads}", file=sys.stderr)
    done = 0
    rounds = 0
    while done < steps:
        n = min(block, steps - done)
        # rotate the order every round so no system always runs first (or right after the
        # data generation) — a fixed order biased the ratios by ~10 % on a loaded machine
        order = systems[rounds % len(systems):] + systems[: rounds % len(systems)]
        rounds += 1
        for s in order:
            model, opt, step = models[s], opts[s], available[s]
            batches = [data.sample(args.batch, generator=data_gens[s]) for _ in range(n)]
            torch.manual_seed(args.seed + done)  # torchcfm's internal t
            t0 = time.perf_counter()
            for x1 in batches:
                loss = step(model, opt, x1, noise_gens[s])
            rates[s].append(n / (time.perf_counter() - t0))
            final_loss[s] = float(loss.detach())
        done += n
        print(f"  {done}/{steps} steps", file=sys.stderr)

    for m in models.values():
        m.eval()

    # -- sampling speed: interleaved repeats ------------------------------------------------
    samplers = {"flowmatch": flowmatch_sampler(models["flowmatch"])}
    if "flow_matching" in models:
        samplers["flow_matching"] = flow_matching_sampler(models["flow_matching"])
    x0 = torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(args.seed + 3))
    t_mid = torch.full((n_samples,), 0.5)
    sample_times = {s: [] for s in samplers}
    ratios = {s: [] for s in samplers}
    nfe = {}
    bare = []
    names = list(samplers)
    with torch.inference_mode():
        for rep in range(args.repeats):
            for s in names[rep % len(names):] + names[: rep % len(names)]:
                # the bare forward is timed right before each sampler run, so the ratio
                # compares the two under the same machine conditions
                t0 = time.perf_counter()
                models[s](x0, t_mid)
                one = time.perf_counter() - t0
                bare.append(one)
                t0 = time.perf_counter()
                _, nfe[s] = samplers[s](x0)
                took = time.perf_counter() - t0
                sample_times[s].append(took)
                ratios[s].append(took / (nfe[s] * one))
    bare_s = median(bare)

    # -- quality: every model sampled by the same solver, W2 and NLL by the same evaluator -----
    eval_gen = torch.Generator().manual_seed(args.seed + 4)
    n_w2 = min(4000, n_samples)
    reference = data.sample(n_w2, generator=eval_gen)
    test_points = data.sample(n_nll, generator=eval_gen)
    quality = {}
    z = torch.randn(n_w2, 2, generator=torch.Generator().manual_seed(args.seed + 5))
    for s in systems:
        with torch.inference_mode():
            xs = ODESolver(models[s]).sample(z, method="midpoint", num_steps=20)
        quality[s] = {"w2": w2_exact(xs, reference), "nll": nll(models[s], test_points),
                      "samples": xs}

    # -- report ------------------------------------------------------------------------------
    rows = []
    plain_rate = median(rates["plain torch"])
    header = (f"{'system':<14}{'train steps/s':>14}{'time×plain':>11}{'sample s':>10}"
              f"{'NFE':>5}{'×bare':>7}{'W2':>8}{'test NLL':>10}")
    print(header)
    for s in systems:
        r = median(rates[s])
        line = f"{s:<14}{r:>14.2f}{plain_rate / r:>11.3f}"
        rows += [
            {"system": s, "metric": "train_steps_per_s", "value": r, "unit": "steps/s",
             "better": "higher"},
            {"system": s, "metric": "train_time_ratio_to_plain", "value": plain_rate / r,
             "unit": "x", "better": "lower"},
        ]
        if s in samplers:
            st = median(sample_times[s])
            ratio = median(ratios[s])
            line += f"{st:>10.2f}{nfe[s]:>5d}{ratio:>7.3f}"
            rows += [
                {"system": s, "metric": "sample_seconds", "value": st, "unit": "s",
                 "better": "lower"},
                {"system": s, "metric": "sample_time_ratio_to_bare_forward", "value": ratio,
                 "unit": "x", "better": "lower"},
            ]
        else:
            line += f"{'—':>10}{'—':>5}{'—':>7}"
        q = quality[s]
        line += f"{q['w2']:>8.3f}{q['nll']:>10.3f}"
        rows += [
            {"system": s, "metric": "w2", "value": q["w2"], "unit": "", "better": "lower"},
            {"system": s, "metric": "test_nll", "value": q["nll"], "unit": "nats",
             "better": "lower"},
        ]
        print(line)
    rows.append({"system": "analytic: checkerboard entropy", "metric": "test_nll",
                 "value": data.entropy, "unit": "nats", "better": "lower"})
    print(f"{'(floor)':<14}{'':>14}{'':>11}{'':>10}{'':>5}{'':>7}{'':>8}{data.entropy:>10.3f}")
    config = {
        "threads": args.threads, "batch": args.batch, "train_steps": steps, "block": block,
        "samples": n_samples, "repeats": args.repeats, "nll_points": n_nll, "seed": args.seed,
        "bare_forward_s": bare_s, "quick": args.quick,
        "loadavg_1min_start": load_start, "loadavg_1min_end": os.getloadavg()[0],
        "torch": torch.__version__,
        "python": platform.python_version(), "missing_peers": missing,
        "model": "MLP 4x512 SiLU, sinusoidal time embedding", "optimizer": "AdamW lr 1e-3",
        "sampling": "midpoint, 20 steps", "nll": "exact divergence, RK4 100 steps",
    }
    print(f"(threads {args.threads}, batch {args.batch}, {steps} steps per system, "
          f"median of {len(rates['plain torch'])} interleaved blocks in rotating order; sampling "
          f"{n_samples} points, median of {args.repeats}; bare forward {bare_s * 1e3:.1f} ms; "
          f"1-min load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end)")
    _common.write_result(args.json, "euclidean_2d", config, rows, argv)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [("data", reference)] + [(s, quality[s]["samples"]) for s in systems]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
        for ax, (title, pts) in zip(axes, panels, strict=True):
            ax.hist2d(pts[:, 0].numpy(), pts[:, 1].numpy(), bins=100,
                      range=[[-4.5, 4.5], [-4.5, 4.5]], cmap="magma")
            ax.set_title(title if title == "data" else
                         f"{title}\nW2 {quality[title]['w2']:.3f}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

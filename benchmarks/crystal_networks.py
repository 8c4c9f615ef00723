"""The invariant and the e3nn equivariant crystal network at equal training time (perov-5 CSP).

    python benchmarks/crystal_networks.py [--quick] [--json PATH] [--threads N] [--data-dir DIR]
        [--budget SECONDS] [--systems NAME ...] [--csp-limit N] [--sample-steps N]

Systems (``--systems``): ``invariant`` — part 1's CSPNet-style CrystalVelocityNet (hidden 192,
4 layers, 16 frequencies: the shipped model's shape); ``equivariant-l2`` — EquivariantCrystalNet
(hidden 32, 3 layers, l ≤ 2, cutoff 4.5 Å); ``equivariant-l1`` — the same with l ≤ 1 and
hidden 64.

Data: perov-5's val.csv + train_dev_1024.csv less a 10 % held-out slice for training (as
benchmarks/crystal_csp.py), the held-out slice for the held-out loss, the first ``--csp-limit``
crystals of test.csv for structure prediction.

Equal training time. A wall-clock budget on a shared 2-core machine mostly measures the other
users' load, so every network first trains a few calibration steps, the systems interleaved
in this one process, timed in this process's CPU seconds; each then trains
steps = ``--budget`` / (CPU seconds per step) — a fixed step count, so the cosine schedule spans
the run and the run is reproducible. Training is CrystalFlow.train's: loss weights
coordinates : lattice = 400 : 1, batch 256, lr 1e-3, EMA 0.999, gradient clip 0.5, times
t = 1 − (1 − u)² (the shipped recipe); the EMA network is evaluated. The training's own CPU
and wall seconds are reported beside the step counts.

Metrics: the flow-matching loss (the training objective, uniform times, 4 noise draws per
crystal with the same seeds for every system) on 500 training crystals and on the held-out
slice, with its coordinate and lattice parts; structure prediction on the test crystals (one
sample each, ``--sample-steps`` Euler steps, no anti-annealing): match rate and RMSE at the
standard and the strict StructureMatcher tolerances, validity, sampling time per structure.

``--quick``: 20 CPU seconds of training per system, 50 held-out and 30 test crystals, 10 sampling
steps: a smoke run, not a result.
"""

from __future__ import annotations

import statistics
import sys
import time

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import torch
from _common import benchmark_parser, load_average, set_threads, write_result

SYSTEMS = {
    "invariant": ("invariant CSPNet-style (hidden 192 × 4)",
                  {"hidden": 192, "layers": 4, "num_freqs": 16}),
    "equivariant-l2": ("equivariant e3nn (l ≤ 2, hidden 32 × 3, cutoff 4.5 Å)",
                       {"hidden": 32, "layers": 3, "lmax": 2, "cutoff": 4.5}),
    "equivariant-l1": ("equivariant e3nn (l ≤ 1, hidden 64 × 3, cutoff 4.5 Å)",
                       {"hidden": 64, "layers": 3, "lmax": 1, "cutoff": 4.5}),
}
TRAIN = {"batch_size": 256, "lr": 1e-3, "time_power": 2.0}
WEIGHTS = {"coords": 400.0 / 401.0, "lattice": 1.0 / 401.0}  # CrystalFlow.train's, normalised


def make_flow(key: str, train, seed: int):
    """A fresh CrystalFlow for the training set with the system's network (seeded init)."""
    from flowmatch.plugins.crystal.csp import CrystalFlow
    from flowmatch.plugins.crystal.equivariant import EquivariantCrystalNet

    torch.manual_seed(seed)
    kwargs = SYSTEMS[key][1]
    if key == "invariant":
        return CrystalFlow.for_data(train, **kwargs)
    flow = CrystalFlow.for_data(train, hidden=8, layers=1)  # geometry, path, size counts
    lat = flow.geometry["lattice"]
    torch.manual_seed(seed)
    # CrystalFlow checks for a CrystalVelocityNet when built; train and sample only call it
    flow.net = EquivariantCrystalNet(**kwargs, lattice_loc=lat.base_loc,
                                     lattice_scale=lat.base_scale)
    return flow


def seconds_per_step(keys: list[str], train, steps: int, rounds: int, seed: int
                     ) -> dict[str, float]:
    """CPU seconds per training step of each system: ``rounds`` rounds of ``steps`` steps, the
    systems interleaved; the first round (warm-up) is dropped, the median of the rest kept."""
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys:
            flow = make_flow(k, train, seed)  # train() swaps in the (frozen) EMA network
            t0 = time.process_time()
            flow.train(train, steps=steps, seed=seed + r, progress=False, **TRAIN)
            if r:
                times[k].append((time.process_time() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def flow_matching_loss(flow, data, *, reps: int, seed: int) -> dict[str, float]:
    """The training loss with uniform times, averaged over ``reps`` noise draws per crystal."""
    from flowmatch.training import product_loss

    g = torch.Generator().manual_seed(seed)
    sums = {"total": 0.0, "coords": 0.0, "lattice": 0.0}
    count = 0
    for idx in torch.arange(len(data)).split(256):
        x1 = data.batch(idx)
        for _ in range(reps):
            x0 = flow.geometry.sample_base_like(x1, generator=g)
            t = torch.rand(len(idx), generator=g)
            sample = flow.path.sample(x0, x1, t)
            total, parts = product_loss(flow.net(sample.x_t, t), sample, flow.geometry, WEIGHTS,
                                        reduction="sum")
            sums["total"] += float(total)
            for k in ("coords", "lattice"):
                sums[k] += float(parts[k])
            count += len(idx)
    return {k: v / count for k, v in sums.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = benchmark_parser(__doc__.split("\n\n")[0], threads=1, seed=0)
    ap.add_argument("--budget", type=float, default=300.0,
                    help="CPU seconds of training per system (default 300)")
    ap.add_argument("--systems", nargs="+", choices=sorted(SYSTEMS),
                    default=["invariant", "equivariant-l2", "equivariant-l1"])
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--csp-limit", type=int, default=300, help="test crystals predicted")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--calibration-steps", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2, help="processes for StructureMatcher")
    args = ap.parse_args(argv)
    if args.quick:
        args.budget, args.csp_limit, args.sample_steps = 20.0, 30, 10
        args.calibration_steps = 2
    set_threads(args.threads)
    started = time.perf_counter()

    from flowmatch.plugins.crystal import batch_to_structures, load_cdvae_csv
    from flowmatch.plugins.crystal.data import CrystalSet
    from flowmatch.plugins.crystal.metrics import STRICT_TOLERANCES, csp_metrics

    root = args.data_dir / "crystal" / "perov_5"
    tty = sys.stderr.isatty()
    pool = CrystalSet.concat([load_cdvae_csv(root / f, progress=tty)
                              for f in ("val.csv", "train_dev_1024.csv")])
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))
    n_hold = int(round(args.holdout * len(pool)))
    held, train = pool.subset(perm[:n_hold]), pool.subset(perm[n_hold:])
    n_eval = 50 if args.quick else 500
    held_eval = held.subset(torch.arange(min(n_eval, len(held))))
    train_eval = train.subset(torch.arange(min(n_eval, len(train))))
    test = load_cdvae_csv(root / "test.csv", progress=tty)
    test = test.subset(torch.arange(min(args.csp_limit, len(test))))
    targets = batch_to_structures(test.batch(torch.arange(len(test)), dtype=torch.float64))

    per_step = seconds_per_step(args.systems, train, args.calibration_steps, 3, args.seed)
    print("calibration, CPU s per step: " + ", ".join(f"{k} {v:.3f}"
                                                    for k, v in per_step.items()), flush=True)
    rows, runs = [], {}
    for key in args.systems:
        name = SYSTEMS[key][0]
        steps = max(1, int(args.budget / per_step[key]))
        flow = make_flow(key, train, args.seed)
        params = sum(p.numel() for p in flow.net.parameters())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = flow.train(train, steps=steps, seed=args.seed, progress=tty, **TRAIN)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        tail = result.losses[-max(1, steps // 20):]
        held_loss = flow_matching_loss(flow, held_eval, reps=4, seed=args.seed + 1)
        train_loss = flow_matching_loss(flow, train_eval, reps=4, seed=args.seed + 1)
        gen = torch.Generator().manual_seed(args.seed + 2)
        t0 = time.perf_counter()
        out = flow.sample(test.batch(torch.arange(len(test))), steps=args.sample_steps,
                          generator=gen)
        sample_s = (time.perf_counter() - t0) / len(test)
        preds = [[s] for s in batch_to_structures(out)]
        loose = csp_metrics(preds, targets, jobs=args.jobs)
        strict = csp_metrics(preds, targets, tolerances=STRICT_TOLERANCES, jobs=args.jobs)
        runs[key] = {"steps": steps, "cpu": cpu, "wall": wall, "params": params,
                     "held": held_loss, "train": train_loss, "loose": loose,
                     "strict": strict}
        print(f"{name}: {steps} steps in {cpu:.0f} CPU s ({wall:.0f} s wall); held-out loss "
              f"{held_loss['total']:.4f}; match {100 * loose.match_rate:.1f} % (strict "
              f"{100 * strict.match_rate:.1f} %)", flush=True)
        common = {"system": name, "steps": steps, "train_cpu_s": round(cpu, 1),
                  "train_wall_s": round(wall, 1), "parameters": params}
        rows += [
            {**common, "metric": "training steps", "value": steps, "unit": "steps",
             "better": "higher"},
            {**common, "metric": "CPU s per step", "value": per_step[key], "unit": "s",
             "better": "lower"},
            {**common, "metric": "train loss (last 5 % of steps)",
             "value": statistics.fmean(tail), "unit": "loss", "better": "lower",
             "note": "fit's own losses, times t = 1 − (1 − u)²"},
            {**common, "metric": "FM loss, training crystals", "value": train_loss["total"],
             "unit": "loss", "better": "lower", "crystals": len(train_eval),
             "coords": train_loss["coords"], "lattice": train_loss["lattice"]},
            {**common, "metric": "FM loss, held-out", "value": held_loss["total"],
             "unit": "loss", "better": "lower", "crystals": len(held_eval),
             "coords": held_loss["coords"], "lattice": held_loss["lattice"]},
            {**common, "metric": "held-out coords loss", "value": held_loss["coords"],
             "unit": "loss", "better": "lower"},
            {**common, "metric": "held-out lattice loss", "value": held_loss["lattice"],
             "unit": "loss", "better": "lower"},
            {**common, "metric": "match rate (k=1)", "value": 100 * loose.match_rate,
             "unit": "%", "better": "higher", "test_crystals": len(test)},
            {**common, "metric": "RMSE (matched)", "value": loose.rmse, "unit": "normalised",
             "better": "lower"},
            {**common, "metric": "strict match rate (k=1)", "value": 100 * strict.match_rate,
             "unit": "%", "better": "higher", "test_crystals": len(test)},
            {**common, "metric": "valid samples", "value": 100 * loose.valid_fraction,
             "unit": "%", "better": "higher"},
            {**common, "metric": "sampling time per structure", "value": sample_s, "unit": "s",
             "better": "lower", "network_calls": args.sample_steps},
        ]

    config = {"dataset": "perov_5",
              "train": f"val.csv + train_dev_1024.csv minus held-out {args.holdout:g} "
                       f"({len(train)} crystals)",
              "held_out": f"{len(held_eval)} crystals of the held-out slice",
              "test": f"test.csv, first {len(test)} crystals",
              "budget_cpu_s": args.budget, "calibration_steps": args.calibration_steps,
              "cpu_s_per_step": per_step, **TRAIN, "loss_weights": "coords 400 : lattice 1",
              "sample_steps": args.sample_steps, "anneal_slope": 0.0,
              "systems": {SYSTEMS[k][0]: SYSTEMS[k][1] for k in args.systems},
              "threads": args.threads, "load_average": load_average(), "quick": args.quick,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    print(f"\nperov-5, equal training time ({args.budget:g} CPU s each, threads {args.threads}"
          f"), held-out FM loss on {len(held_eval)} crystals, CSP on {len(test)} test crystals"
          f" ({args.sample_steps} Euler steps)")
    print(f"{'system':56s} {'steps':>6s} {'train FM':>9s} {'held FM':>8s} {'coords':>8s} "
          f"{'lattice':>8s} {'match %':>8s} {'strict %':>9s} {'valid %':>8s}")
    for key, r in runs.items():
        print(f"{SYSTEMS[key][0]:56s} {r['steps']:6d} {r['train']['total']:9.4f} "
              f"{r['held']['total']:8.4f} {r['held']['coords']:8.4f} {r['held']['lattice']:8.4f}"
              f" {100 * r['loose'].match_rate:8.1f} {100 * r['strict'].match_rate:9.1f} "
              f"{100 * r['loose'].valid_fraction:8.1f}")
    return write_result(args.json, "crystal_networks", config, rows, argv)


if __name__ == "__main__":
    main()

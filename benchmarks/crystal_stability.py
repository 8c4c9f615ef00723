"""Stability proxy of crystals: CHGNet relaxation of real test crystals and of generated ones.

    python benchmarks/crystal_stability.py [--quick] [--json PATH] [--threads N] [--data-dir DIR]
        [--dataset perov_5|carbon_24|mp_20] [--limit N] [--model PATH] [--samples N]
        [--sample-steps N] [--steps N] [--fmax F] [--timeout S] [--threshold A]

flowmatch.plugins.crystal.stability relaxes each crystal with the pretrained CHGNet 0.3.0
(weights inside the chgnet wheel) — FIRE on positions and cell until max force < ``--fmax`` eV/Å
or ``--steps`` steps — and reports the median energy per atom before and after, the mean RMSD
between the given and the relaxed structure (per-site displacement in the relaxed lattice, rigid
translation removed; Å) and the fraction that moved less than ``--threshold`` Å.

No Materials Project convex hull is available offline: these numbers are a proxy, **not** an
energy above hull, and are only comparable with the same proxy on the real test crystals
("test crystals" row), which this script always runs. With ``--model`` (a de novo CrystalFlow
checkpoint) it also relaxes ``--samples`` generated crystals ("flowmatch de novo" row).

``--quick`` relaxes 10 test crystals (and 10 samples with ``--model``) for at most 100 steps.
"""

from __future__ import annotations

import math
import time

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import torch
from _common import benchmark_parser, load_average, set_threads, write_result

METRICS = [  # (summary key, metric, unit, better)
    ("median_energy_before", "median energy per atom, as given", "eV/atom", "lower"),
    ("median_energy_after", "median energy per atom, relaxed", "eV/atom", "lower"),
    ("median_energy_drop", "median energy drop on relaxation", "eV/atom", "lower"),
    ("mean_rmsd", "mean RMSD given → relaxed", "Å", "lower"),
    ("median_rmsd", "median RMSD given → relaxed", "Å", "lower"),
    ("median_abs_volume_change", "median |ΔV/V| on relaxation", "fraction", "lower"),
    ("stable_fraction", "fraction with RMSD below threshold", "fraction", "higher"),
    ("n_failed", "failed relaxations", "count", "lower"),
    ("median_seconds", "median relaxation time", "s", "lower"),
]


def rows_for(system: str, summary: dict, threshold: float) -> list[dict]:
    rows = []
    for key, metric, unit, better in METRICS:
        value = summary[key]
        rows.append({"system": system, "metric": metric,
                     "value": float("nan") if value is None else float(value), "unit": unit,
                     "better": better, "n": summary["n"],
                     "note": f"threshold {threshold} Å; {summary['note']}"})
    return rows


def main(argv: list[str] | None = None) -> dict:
    from flowmatch.plugins.crystal import batch_to_structures, load_cdvae_csv
    from flowmatch.plugins.crystal.stability import NO_HULL_NOTE, relax_structures, summarize

    ap = benchmark_parser(__doc__.split("\n\n")[0], threads=1, seed=0)
    ap.add_argument("--dataset", choices=("perov_5", "carbon_24", "mp_20"), default="perov_5")
    ap.add_argument("--limit", type=int, default=100, help="test crystals relaxed (first N)")
    ap.add_argument("--model", default=None, help="de novo CrystalFlow checkpoint to sample")
    ap.add_argument("--samples", type=int, default=100, help="generated crystals relaxed")
    ap.add_argument("--sample-steps", type=int, default=50, help="Euler steps of the sampler")
    ap.add_argument("--steps", type=int, default=500, help="maximum relaxation steps")
    ap.add_argument("--fmax", type=float, default=0.1, help="force tolerance, eV/Å")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per relaxation")
    ap.add_argument("--threshold", type=float, default=0.1, help="'moved little' RMSD, Å")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.limit, args.samples, args.steps = 10, min(args.samples, 10), min(args.steps, 100)
    started = time.perf_counter()
    kw = {"steps": args.steps, "fmax": args.fmax, "timeout": args.timeout,
          "threshold": args.threshold}

    data = load_cdvae_csv(args.data_dir / "crystal" / args.dataset / "test.csv")
    n_test = min(args.limit, len(data))
    structures = {"test crystals": batch_to_structures(
        data.batch(range(n_test), dtype=torch.float64))}
    sample_s = None
    if args.model:
        from flowmatch.plugins.crystal import CrystalFlow

        flow = CrystalFlow.load(args.model)
        t0 = time.perf_counter()
        batch = flow.sample_de_novo(args.samples, steps=args.sample_steps,
                                    generator=torch.Generator().manual_seed(args.seed))
        sample_s = time.perf_counter() - t0
        structures["flowmatch de novo"] = batch_to_structures(batch)

    summaries, seconds = {}, {}
    for system, items in structures.items():
        t0 = time.perf_counter()
        summaries[system] = summarize(relax_structures(items, **kw))
        seconds[system] = round(time.perf_counter() - t0, 1)
        print(f"{system}: relaxed {len(items)} in {seconds[system]:.0f} s", flush=True)

    rows = []
    for system, summary in summaries.items():
        rows += rows_for(system, summary, args.threshold)
    config = {"dataset": args.dataset, "test": f"test.csv, first {n_test} crystals",
              "model": args.model, "samples": args.samples if args.model else 0,
              "sample_steps": args.sample_steps, "seed": args.seed,
              "sample_seconds": sample_s, "potential": "CHGNet 0.3.0 (weights in the wheel)",
              "relax": {**kw, "optimizer": "FIRE + FrechetCellFilter"},
              "rmsd": "per-site displacement, relaxed lattice, rigid translation removed",
              "hull": NO_HULL_NOTE, "relax_seconds": seconds,
              "failure_reasons": {s: v["failure_reasons"][:10] for s, v in summaries.items()},
              "n_converged": {s: v["n_converged"] for s, v in summaries.items()},
              "threads": args.threads, "load_average": load_average(), "quick": args.quick,
              "wall_seconds": round(time.perf_counter() - started, 1)}

    print(f"\n{args.dataset} stability proxy (CHGNet relaxation, fmax {args.fmax} eV/Å, "
          f"≤ {args.steps} steps; stable = RMSD < {args.threshold} Å)")
    short = ["n", "E0 med", "E1 med", "ΔE med", "RMSD mean", "RMSD med", "|ΔV/V|",
             "stable", "failed", "s/relax"]
    keys = ["n", "median_energy_before", "median_energy_after", "median_energy_drop",
            "mean_rmsd", "median_rmsd", "median_abs_volume_change", "stable_fraction",
            "n_failed", "median_seconds"]
    print(f"{'system':20s} " + " ".join(f"{s:>9s}" for s in short))
    for system, summary in summaries.items():
        cells = []
        for key in keys:
            v = summary[key]
            cells.append(f"{'—':>9s}" if v is None or (isinstance(v, float) and math.isnan(v))
                         else f"{v:9d}" if isinstance(v, int) else f"{v:9.3f}")
        print(f"{system:20s} " + " ".join(cells))
    print(f"({NO_HULL_NOTE})")
    return write_result(args.json, "crystal_stability", config, rows, argv)


if __name__ == "__main__":
    main()

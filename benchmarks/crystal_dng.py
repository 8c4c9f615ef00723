"""De novo crystal generation (DNG) on perov-5 or carbon-24 (CDVAE splits), scored as published.

    python benchmarks/crystal_dng.py [--quick] [--json PATH] [--threads N] [--data-dir DIR]
        [--dataset perov_5|carbon_24] [--model PATH | --steps N ...] [--samples N]
        [--sample-steps N] [--limit N] [--un-limit N] [--baseline-samples N] [--jobs N]
    python benchmarks/crystal_dng.py --add-published benchmarks/results/crystal_dng_perov_5.json

A de novo CrystalFlow (``--model``, e.g. one from ``flowmatch crystal train --de-novo``;
without it one is trained here on the CPU for ``--steps`` steps) draws ``--samples`` crystals
(10,000 in the papers) and flowmatch.plugins.crystal.dng_metrics scores them: validity
(structural, compositional) over all samples; uniqueness and novelty over the valid samples
(StructureMatcher() defaults); Wasserstein-1 distances of density and of the number of
elements between 1,000 valid samples and the test split; coverage COV-R / COV-P with CrystalNN
structure and Magpie composition fingerprints (cutoffs 0.2 / 4 for both data sets); network
calls and sampling time per structure.

Data. The *training* crystals — the novelty reference — are the files the model trained on:
perov-5's val.csv + train_dev_1024.csv (4,811 crystals), carbon-24's val.csv (2,032). That is
**not** the published train split (11,356 and 6,091 crystals, absent here), so novelty is
measured against fewer crystals than in the papers and is biased upwards. The test split is the
published test.csv (``--limit`` scores the first N of it). The test set's fingerprints are
cached under ~/.cache/flowmatch/crystal.

Beside the model, in the same run: "baseline: training crystals" — ``--baseline-samples``
crystals drawn from the training set and scored identically (memorisation: valid, on the data's
distribution, novelty 0 by construction).

Published rows (``PUBLISHED``): CDVAE and DiffCSP de novo ("ab initio generation") numbers for
the chosen data set, from DiffCSP's Table 4 (Jiao et al., NeurIPS 2023; its CDVAE rows are
quoted there from Xie et al., ICLR 2022), under the metric names this script emits. They used
the full published train split and 10,000 samples (the CDVAE protocol); the flowmatch rows use
what the config says. Only the metrics this script also computes are carried: not the
formation-energy distance d_E, nor (carbon-24, a single element) compositional validity and
#elements. FlowMM (Miller et al., ICML 2024) is not included: no perov-5 / carbon-24 de novo
numbers of it could be read here. ``--add-published RESULT.json`` rewrites an existing result
file of this script with the current published rows for its data set, changing nothing else.

``--quick`` trains 300 steps of batch 64 (no ``--model``), draws 200 samples with 20 steps and
scores them against the first 300 test crystals: a smoke run, not a result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import numpy as np
import torch
from _common import benchmark_parser, load_average, set_threads, write_result

DATASETS = {
    # training files available in ../shared and the published train-split size
    "perov_5": {"train": ("val.csv", "train_dev_1024.csv"), "published_train": 11356},
    "carbon_24": {"train": ("val.csv",), "published_train": 6091},
}
FINGERPRINT_CACHE = "flowmatch.crystal.dng-fingerprints/1"

# Published de novo generation results (the CDVAE protocol: full published train split, 10,000
# samples, 1,000 valid ones in the distances), under this script's metric names. Read from
# Table 4 ("Results on ab initio generation task") of Jiao et al., "Crystal Structure Prediction
# by Joint Equivariant Diffusion", NeurIPS 2023 (arXiv:2309.04475), which takes its CDVAE rows
# from Xie et al. (ICLR 2022). mp_20 is kept for reference; this script has no MP-20 run.
_CDVAE = "published: CDVAE (Xie et al. 2022, via DiffCSP Table 4)"
_DIFFCSP = "published: DiffCSP (Jiao et al. 2023, Table 4)"
_METRICS = {  # metric -> (unit, better)
    "validity: structural": ("%", "higher"), "validity: compositional": ("%", "higher"),
    "COV-R": ("%", "higher"), "COV-P": ("%", "higher"),
    "density W1": ("g/cm3", "lower"), "#elements W1": ("elements", "lower"),
}


def _published(system: str, values: dict[str, float]) -> list[tuple[str, str, float, str, str]]:
    return [(system, metric, value, *_METRICS[metric]) for metric, value in values.items()]


PUBLISHED: dict[str, list[tuple[str, str, float, str, str]]] = {
    "perov_5": [
        *_published(_CDVAE, {"validity: structural": 100.0, "validity: compositional": 98.59,
                             "COV-R": 99.45, "COV-P": 98.46, "density W1": 0.1258,
                             "#elements W1": 0.0628}),
        *_published(_DIFFCSP, {"validity: structural": 100.0, "validity: compositional": 98.85,
                               "COV-R": 99.74, "COV-P": 98.27, "density W1": 0.1110,
                               "#elements W1": 0.0128}),
    ],
    "carbon_24": [  # compositional validity and #elements are not reported (one element)
        *_published(_CDVAE, {"validity: structural": 100.0, "COV-R": 99.80, "COV-P": 83.08,
                             "density W1": 0.1407}),
        *_published(_DIFFCSP, {"validity: structural": 100.0, "COV-R": 99.90, "COV-P": 97.27,
                               "density W1": 0.0805}),
    ],
    "mp_20": [
        *_published(_CDVAE, {"validity: structural": 100.0, "validity: compositional": 86.70,
                             "COV-R": 99.15, "COV-P": 99.49, "density W1": 0.6875,
                             "#elements W1": 1.432}),
        *_published(_DIFFCSP, {"validity: structural": 100.0, "validity: compositional": 83.25,
                               "COV-R": 99.71, "COV-P": 99.76, "density W1": 0.3502,
                               "#elements W1": 0.3398}),
    ],
}
PUBLISHED_SOURCE = (
    "Jiao et al., NeurIPS 2023 (DiffCSP, arXiv:2309.04475), Table 4 'Results on ab initio "
    "generation task'; its CDVAE rows are quoted there from Xie et al., ICLR 2022 (CDVAE). "
    "Published runs: full published train split and 10,000 samples (CDVAE protocol); the "
    "flowmatch rows use the train files and sample count in this config. d_E (formation "
    "energy) is not computed here and not carried; FlowMM has no perov-5 / carbon-24 de novo "
    "numbers carried (none could be read)")
PUBLISHED_PREFIX = "published: "


def published_rows(dataset: str) -> list[dict]:
    """The published rows for ``dataset`` in the common row layout."""
    train = DATASETS[dataset]["published_train"] if dataset in DATASETS else None
    note = ("published number: full published train split"
            + (f" ({train:,} crystals)" if train else "")
            + " and 10,000 samples (CDVAE protocol), not this run's setup")
    return [{"system": system, "metric": metric, "value": value, "unit": unit,
             "better": better, "source": PUBLISHED_SOURCE.split(";")[0], "note": note}
            for system, metric, value, unit, better in PUBLISHED.get(dataset, [])]


def add_published(path: Path) -> dict:
    """Rewrite the result file ``path`` in place (atomically) with the published rows for its
    data set replaced or added, and its ``published_rows`` note set; nothing else changes."""
    path = Path(path)
    doc = json.loads(path.read_text())
    if doc.get("benchmark") != "crystal_dng":
        raise SystemExit(f"{path} is a {doc.get('benchmark')!r} result, not crystal_dng")
    dataset = doc["config"]["dataset"]
    if dataset not in PUBLISHED:
        raise SystemExit(f"no published rows for data set {dataset!r}")
    kept = [r for r in doc["rows"] if not str(r["system"]).startswith(PUBLISHED_PREFIX)]
    # published rows go before the flowmatch cost rows, as a fresh run writes them
    at = next((i for i, r in enumerate(kept) if r["metric"] == "network calls per structure"),
              len(kept))
    doc["rows"] = kept[:at] + published_rows(dataset) + kept[at:]
    doc["config"]["published_rows"] = PUBLISHED_SOURCE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return doc


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "flowmatch" / "crystal"


def reference_fingerprints(csv: Path, structures: list, *, limit: int, jobs: int,
                           timeout: float) -> tuple[np.ndarray, np.ndarray]:
    """Fingerprints of the first ``limit`` test crystals, cached by the file's hash."""
    from flowmatch.plugins.crystal.dng_metrics import fingerprints

    key = hashlib.sha256(csv.read_bytes() + f"{FINGERPRINT_CACHE}|{limit}".encode()).hexdigest()
    path = cache_dir() / f"{csv.parent.name}-{csv.stem}-fp-{key[:24]}.npz"
    if path.is_file():
        with np.load(path) as f:
            if f["structure"].shape[0] == len(structures):
                return f["structure"], f["composition"]
    s, c = fingerprints(structures, jobs=jobs, timeout=timeout)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, structure=s, composition=c)
    tmp.replace(path)
    return s, c


ROWS = (  # (DNGResult field, metric, unit, better, scale)
    ("structural_validity", "validity: structural", "%", "higher", 100),
    ("compositional_validity", "validity: compositional", "%", "higher", 100),
    ("validity", "valid (both + fingerprint)", "%", "higher", 100),
    ("uniqueness", "uniqueness (of valid)", "%", "higher", 100),
    ("novelty", "novelty (of valid)", "%", "higher", 100),
    ("unique_novel", "unique and novel (of valid)", "%", "higher", 100),
    ("density_w1", "density W1", "g/cm3", "lower", 1),
    ("num_elements_w1", "#elements W1", "elements", "lower", 1),
    ("cov_recall", "COV-R", "%", "higher", 100),
    ("cov_precision", "COV-P", "%", "higher", 100),
)


def rows_for(system: str, result) -> list[dict]:
    extra = {"samples": result.samples, "valid_samples": result.valid,
             "un_samples": result.un_samples, "property_samples": result.property_samples}
    return [{"system": system, "metric": metric, "value": scale * getattr(result, name),
             "unit": unit, "better": better, **extra}
            for name, metric, unit, better, scale in ROWS]


def main(argv: list[str] | None = None) -> dict:
    ap = benchmark_parser(__doc__.split("\n\n")[0], threads=2, seed=0)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="perov_5")
    ap.add_argument("--model", default=None, help="score this saved de novo CrystalFlow "
                    "instead of training one")
    ap.add_argument("--save-model", default=None, help="save the trained model here")
    ap.add_argument("--steps", type=int, default=3000, help="training steps (without --model)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-time-power", type=float, default=2.0,
                    help="training times t = 1 - (1 - u)^P (the GPU models used 2)")
    ap.add_argument("--samples", type=int, default=10000, help="crystals generated (papers: "
                    "10,000)")
    ap.add_argument("--sample-steps", type=int, default=50, help="Euler steps of the sampler")
    ap.add_argument("--anneal-slope", type=float, default=0.0,
                    help="coordinate anti-annealing slope of the sampler")
    ap.add_argument("--time-power", type=float, default=1.0,
                    help="sampling grid t = 1 - (1 - u)^P")
    ap.add_argument("--sample-batch", type=int, default=512,
                    help="crystals per sampling call (memory bound)")
    ap.add_argument("--limit", type=int, default=None, help="score against the first N test "
                    "crystals only (default: all)")
    ap.add_argument("--un-limit", type=int, default=None, help="score uniqueness and novelty "
                    "on N valid samples drawn at random (default: all valid samples)")
    ap.add_argument("--property-samples", type=int, default=1000,
                    help="valid samples in the W1 distances (papers: 1,000)")
    ap.add_argument("--baseline-samples", type=int, default=500,
                    help="training crystals scored as the memorisation baseline (0: skip)")
    ap.add_argument("--jobs", type=int, default=2, help="processes for fingerprints and "
                    "StructureMatcher")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds allowed per fingerprint and per structure comparison")
    ap.add_argument("--device", default="cpu", help="torch device for training and sampling")
    ap.add_argument("--add-published", type=Path, default=None, metavar="JSON_PATH",
                    help="only rewrite this existing crystal_dng result file in place with the "
                    "published rows for its data set (nothing is trained or sampled)")
    args = ap.parse_args(argv)
    if args.add_published is not None:
        doc = add_published(args.add_published)
        print(f"{args.add_published}: {len(published_rows(doc['config']['dataset']))} published "
              f"rows for {doc['config']['dataset']}")
        return doc
    if args.quick:
        args.steps, args.samples = min(args.steps, 300), min(args.samples, 200)
        args.batch = min(args.batch, 64)
        args.sample_steps = min(args.sample_steps, 20)
        args.limit = min(args.limit or 300, 300)
        args.baseline_samples = min(args.baseline_samples, 50)
    for name in ("samples", "sample_steps", "sample_batch", "jobs", "property_samples"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    set_threads(args.threads)

    from flowmatch.plugins.crystal import batch_to_structures, load_cdvae_csv
    from flowmatch.plugins.crystal.csp import CrystalFlow
    from flowmatch.plugins.crystal.data import CrystalSet
    from flowmatch.plugins.crystal.dng_metrics import (
        COV_CUTOFFS,
        batch_compositions,
        dng_metrics,
        reduce_for_matching,
    )

    started = time.perf_counter()
    spec = DATASETS[args.dataset]
    root = args.data_dir / "crystal" / args.dataset
    tty = sys.stderr.isatty()
    train = CrystalSet.concat([load_cdvae_csv(root / f, progress=tty) for f in spec["train"]])
    test_csv = root / "test.csv"
    test = load_cdvae_csv(test_csv, progress=tty)
    n_test_all = len(test)
    if args.limit is not None:
        test = test.subset(torch.arange(min(args.limit, len(test))))

    device = torch.device(args.device)
    if args.model:
        flow = CrystalFlow.load(args.model).to(device)
        if flow.task != "de_novo":
            raise SystemExit(f"{args.model} is a {flow.task} model; crystal_dng.py needs a de "
                             "novo one (flowmatch crystal train --de-novo)")
    else:
        torch.manual_seed(args.seed)  # the network's initial weights
        flow = CrystalFlow.for_data(train, task="de_novo", hidden=args.hidden,
                                    layers=args.layers)
        result = flow.train(train, steps=args.steps, batch_size=args.batch, lr=args.lr,
                            seed=args.seed, progress=tty, time_power=args.train_time_power,
                            device=device)
        print(f"trained {result.steps} steps in {result.seconds:.0f} s on {device}", flush=True)
        if args.save_model:
            flow.save(args.save_model)

    # -- sample ------------------------------------------------------------------------------
    gen = torch.Generator(device=device).manual_seed(args.seed)
    samples, compositions = [], []
    t0 = time.perf_counter()
    sample_s = 0.0
    left = args.samples
    while left > 0:
        n = min(left, args.sample_batch)
        t1 = time.perf_counter()
        batch = flow.sample_de_novo(n, generator=gen, steps=args.sample_steps,
                                    anneal_slope=args.anneal_slope, time_power=args.time_power)
        sample_s += time.perf_counter() - t1
        samples += batch_to_structures(batch)
        compositions += batch_compositions(batch)
        left -= n
        print(f"sampled {len(samples)}/{args.samples} in {time.perf_counter() - t0:.0f} s",
              flush=True)
    calls = flow.nfe

    # -- score -------------------------------------------------------------------------------
    reference = batch_to_structures(test.batch(torch.arange(len(test)), dtype=torch.float64))
    training = batch_to_structures(train.batch(torch.arange(len(train)), dtype=torch.float64))
    if any(s is None for s in reference + training):
        raise SystemExit("a test or training crystal could not be rebuilt from its CSV")
    t0 = time.perf_counter()
    ref_fp = reference_fingerprints(test_csv, reference, limit=len(test), jobs=args.jobs,
                                    timeout=args.timeout)
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_reduced = reduce_for_matching(training, jobs=args.jobs, timeout=args.timeout)
    reduce_s = time.perf_counter() - t0
    print(f"reference fingerprints {ref_s:.0f} s, training cells reduced in {reduce_s:.0f} s",
          flush=True)
    common = {"cutoffs": COV_CUTOFFS[args.dataset], "reference_fingerprints": ref_fp,
              "training_reduced": train_reduced, "property_samples": args.property_samples,
              "un_limit": args.un_limit, "seed": args.seed, "jobs": args.jobs,
              "timeout": args.timeout}
    t0 = time.perf_counter()
    ours = dng_metrics(samples, reference, training, compositions=compositions, **common)
    print(f"scored {len(samples)} samples in {time.perf_counter() - t0:.0f} s {ours.seconds}",
          flush=True)
    results = {"flowmatch": ours}
    if args.baseline_samples:
        rng = np.random.default_rng(args.seed + 7)
        pick = rng.choice(len(training), size=min(args.baseline_samples, len(training)),
                          replace=False)
        results["baseline: training crystals"] = dng_metrics(
            [training[int(i)] for i in pick], reference, training, **common)

    rows = []
    for system, r in results.items():
        rows += rows_for(system, r)
    rows += published_rows(args.dataset)
    n = args.samples
    rows.append({"system": "flowmatch", "metric": "network calls per structure",
                 "value": calls, "unit": "calls", "better": "lower"})
    rows.append({"system": "flowmatch", "metric": "sampling time per structure",
                 "value": sample_s / n, "unit": "s", "better": "lower", "device": str(device),
                 "threads": args.threads})
    config = {"dataset": args.dataset,
              "train": f"{' + '.join(spec['train'])} ({len(train)} crystals): the files the "
                       f"model trained on and the novelty reference — not the published "
                       f"{spec['published_train']:,}-crystal train split, which is absent here",
              "test": f"test.csv, first {len(test)} of {n_test_all} crystals",
              "model": args.model, "task": flow.task,
              "train_steps": flow.info.get("steps", None if args.model else args.steps),
              "train_seconds": flow.info.get("train_seconds"),
              "train_device": flow.info.get("train_device", str(device)),
              "batch": flow.info.get("batch_size"), "hidden": flow.net.hidden,
              "layers": len(flow.net.layers), "samples": n,
              "sample_steps": args.sample_steps, "anneal_slope": args.anneal_slope,
              "time_power": args.time_power, "sample_seconds": round(sample_s, 1),
              "cov_cutoffs": COV_CUTOFFS[args.dataset],
              "published_rows": PUBLISHED_SOURCE,
              "un_limit": args.un_limit, "property_samples": args.property_samples,
              "baseline_samples": args.baseline_samples,
              "diagnostics": {system: {"fingerprint_failures": r.fingerprint_failures,
                                       "degenerate_cells": r.degenerate,
                                       "matcher_comparisons": r.comparisons,
                                       "matcher_timeouts": r.matcher_timeouts,
                                       "seconds": r.seconds}
                              for system, r in results.items()},
              "reference_fingerprint_seconds": round(ref_s, 1),
              "threads": args.threads, "jobs": args.jobs, "timeout": args.timeout,
              "load_average": load_average(), "quick": args.quick,
              "wall_seconds": round(time.perf_counter() - started, 1)}

    print(f"\n{args.dataset} de novo generation: {n} samples ({args.sample_steps} Euler steps = "
          f"{calls} network calls per structure, {sample_s / n:.3f} s per structure on "
          f"{device}), {len(test)} test crystals, novelty against {len(train)} training crystals")
    names = [metric for _, metric, *_ in ROWS]
    short = ["struct %", "comp %", "valid %", "uniq %", "novel %", "U&N %", "ρ W1",
             "#el W1", "COV-R %", "COV-P %"]
    systems = list(results) + list(dict.fromkeys(s for s, *_ in PUBLISHED[args.dataset]))
    width = max(30, *(len(s) for s in systems))
    print(f"{'system':{width}s} " + " ".join(f"{s:>8s}" for s in short))
    for system in systems:
        vals = {row["metric"]: row["value"] for row in rows if row["system"] == system}
        cells = [f"{vals.get(m, math.nan):8.3f}" if "W1" in m
                 else f"{vals.get(m, math.nan):8.2f}" for m in names]
        print(f"{system:{width}s} " + " ".join(c if not math.isnan(float(c)) else f"{'—':>8s}"
                                          for c in cells))
    print("(published rows: full published train split and 10,000 samples; "
          f"source: {PUBLISHED_SOURCE.split(';')[0]})")
    return write_result(args.json, "crystal_dng", config, rows, argv)


if __name__ == "__main__":
    main()

"""Discrete flow matching on balanced bracket sequences: exactly checkable validity.

    python benchmarks/discrete_sequences.py [--quick] [--json PATH] [--threads N] [--data-dir DIR]

Data: uniformly random valid sequences of 8 bracket types (vocabulary 16), length 64
(flowmatch.data.brackets); entropy log(C₃₂ · 8³²) = 108.0 nats per sequence. A small bidirectional
transformer (DiscreteTransformer) is trained with cross-entropy on the mixture path κ_t = t for
each source (mask, uniform). Then, for several numbers of sampling steps, with and without the
corrector (Gat et al.'s divergence-free term, c_t = 12 t² (1 − t)^¼, which re-draws tokens from
the source and lets the sampler fix mistakes), it reports:

* validity: the fraction of samples that are balanced and correctly typed;
* shape validity: balanced when bracket types are ignored (the easier half of the task);
* valid prefix: mean length of the longest completable prefix, as a fraction of 64 (graded);
* diversity: the fraction of distinct sequences among the samples;
* NELBO per token (nats) on fresh test sequences, beside the data entropy per token.

Training is short on these CPUs, so absolute validity is modest; the table's purpose is the
comparison across steps, sources and the corrector under one budget. Timings are provisional.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from flowmatch.data.brackets import (  # noqa: E402
    brackets_entropy,
    is_valid_brackets,
    sample_brackets,
    valid_prefix_length,
)
from flowmatch.geometry.discrete import Discrete  # noqa: E402
from flowmatch.models.discrete import DiscreteTransformer  # noqa: E402
from flowmatch.paths.mixture import MixtureDiscretePath  # noqa: E402
from flowmatch.paths.schedulers import PolynomialScheduler  # noqa: E402
from flowmatch.solvers.ctmc import DiscreteSolver  # noqa: E402
from flowmatch.training.discrete_loss import discrete_cross_entropy, discrete_nelbo  # noqa: E402

LENGTH, TYPES = 64, 8


def corrector(t: float) -> float:
    return 12.0 * t**2 * (1.0 - t) ** 0.25


def shape_valid(x: torch.Tensor) -> torch.Tensor:
    """Balanced when bracket types are ignored (every token mapped to type 0)."""
    in_vocab = ((x >= 0) & (x < 2 * TYPES)).all(1)
    return in_vocab & is_valid_brackets(torch.where(x < 2 * TYPES, x % 2, x), 1)


def train(source: str, steps: int, batch: int, dim: int, layers: int, lr: float, seed: int):
    sp = Discrete(2 * TYPES, source)
    path = MixtureDiscretePath(PolynomialScheduler(1))
    torch.manual_seed(seed)
    net = DiscreteTransformer(LENGTH, sp.num_states, 2 * TYPES, dim=dim, heads=4, layers=layers)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        x1 = sample_brackets(batch, LENGTH, TYPES, generator=g)
        t = torch.rand(batch, generator=g)
        x_t = path.sample(sp.sample_base(x1.shape, generator=g), x1, t, generator=g).x_t
        loss = discrete_cross_entropy(net(x_t, t), x1, x_t, sp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    return sp, path, net.eval(), steps / (time.perf_counter() - t0)


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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = args.quick
    cfg = {
        "threads": args.threads, "quick": q, "seed": args.seed, "length": LENGTH,
        "bracket_types": TYPES, "vocab": 2 * TYPES, "scheduler": "kappa_t = t",
        "train_steps": 300 if q else 6000, "batch": 64 if q else 128,
        "dim": 64 if q else 128, "layers": 2 if q else 4, "lr": 1e-3 if q else 5e-4,
        "sample_steps": [16, 64] if q else [16, 64, 256], "num_samples": 128 if q else 1000,
        "nelbo_sequences": 64 if q else 500, "nelbo_times": 4 if q else 32,
        "corrector": "c_t = 12 t^2 (1 - t)^0.25",
        "entropy_nats_per_token": brackets_entropy(LENGTH, TYPES) / LENGTH,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if args.train_steps is not None:
        cfg["train_steps"] = args.train_steps
    cfg["sources"] = args.sources
    rows = []
    start = time.perf_counter()
    lines = []
    for source in args.sources:
        sp, path, net, steps_s = train(source, cfg["train_steps"], cfg["batch"], cfg["dim"],
                                       cfg["layers"], cfg["lr"], args.seed)
        g = torch.Generator().manual_seed(args.seed + 1)
        test = sample_brackets(cfg["nelbo_sequences"], LENGTH, TYPES, generator=g)
        nelbo = float(discrete_nelbo(net, test, path, sp, num_times=cfg["nelbo_times"],
                                     generator=g).mean()) / LENGTH
        rows += [
            {"system": "flowmatch", "metric": f"{source}/nelbo_per_token", "value": nelbo,
             "unit": "nats/token", "better": "lower"},
            {"system": "flowmatch", "metric": f"{source}/train_steps_per_s", "value": steps_s,
             "unit": "steps/s", "better": "higher"},
        ]
        lines.append(f"[{source}] NELBO {nelbo:.4f} nats/token (data entropy "
                     f"{cfg['entropy_nats_per_token']:.4f}); {steps_s:.1f} train steps/s")
        solver = DiscreteSolver(net, sp, path)
        x0 = sp.sample_base((cfg["num_samples"], LENGTH), generator=g)
        for steps in cfg["sample_steps"]:
            for use_corr in (False, True):
                t0 = time.perf_counter()
                x = solver.sample(x0, num_steps=steps, generator=g,
                                  corrector=corrector if use_corr else None)
                secs = time.perf_counter() - t0
                valid = float(is_valid_brackets(x, TYPES).double().mean())
                shape = float(shape_valid(x).double().mean())
                prefix = float(valid_prefix_length(x, TYPES).double().mean()) / LENGTH
                distinct = len({tuple(r) for r in x.tolist()}) / x.shape[0]
                tag = f"{source}/steps={steps}/{'corrector' if use_corr else 'plain'}"
                rows += [
                    {"system": "flowmatch", "metric": f"{tag}/validity", "value": valid,
                     "unit": "fraction", "better": "higher"},
                    {"system": "flowmatch", "metric": f"{tag}/shape_validity", "value": shape,
                     "unit": "fraction", "better": "higher"},
                    {"system": "flowmatch", "metric": f"{tag}/valid_prefix_fraction",
                     "value": prefix, "unit": "fraction of length", "better": "higher"},
                    {"system": "flowmatch", "metric": f"{tag}/distinct_fraction",
                     "value": distinct, "unit": "fraction", "better": "higher"},
                    {"system": "flowmatch", "metric": f"{tag}/sample_s", "value": secs,
                     "unit": "s", "better": "lower"},
                ]
                lines.append(f"{tag:40s} valid {valid:6.3f}  shape {shape:6.3f}  "
                             f"prefix {prefix:6.3f}  "
                             f"distinct {distinct:6.3f}  {secs:6.2f} s")
        print(f"[{source}] done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
    cfg["wall_s"] = time.perf_counter() - start
    print("\n".join(lines))
    print(f"(threads {args.threads}; {cfg['num_samples']} samples per cell; wall "
          f"{cfg['wall_s']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "discrete_sequences", "config": cfg,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

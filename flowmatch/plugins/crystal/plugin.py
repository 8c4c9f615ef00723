"""Command-line registration of the crystal plugin (``flowmatch crystal ...``).

Sub-commands:

* ``flowmatch crystal generate --composition SrTiO3 -n 8 --out DIR`` — sample structures for
  compositions with the shipped perov-5 model (or ``--model``), or new crystals with
  ``--de-novo``; one CIF per structure (with the symmetry spglib finds), a summary table and a
  PNG of the cells;
* ``flowmatch crystal evaluate --generated DIR --reference test.csv`` — match generated CIFs
  against reference structures (the community CSP protocol), or with ``--de-novo --training
  train.csv`` score them with the de novo protocol (validity, uniqueness, novelty, property
  Wasserstein distances, COV-R / COV-P);
* ``flowmatch crystal relax DIR`` — relax every CIF in a folder with the CHGNet stability proxy
  (energy per atom before and after, RMSD, volume change; no convex-hull energy) and write the
  relaxed CIFs;
* ``flowmatch crystal train --data train.csv --out model.pt`` — train a model on CDVAE-format
  CSV files.

Nothing heavy is imported at registration: torch and pymatgen load when a sub-command runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "default_model_path", "register_cli"]

DEFAULT_MODEL = "perov5_csp.pt"

EXAMPLES_GENERATE = """examples:
  flowmatch crystal generate --composition SrTiO3
  flowmatch crystal generate -c SrTiO3 -c KMgF3 -c Ca2Ti2O6 -n 8 --out structures/
  flowmatch crystal generate -c BaZrO3 --steps 200 --seed 3 --model my_model.pt --force
  flowmatch crystal generate --de-novo -n 100 --model dng.pt --elements Li,Fe,P,O
  flowmatch crystal generate --de-novo -n 100 --model guided.pt --property heat_ref=0.5 --guidance 2
"""
EXAMPLES_EVALUATE = """examples:
  flowmatch crystal evaluate --generated structures/ --reference perov_5/test.csv
  flowmatch crystal evaluate --generated structures/ --reference ref/ --json metrics.json
  flowmatch crystal evaluate --de-novo --generated dn/ --reference perov_5/test.csv \\
      --training perov_5/train.csv --jobs 2 --json dng.json
"""
EXAMPLES_RELAX = """examples:
  flowmatch crystal relax structures/
  flowmatch crystal relax structures/ --out relaxed/ --json stability.json --force
  flowmatch crystal relax dn/ --steps 200 --fmax 0.05 --timeout 30 --limit 50 --device cuda
"""
EXAMPLES_TRAIN = """examples:
  flowmatch crystal train --data perov_5/val.csv perov_5/train_dev_1024.csv --out perov.pt
  flowmatch crystal train --data mp_20/train.csv --out mp20.pt --steps 50000 --hidden 256
  flowmatch crystal train --data perov_5/*.csv --out perov.pt --device cuda --budget 600
  flowmatch crystal train --data perov_5/*.csv --de-novo --property heat_ref --out guided.pt
  flowmatch crystal train --data perov_5/*.csv --property heat_ref --init dng.pt --out guided.pt
"""


def default_model_path() -> Path:
    """The shipped model's file (inside the installed package)."""
    return Path(__file__).resolve().parent / "weights" / DEFAULT_MODEL


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``crystal`` command (with its sub-commands) to a CLI's sub-parsers."""
    crystal = subparsers.add_parser(
        "crystal", help="crystal structure prediction and de novo generation",
        description="Crystals by flow matching: generate structures for a composition with "
        "the shipped perov-5 model (or your own), or new crystals with a de novo model "
        "(optionally guided towards a property value); evaluate them against reference "
        "structures (CSP or de novo protocol); relax them with CHGNet as a stability proxy; "
        "or train a model on CDVAE-format CSV files.")
    sub = crystal.add_subparsers(dest="crystal_command", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    gen = sub.add_parser(
        "generate", help="generate crystal structures for compositions (CIF files)",
        description="Sample crystal structures for each composition by integrating a trained "
        "flow from noise (lattice and fractional coordinates; the atom types are the "
        "composition) and write them as CIF files, with a summary table and a PNG of the "
        "cells. A reduced formula is tried at every number of formula units Z whose atom count "
        "the model was trained on, unless --formula-units is given.",
        epilog=EXAMPLES_GENERATE, formatter_class=raw)
    gen.add_argument("-c", "--composition", action="append", nargs="+", default=None,
                     metavar="FORMULA", help="a composition such as SrTiO3 (repeatable)")
    gen.add_argument("--de-novo", action="store_true",
                     help="generate new crystals (types too) with a de novo model (--model)")
    gen.add_argument("--elements", default=None, metavar="EL,EL,...",
                     help="de novo: restrict the types to these elements, e.g. Li,Fe,P,O")
    gen.add_argument("--property", action="append", default=None, metavar="NAME=VALUE",
                     help="condition a model trained with --property on this value "
                     "(repeatable, one per property it knows), e.g. heat_ref=0.5")
    gen.add_argument("--guidance", type=_finite_float, default=1.0,
                     help="classifier-free guidance scale w with --property: 0 ignores the "
                     "property, 1 conditions (default), > 1 pushes harder (2 network passes "
                     "per step)")
    gen.add_argument("-n", "--num-samples", type=_positive_int, default=1,
                     help="structures per composition and Z, or de novo in all (default 1)")
    gen.add_argument("--out", default="crystals", help="output folder (default ./crystals)")
    gen.add_argument("--force", action="store_true", help="overwrite existing files")
    gen.add_argument("--model", default=None,
                     help=f"a CrystalFlow checkpoint (default: the shipped {DEFAULT_MODEL})")
    gen.add_argument("--steps", type=_positive_int, default=None,
                     help="integration steps (default: the model's, chosen on validation data)")
    gen.add_argument("--method", choices=("euler", "midpoint", "heun", "rk4"), default="euler",
                     help="Runge-Kutta scheme (default euler)")
    gen.add_argument("--anneal-slope", type=_non_negative_float, default=None,
                     help="coordinate velocity x (1 + slope t) (default: the model's)")
    gen.add_argument("--formula-units", type=_positive_int, default=None,
                     help="formula units Z per cell (default: every Z the model knows)")
    gen.add_argument("--symprec", type=_non_negative_float, default=0.1,
                     help="symmetry tolerance of the CIFs in Å (0: write P1; default 0.1)")
    gen.add_argument("--no-png", action="store_true", help="do not draw cells.png")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    gen.add_argument("--threads", type=_positive_int, default=None,
                     help="torch CPU threads (default: torch's choice)")
    gen.add_argument("--device", default="cpu",
                     help="torch device to sample on: cpu (default), cuda, mps ...")
    gen.add_argument("--quiet", action="store_true",
                     help="no progress bar (none is drawn when stderr is not a terminal)")
    gen.set_defaults(func=_cmd_generate)

    ev = sub.add_parser(
        "evaluate", help="match generated CIFs against reference structures",
        description="Score generated structures with the community CSP protocol: each "
        "reference crystal is matched against the generated structures of the same reduced "
        "composition (k = their number) by StructureMatcher, at the standard tolerances "
        "(stol 0.5, angle 10, ltol 0.3) and the strict ones (stol 0.3, angle 5, ltol 0.2); "
        "structural and SMACT validity gate every match. With --de-novo: the de novo "
        "protocol (CDVAE / DiffCSP / FlowMM) — structural and compositional validity, "
        "uniqueness and novelty against the --training crystals (StructureMatcher), "
        "Wasserstein-1 distances of density and number of elements to the reference, and "
        "coverage COV-R / COV-P of CrystalNN and Magpie fingerprints.",
        epilog=EXAMPLES_EVALUATE, formatter_class=raw)
    ev.add_argument("--generated", required=True, help="folder of generated CIF files")
    ev.add_argument("--reference", required=True,
                    help="CDVAE-format CSV, a CIF file, or a folder of CIF files")
    ev.add_argument("--only-generated", action="store_true",
                    help="score only references whose composition was generated (CSP only)")
    ev.add_argument("--json", default=None, help="also write the metrics as JSON here")
    ev.add_argument("--de-novo", action="store_true",
                    help="score de novo generation instead of structure prediction")
    ev.add_argument("--training", nargs="+", default=None, metavar="SOURCE",
                    help="--de-novo: the training crystals, the novelty reference (CDVAE-format "
                    "CSV files, CIF files or folders of CIF files); required with --de-novo")
    ev.add_argument("--cutoffs", default=None, metavar="NAME|S,C",
                    help="--de-novo: COV-R / COV-P fingerprint-distance cutoffs, a data set "
                    "name (perov_5, carbon_24: 0.2,4; mp_20: 0.4,10) or a structure,composition "
                    "pair (default: the data set named in the --reference path, else mp_20)")
    ev.add_argument("--jobs", type=_positive_int, default=None,
                    help="--de-novo: processes for fingerprints and structure matching "
                    "(default 1)")
    ev.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                    help="--de-novo: seconds allowed per fingerprint and per structure "
                    "comparison; one that runs out counts as no fingerprint / no match "
                    "(default 30)")
    ev.set_defaults(func=_cmd_evaluate)

    rel = sub.add_parser(
        "relax", help="relax CIF files with CHGNet (a stability proxy)",
        description="Relax every *.cif in DIR with the pretrained CHGNet potential (ASE FIRE on "
        "positions and cell) and report, per file, the energy per atom before and after, the "
        "RMSD of the atoms (rigid translation and cell strain removed), the volume change and "
        "whether the RMSD is below --threshold (\"stable\" under the proxy), then medians and "
        "the stable fraction. A proxy only: no Materials Project convex hull is available "
        "offline, so no energy above hull is computed. The relaxed structures are written as "
        "CIF files of the same names.",
        epilog=EXAMPLES_RELAX, formatter_class=raw)
    rel.add_argument("dir", metavar="DIR", help="folder of CIF files to relax")
    rel.add_argument("--out", default=None,
                     help="folder for the relaxed CIF files (default DIR/relaxed)")
    rel.add_argument("--force", action="store_true",
                     help="overwrite existing relaxed CIF files and --json")
    rel.add_argument("--steps", type=_positive_int, default=500,
                     help="most FIRE steps per structure (default 500)")
    rel.add_argument("--fmax", type=_positive_float, default=0.1,
                     help="converged when the largest force is below this, eV/Å (default 0.1)")
    rel.add_argument("--timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                     help="wall-clock seconds allowed per structure (default 60)")
    rel.add_argument("--threshold", type=_positive_float, default=0.1, metavar="ANGSTROM",
                     help="RMSD below which a structure counts as stable, Å (default 0.1)")
    rel.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                     help="relax only the first N files (in natural name order: x_2 before x_10)")
    rel.add_argument("--symprec", type=_non_negative_float, default=0.1,
                     help="symmetry tolerance of the relaxed CIFs in Å (0: write P1; "
                     "default 0.1)")
    rel.add_argument("--json", default=None, metavar="PATH",
                     help="also write per-file results and the summary as JSON here")
    rel.add_argument("--device", default="cpu",
                     help="torch device for CHGNet: cpu (default), cuda, mps ...")
    rel.add_argument("--quiet", action="store_true",
                     help="no progress bar (none is drawn when stderr is not a terminal)")
    rel.set_defaults(func=_cmd_relax)

    train = sub.add_parser(
        "train", help="train a CSP model on CDVAE-format CSV files",
        description="Train a crystal structure prediction flow (CrystalVelocityNet, FlowMM "
        "loss weights 400 : 1, AdamW, cosine decay, EMA 0.999) on the crystals of CDVAE-format "
        "CSV files and save it for `flowmatch crystal generate --model`.",
        epilog=EXAMPLES_TRAIN, formatter_class=raw)
    train.add_argument("--data", nargs="+", required=True, help="CDVAE-format CSV files")
    train.add_argument("--out", required=True, help="checkpoint path (written atomically)")
    train.add_argument("--force", action="store_true", help="overwrite an existing --out")
    train.add_argument("--steps", type=_positive_int, default=12000, help="optimiser steps")
    train.add_argument("--batch", type=_positive_int, default=256, help="crystals per step")
    train.add_argument("--hidden", type=_positive_int, default=192, help="network width")
    train.add_argument("--layers", type=_positive_int, default=4, help="message-passing layers")
    train.add_argument("--net", choices=("invariant", "equivariant"), default="invariant",
                       help="velocity network: invariant CSPNet-style (default) or e3nn "
                       "equivariant (try --hidden 64 --layers 3 with it)")
    train.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate")
    train.add_argument("--seed", type=int, default=0, help="initialisation and data seed")
    train.add_argument("--time-power", type=_positive_float, default=2.0,
                       help="training times t = 1 - (1 - u)^P (default 2: more updates near "
                       "the data; 1 is uniform)")
    train.add_argument("--threads", type=_positive_int, default=None)
    train.add_argument("--device", default="cpu",
                       help="torch device to train on: cpu (default), cuda, cuda:1, mps ...")
    train.add_argument("--budget", type=_positive_float, default=None, metavar="SECONDS",
                       help="stop after this many seconds of training (the learning-rate "
                       "schedule then spans the budget; at most --steps steps)")
    train.add_argument("--de-novo", action="store_true",
                       help="train a de novo model (atom types flow too, from mask tokens)")
    train.add_argument("--property", action="append", default=None, metavar="NAME",
                       help="condition on this numeric column of the CSV files (repeatable), "
                       "for guided generation with `generate --property NAME=VALUE`")
    train.add_argument("--cond-dropout", type=_unit_float, default=0.1,
                       help="with --property: probability of training on a crystal without "
                       "its label, which teaches the unconditional field (default 0.1)")
    train.add_argument("--init", default=None, metavar="MODEL",
                       help="start from this trained model's weights and architecture "
                       "(e.g. add --property conditioning to an unconditional model; "
                       "--hidden/--layers/--net/--de-novo are then the model's)")
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


def _number(text: str, ok, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def _finite_float(text: str) -> float:
    import math

    return _number(text, math.isfinite, "a finite number")


def _unit_float(text: str) -> float:
    return _number(text, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def _positive_float(text: str) -> float:
    return _number(text, lambda v: v > 0 and v != float("inf"), "a positive number")


def _non_negative_float(text: str) -> float:
    return _number(text, lambda v: v >= 0 and v != float("inf"), "a number ≥ 0")


def _fail(command: str, err: BaseException | str, code: int = 2) -> int:
    print(f"flowmatch crystal {command}: error: {err}", file=sys.stderr)
    return code


def _safe_name(formula: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", formula).strip("_") or "crystal"


def _formula_units(formula: str, given: int | None, size_counts: dict[int, int]) -> list[int]:
    """Every Z to try for ``formula`` (checked: known elements, atom counts the model knows)."""
    from flowmatch.plugins.crystal.csp import composition_tokens

    n = len(composition_tokens(formula, formula_units=1))
    largest = max(size_counts) if size_counts else None
    if given is not None:
        if largest is not None and given * n > largest:
            raise ValueError(f"{formula} with {given} formula units has {given * n} atoms, more "
                             f"than the model was trained for (at most {largest})")
        return [given]
    zs = sorted(z for z in range(1, (largest or n) // n + 1) if (z * n) in size_counts)
    if not zs:
        known = sorted(size_counts)
        raise ValueError(f"{formula} has {n} atoms per formula unit, and the model knows only "
                         f"cells of {known} atoms; give --formula-units to try anyway")
    return zs


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.de_novo == bool(args.composition):
        return _fail("generate", "give --composition FORMULA (structure prediction) or "
                     "--de-novo, not both and not neither")
    if args.elements is not None and not args.de_novo:
        return _fail("generate", "--elements applies to --de-novo generation")
    try:
        asked = _property_values(args.property or [])
    except ValueError as err:
        return _fail("generate", err)
    if args.guidance != 1.0 and not asked:
        return _fail("generate", "--guidance needs --property NAME=VALUE")
    formulas = [f for group in args.composition or [] for f in group]
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail("generate", f"--out {str(out)!r} exists and is not a folder")
    model_path = Path(args.model) if args.model else default_model_path()
    if not model_path.is_file():
        return _fail("generate", f"model {str(model_path)!r} does not exist")
    import torch

    from flowmatch.plugins.crystal.csp import CrystalFlow, composition_tokens, element_tokens

    if args.threads:
        torch.set_num_threads(args.threads)
    from flowmatch.cli import resolve_device

    device = resolve_device("crystal generate", args.device)
    if device is None:
        return 2
    try:
        flow = CrystalFlow.load(model_path).to(device)
        if args.de_novo:
            if flow.task != "de_novo":
                raise ValueError(f"model {str(model_path)!r} predicts structures for a given "
                                 "composition; --de-novo needs a model trained with "
                                 "`flowmatch crystal train --de-novo`")
            allowed = (None if args.elements is None
                       else element_tokens(args.elements.split(",")))
            plan = [("denovo", 0)]
        else:
            if flow.task != "csp":
                raise ValueError(f"model {str(model_path)!r} is a de novo model: use --de-novo")
            plan = [(f, z) for f in formulas
                    for z in _formula_units(f, args.formula_units, flow.size_counts)]
        cond = _condition(flow, asked)
    except ValueError as err:
        return _fail("generate", err)
    names = {(f, z, k): out / (f"denovo_{k}.cif" if args.de_novo
                               else f"{_safe_name(f)}_Z{z}_{k}.cif")
             for f, z in plan for k in range(args.num_samples)}
    existing = [str(p) for p in names.values() if p.exists()]
    if existing and not args.force:
        return _fail("generate", f"{len(existing)} output files exist (e.g. {existing[0]}); "
                     "pass --force to overwrite them")
    steps = args.steps or int(flow.info.get("sample_steps", 100))
    slope = (args.anneal_slope if args.anneal_slope is not None
             else float(flow.info.get("anneal_slope", 0.0)))
    from flowmatch.plugins.crystal.representation import batch_to_structures

    options = {"steps": steps, "method": args.method, "anneal_slope": slope,
               "time_power": float(flow.info.get("time_power", 1.0)),
               "progress": not args.quiet and sys.stderr.isatty(),
               "generator": torch.Generator(device=device).manual_seed(args.seed)}
    if cond is not None:
        options.update(cond=cond, guidance=args.guidance)
    if args.de_novo:
        batch = flow.sample_de_novo(args.num_samples, **options,
                                    elements=None if allowed is None else args.elements.split(","))
    else:
        tokens = [composition_tokens(f, formula_units=z) for f, z in plan
                  for _ in range(args.num_samples)]
        batch = flow.sample(tokens, **options)
    structures = batch_to_structures(batch)
    out.mkdir(parents=True, exist_ok=True)
    rows, written = [], []
    for i, (f, z) in enumerate(plan):
        for k in range(args.num_samples):
            s = structures[i * args.num_samples + k]
            path = names[(f, z, k)]
            if s is None:
                rows.append((f, z, k, "(could not be built)", "-", "-"))
                continue
            group = _write_cif(s, path, args.symprec)
            written.append(s)
            a, b, c = s.lattice.abc
            al, be, ga = s.lattice.angles
            shown, units = f, z
            if args.de_novo:  # the generated composition and its formula units
                shown, factor = s.composition.get_reduced_formula_and_factor()
                units = int(factor)
            rows.append((shown, units, k,
                         f"{a:.3f} {b:.3f} {c:.3f}; {al:.1f} {be:.1f} {ga:.1f}", group, str(path)))
    print(f"{'formula':12s} {'Z':>2s} {'#':>3s} {'cell: a b c (Å); α β γ (°)':38s} "
          f"{'space group':12s} file")
    for f, z, k, cell, group, path in rows:
        print(f"{f:12s} {z:2d} {k:3d} {cell:38s} {group:12s} {path}")
    calls = flow.nfe
    guided = "" if cond is None else (
        ", " + ", ".join(f"{k} = {v:g}" for k, v in asked.items())
        + f", guidance {args.guidance:g}")
    print(f"wrote {len(written)} CIF files to {out}/ ({steps} {args.method} steps: {calls} "
          f"network calls per structure, seed {args.seed}{guided})")
    if written and not args.no_png:
        png = out / "cells.png"
        if png.exists() and not args.force:
            print(f"not overwriting {png} (pass --force)")
        elif _draw_cells(written[:16], png):
            print(f"drew the cells in {png}")
    return 0 if written else 1


def _property_values(items: list[str]) -> dict[str, float]:
    """``["heat_ref=0.5", ...]`` → {"heat_ref": 0.5, ...}; malformed items are a ValueError."""
    import math

    values: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or not name or not math.isfinite(value):
            raise ValueError(f"--property takes NAME=VALUE with a finite number, got {item!r}")
        if name in values:
            raise ValueError(f"--property {name} given twice")
        values[name] = value
    return values


def _condition(flow, asked: dict[str, float]) -> list[float] | None:
    """The model's properties in its order, from ``asked``; None when nothing was asked."""
    if not asked:
        return None
    if not flow.properties:
        raise ValueError("the model is not conditional: --property needs a model trained "
                         "with `flowmatch crystal train --property NAME`")
    unknown = sorted(set(asked) - set(flow.properties))
    missing = [p for p in flow.properties if p not in asked]
    if unknown or missing:
        raise ValueError(f"the model is conditional on {list(flow.properties)}: give each once "
                         f"with --property NAME=VALUE"
                         + (f" (unknown: {unknown})" if unknown else "")
                         + (f" (missing: {missing})" if missing else ""))
    return [asked[p] for p in flow.properties]


def _write_cif(structure, path: Path, symprec: float) -> str:
    """Write ``structure`` as CIF with the symmetry found at ``symprec`` (P1 if none or 0)."""
    from pymatgen.io.cif import CifWriter
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    group = "P1"
    writer = None
    if symprec > 0:
        try:
            group = SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_symbol()
            writer = CifWriter(structure, symprec=symprec)
        except Exception:  # noqa: BLE001 - spglib fails on degenerate cells: write P1
            group, writer = "P1", None
    (writer or CifWriter(structure)).write_file(str(path))
    return group


def _draw_cells(structures, path: Path) -> bool:
    """A grid of 3-D views: each cell's edges and its atoms coloured by element."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        print("matplotlib is not installed: no cells.png (pip install matplotlib)")
        return False
    n = len(structures)
    cols = min(4, n)
    rows_ = (n + cols - 1) // cols
    fig = plt.figure(figsize=(3.2 * cols, 3.2 * rows_))
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8)
             if np.abs(corners[a] - corners[b]).sum() == 1]
    cmap = plt.get_cmap("tab10")
    for idx, s in enumerate(structures):
        ax = fig.add_subplot(rows_, cols, idx + 1, projection="3d")
        m = s.lattice.matrix
        cart = corners @ m
        for a, b in edges:
            ax.plot(*zip(cart[a], cart[b], strict=True), color="0.5", lw=0.8)
        species = sorted({str(site.specie) for site in s})
        for j, el in enumerate(species):
            pts = np.array([site.coords for site in s if str(site.specie) == el])
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=60, color=cmap(j % 10), label=el,
                       depthshade=False)
        ax.set_title(s.composition.reduced_formula, fontsize=9)
        ax.set_axis_off()
        ax.legend(fontsize=7, loc="upper left", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _read_structures(source: str):
    """Structures of a CDVAE CSV, a CIF file or a folder of CIFs."""
    from flowmatch.plugins.crystal.data import load_cdvae_csv
    from flowmatch.plugins.crystal.representation import batch_to_structures, structure_from_cif

    def read(f: Path):
        try:
            return structure_from_cif(f.read_text(errors="replace"))
        except ValueError as err:
            raise ValueError(f"{f}: {err}") from err

    path = Path(source)
    if path.is_dir():
        return [(f.name, read(f)) for f in sorted(path.glob("*.cif"))]
    if path.suffix.lower() == ".csv":
        import torch

        data = load_cdvae_csv(path)
        structures = batch_to_structures(data.batch(torch.arange(len(data)), dtype=torch.float64))
        return list(zip(data.ids, structures, strict=True))
    return [(path.name, read(path))]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.de_novo:
        return _cmd_evaluate_de_novo(args)
    given = [f"--{o.replace('_', '-')}" for o in ("training", "cutoffs", "jobs", "timeout")
             if getattr(args, o) is not None]
    if given:
        return _fail("evaluate", f"{', '.join(given)} applies to --de-novo evaluation")
    for name in ("generated", "reference"):
        if not Path(getattr(args, name)).exists():
            return _fail("evaluate", f"--{name} {getattr(args, name)!r} does not exist")
    if not Path(args.generated).is_dir():
        return _fail("evaluate", f"--generated {args.generated!r} must be a folder of CIF files")
    from flowmatch.plugins.crystal.metrics import (
        STANDARD_TOLERANCES,
        STRICT_TOLERANCES,
        csp_metrics,
    )

    try:
        generated = _read_structures(args.generated)
        references = _read_structures(args.reference)
    except Exception as err:  # noqa: BLE001 - pymatgen raises many types on bad files
        return _fail("evaluate", f"cannot read the structures: {err}")
    if not generated:
        return _fail("evaluate", f"no CIF files in {args.generated!r}")
    by_formula: dict[str, list] = {}
    for _, s in generated:
        by_formula.setdefault(s.composition.reduced_formula, []).append(s)
    refs = [(name, s) for name, s in references if s is not None]
    if args.only_generated:
        refs = [(n, s) for n, s in refs if s.composition.reduced_formula in by_formula]
    if not refs:
        return _fail("evaluate", "no reference structure to score")
    samples = [by_formula.get(s.composition.reduced_formula, []) for _, s in refs]
    targets = [s for _, s in refs]
    results = {name: csp_metrics(samples, targets, tolerances=tol)
               for name, tol in (("standard", STANDARD_TOLERANCES),
                                 ("strict", STRICT_TOLERANCES))}
    k = max(len(s) for s in samples)
    print(f"{len(refs)} reference crystals, {len(generated)} generated structures "
          f"(up to k = {k} per composition)")
    print(f"{'tolerances':12s} {'match %':>8s} {'RMSE':>8s} {'valid %':>8s}")
    for name, r in results.items():
        print(f"{name:12s} {100 * r.match_rate:8.2f} {r.rmse:8.4f} {100 * r.valid_fraction:8.1f}")
    if args.json:
        _write_json(Path(args.json),
                    {name: {"match_rate": r.match_rate, "rmse": r.rmse,
                            "valid_fraction": r.valid_fraction, "references": len(refs)}
                     for name, r in results.items()})
        print(f"wrote {args.json}")
    return 0


def _read_cif(path: Path):
    """(structure, None) for a readable CIF file, else (None, the reason in one line)."""
    from flowmatch.plugins.crystal.representation import structure_from_cif

    try:
        return structure_from_cif(path.read_text(errors="replace")), None
    except (OSError, ValueError) as err:
        return None, str(err).splitlines()[0] if str(err) else type(err).__name__


def _write_json(path: Path, data) -> None:
    """Write ``data`` as JSON atomically (a temporary file beside ``path``, then a rename)."""
    import json
    import os

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_json_path(text: str | None, force: bool = True) -> str | None:
    """Why ``--json text`` cannot be written (before any work is done), or None."""
    if text is None:
        return None
    path = Path(text)
    if path.is_dir():
        return f"--json {text!r} is a folder"
    if not path.parent.is_dir():
        return f"the folder of --json {text!r} does not exist"
    if path.exists() and not force:
        return f"--json {text!r} exists; pass --force to overwrite it"
    return None


def _finite_or_none(value):
    """JSON has no NaN: a NaN or infinite float becomes None."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cutoffs(text: str | None, reference: str) -> tuple[tuple[float, float], str]:
    """COV cutoffs from ``--cutoffs`` (a data set name or "S,C"), else from the data set named
    in the reference path, else MP-20's; and where they came from."""
    from flowmatch.plugins.crystal.dng_metrics import COV_CUTOFFS

    if text is None:
        for part in reversed(Path(reference).resolve().parts):
            name = part.lower().replace("-", "_")
            if name in COV_CUTOFFS:
                return COV_CUTOFFS[name], f"{name}, from the --reference path"
        return COV_CUTOFFS["mp_20"], "mp_20, the default; pass --cutoffs to choose"
    name = text.strip().lower().replace("-", "_")
    if name in COV_CUTOFFS:
        return COV_CUTOFFS[name], name
    try:
        pair = tuple(float(v) for v in text.split(","))
    except ValueError:
        pair = ()
    if len(pair) != 2 or not all(0 < v < float("inf") for v in pair):
        raise ValueError(f"--cutoffs must be one of {sorted(COV_CUTOFFS)} or two positive "
                         f"numbers STRUCTURE,COMPOSITION, got {text!r}")
    return (pair[0], pair[1]), "--cutoffs"


DNG_ROWS = (  # (DNGResult field, metric, unit, scale)
    ("structural_validity", "validity: structural", "%", 100),
    ("compositional_validity", "validity: compositional", "%", 100),
    ("validity", "valid (both + fingerprint)", "%", 100),
    ("uniqueness", "uniqueness (of valid)", "%", 100),
    ("novelty", "novelty (of valid)", "%", 100),
    ("unique_novel", "unique and novel (of valid)", "%", 100),
    ("density_w1", "density W1", "g/cm3", 1),
    ("num_elements_w1", "#elements W1", "elements", 1),
    ("cov_recall", "COV-R", "%", 100),
    ("cov_precision", "COV-P", "%", 100),
)


def _cmd_evaluate_de_novo(args: argparse.Namespace) -> int:
    if args.only_generated:
        return _fail("evaluate", "--only-generated applies to structure prediction, not "
                     "--de-novo")
    if not args.training:
        return _fail("evaluate", "--de-novo needs --training SOURCE [SOURCE ...]: the training "
                     "crystals, against which novelty is measured")
    for name, value in [("generated", args.generated), ("reference", args.reference),
                        *(("training", t) for t in args.training)]:
        if not Path(value).exists():
            return _fail("evaluate", f"--{name} {value!r} does not exist")
    if not Path(args.generated).is_dir():
        return _fail("evaluate", f"--generated {args.generated!r} must be a folder of CIF files")
    problem = _check_json_path(args.json)
    if problem:
        return _fail("evaluate", problem)
    try:
        cutoffs, cutoff_source = _cutoffs(args.cutoffs, args.reference)
    except ValueError as err:
        return _fail("evaluate", err)
    files = sorted(Path(args.generated).glob("*.cif"))
    if not files:
        return _fail("evaluate", f"no CIF files in {args.generated!r}")
    samples, unreadable = [], []
    for f in files:
        s, reason = _read_cif(f)
        samples.append(s)
        if reason is not None:
            unreadable.append({"file": f.name, "reason": reason})
    try:
        references = [s for _, s in _read_structures(args.reference) if s is not None]
        training = [s for t in args.training for _, s in _read_structures(t) if s is not None]
    except Exception as err:  # noqa: BLE001 - pymatgen raises many types on bad files
        return _fail("evaluate", f"cannot read the structures: {err}")
    if not references:
        return _fail("evaluate", f"no reference structure in {args.reference!r}")
    if not training:
        return _fail("evaluate", "no training structure in --training")
    import time

    from flowmatch.plugins.crystal.dng_metrics import cached_fingerprints, dng_metrics

    jobs, timeout = args.jobs or 1, args.timeout or 30.0
    if sys.stderr.isatty():  # fingerprints of a few thousand references take minutes
        print(f"scoring {len(samples)} samples against {len(references)} reference and "
              f"{len(training)} training crystals ({jobs} process{'es' * (jobs > 1)}) ...",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        # the reference set's fingerprints are cached: the next evaluation against it is fast
        reference_fp = cached_fingerprints(references, args.reference, jobs=jobs,
                                           timeout=timeout)
        r = dng_metrics(samples, references, training, cutoffs=cutoffs, jobs=jobs,
                        timeout=timeout, reference_fingerprints=reference_fp)
    except ValueError as err:
        return _fail("evaluate", err)
    seconds = time.perf_counter() - start
    print(f"{len(samples)} generated structures, {len(references)} reference crystals, "
          f"{len(training)} training crystals (the novelty reference); COV cutoffs "
          f"{cutoffs[0]:g} / {cutoffs[1]:g} ({cutoff_source})")
    for u in unreadable[:5]:
        print(f"  unreadable, counted invalid: {u['file']}: {u['reason']}")
    if len(unreadable) > 5:
        print(f"  ... and {len(unreadable) - 5} more unreadable CIF files, counted invalid")
    print(f"{'metric':30s} {'value':>8s}  unit")
    for name, metric, unit, scale in DNG_ROWS:
        value = scale * getattr(r, name)
        shown = (f"{'—':>8s}" if value != value
                 else f"{value:8.3f}" if "W1" in metric else f"{value:8.2f}")
        print(f"{metric:30s} {shown}  {unit}")
    print(f"{r.valid} of {r.samples} samples valid; uniqueness and novelty over "
          f"{r.un_samples}, property distances over {r.property_samples}; scored in "
          f"{seconds:.1f} s")
    notes = [f"{n} {what}" for n, what in ((r.fingerprint_failures, "without a fingerprint"),
                                           (r.degenerate, "degenerate cells not compared"),
                                           (r.matcher_timeouts, "matcher comparisons timed out"))
             if n]
    if notes:
        print("note: " + "; ".join(notes))
    if args.json:
        from dataclasses import asdict

        metrics = {k: _finite_or_none(v) for k, v in asdict(r).items()}
        _write_json(Path(args.json), {
            "protocol": "de_novo", "generated": args.generated, "reference": args.reference,
            "training": args.training, "reference_crystals": len(references),
            "training_crystals": len(training), "cutoffs": list(cutoffs),
            "cutoffs_source": cutoff_source, "unreadable": unreadable, "metrics": metrics})
        print(f"wrote {args.json}")
    return 0


def _cmd_relax(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        return _fail("relax", f"DIR {args.dir!r} {what}")
    out = Path(args.out) if args.out else folder / "relaxed"
    if out.exists() and not out.is_dir():
        return _fail("relax", f"--out {str(out)!r} exists and is not a folder")
    if out.resolve() == folder.resolve():
        return _fail("relax", "--out must differ from DIR (the relaxed CIFs would replace the "
                     "inputs)")
    files = sorted(folder.glob("*.cif"),  # natural order: denovo_2 before denovo_10
                   key=lambda f: [(0, int(t), "") if t.isdigit() else (1, 0, t)
                                  for t in re.split(r"(\d+)", f.name)])[:args.limit]
    if not files:
        return _fail("relax", f"no CIF files in {args.dir!r}")
    targets = [out / f.name for f in files]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.force:
        return _fail("relax", f"{len(existing)} output files exist (e.g. {existing[0]}); "
                     "pass --force to overwrite them")
    problem = _check_json_path(args.json, args.force)
    if problem:
        return _fail("relax", problem)
    from flowmatch.cli import resolve_device

    device = resolve_device("crystal relax", args.device)
    if device is None:
        return 2
    from flowmatch.plugins.crystal.stability import (
        NO_HULL_NOTE,
        Relaxation,
        load_potential,
        relax_structure,
        summarize,
    )

    try:
        load_potential(str(device))
    except ImportError as err:
        return _fail("relax", err)
    except Exception as err:  # noqa: BLE001 - CHGNet fails in many ways on an odd device
        return _fail("relax", f"cannot load CHGNet on {device}: {err}".splitlines()[0])
    from tqdm.auto import tqdm

    width = min(40, max(4, *(len(f.name) for f in files)))
    bar = tqdm(files, desc="relaxing", unit="structure", file=sys.stderr,
               disable=args.quiet or not sys.stderr.isatty())
    bar.write(f"{'file':{width}s} {'E before':>9s} {'E after':>9s} {'RMSD':>7s} {'ΔV':>7s}  "
              "stable   (E: eV/atom, RMSD: Å, ΔV: %)")
    results, records, written = [], [], []
    for f, target in zip(bar, targets, strict=True):
        structure, reason = _read_cif(f)
        if reason is not None:
            r = Relaxation(reason=reason)
        else:
            r = relax_structure(structure, steps=args.steps, fmax=args.fmax,
                                timeout=args.timeout, threshold=args.threshold,
                                device=str(device))
        results.append(r)
        record = {"file": f.name, **r.as_dict(), "relaxed_cif": None}
        del record["structure"]
        if r.ok:
            try:
                out.mkdir(parents=True, exist_ok=True)
                record["space_group"] = _write_cif(r.structure, target, args.symprec)
                record["relaxed_cif"] = str(target)
                written.append(target)
            except Exception as err:  # noqa: BLE001 - keep the numbers, say what failed
                record["write_error"] = str(err).splitlines()[0] if str(err) else repr(err)
            bar.write(f"{f.name:{width}s} {r.energy_before:9.4f} {r.energy_after:9.4f} "
                      f"{r.rmsd:7.4f} {100 * r.volume_change:+7.2f}  "
                      f"{'yes' if r.stable else 'no'}"
                      + ("" if r.converged else f" (not converged in {r.steps} steps)"))
        else:
            bar.write(f"{f.name:{width}s} {'-':>9s} {'-':>9s} {'-':>7s} {'-':>7s}  "
                      f"failed: {r.reason}")
        records.append(record)
    bar.close()
    summary = summarize(results)

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(f"relaxed {summary['n_relaxed']} of {summary['n']} structures "
          f"({summary['n_converged']} converged below fmax {args.fmax:g} eV/Å, "
          f"{summary['n_failed']} failed)")
    if summary["n_relaxed"]:
        stable = sum(bool(r.stable) for r in results)
        print(f"stable (RMSD < {args.threshold:g} Å): {stable} of {summary['n']} = "
              f"{100 * summary['stable_fraction']:.1f} % "
              f"({100 * summary['stable_fraction_of_relaxed']:.1f} % of the relaxed)")
        print(f"median energy {fmt(summary['median_energy_before'], '.4f')} -> "
              f"{fmt(summary['median_energy_after'], '.4f')} eV/atom (median drop "
              f"{fmt(summary['median_energy_drop'], '.4f')}), median RMSD "
              f"{fmt(summary['median_rmsd'], '.4f')} Å, median |ΔV| "
              f"{fmt(100 * summary['median_abs_volume_change'], '.2f')} %")
    print(f"note: {NO_HULL_NOTE}")
    if written:
        print(f"wrote {len(written)} relaxed CIF files to {out}/")
    if args.json:
        settings = {k: getattr(args, k) for k in ("steps", "fmax", "timeout", "threshold",
                                                   "symprec", "limit")}
        _write_json(Path(args.json), {"dir": str(folder), "out": str(out),
                                      "device": str(device), "settings": settings,
                                      "files": records, "summary": summary})
        print(f"wrote {args.json}")
    return 0 if summary["n_relaxed"] else 1


def _cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.parent != Path("") and not out.parent.exists():
        return _fail("train", f"the folder of --out {str(out)!r} does not exist")
    if out.exists() and not args.force:
        return _fail("train", f"--out {str(out)!r} exists; pass --force to overwrite it")
    missing = [d for d in args.data if not Path(d).is_file()]
    if missing:
        return _fail("train", f"data files not found: {missing}")
    if args.init is not None and not Path(args.init).is_file():
        return _fail("train", f"--init model {args.init!r} does not exist")
    import torch

    from flowmatch.plugins.crystal.csp import CrystalFlow
    from flowmatch.plugins.crystal.data import CrystalSet, load_cdvae_csv

    if args.threads:
        torch.set_num_threads(args.threads)
    from flowmatch.cli import resolve_device

    device = resolve_device("crystal train", args.device)
    if device is None:
        return 2
    try:
        data = CrystalSet.concat([load_cdvae_csv(d, progress=not args.quiet)
                                  for d in args.data])
    except ValueError as err:
        return _fail("train", err)
    torch.manual_seed(args.seed)
    properties = args.property or []
    try:
        if args.init is not None:
            flow = CrystalFlow.load(args.init)
            if properties:
                flow = flow.conditioned_on(data, properties)
        else:
            flow = CrystalFlow.for_data(data, task="de_novo" if args.de_novo else "csp",
                                        hidden=args.hidden, layers=args.layers, net=args.net,
                                        properties=properties)
        result = flow.train(data, steps=args.steps, batch_size=args.batch, lr=args.lr,
                            seed=args.seed, time_power=args.time_power, device=device,
                            budget_s=args.budget, cond_dropout=args.cond_dropout,
                            progress=not args.quiet and sys.stderr.isatty())
    except ValueError as err:
        return _fail("train", err)
    from flowmatch.training.distributed import is_main_process

    if is_main_process():  # under torchrun every rank holds the same weights: one writes
        flow.save(out)
        print(f"trained on {len(data)} crystals for {result.steps} steps in "
              f"{result.seconds:.0f} s on {device}; wrote {out}")
    return 0

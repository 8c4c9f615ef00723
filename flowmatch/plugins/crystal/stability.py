"""A stability proxy for crystals: relax with the pretrained CHGNet potential and see how far
the structure moves and how its energy drops.

This is the offline substitute for the energy above the Materials Project convex hull used by
FlowMM / MatterGen: no MP reference energies are available here, so **no hull energy is
computed**. Report these numbers beside the same proxy run on real test crystals, never beside
published E_hull figures.

Per structure (:func:`relax_structure`):

* energy per atom (eV/atom, CHGNet 0.3.0, MPtrj-compatible total energy / number of sites)
  before and after relaxation;
* the RMSD (Å) between the generated and the relaxed structure. Relaxation keeps the sites and
  their order, so no matching is needed: each site's fractional displacement is wrapped to the
  nearest periodic image, taken to Cartesian with the *relaxed* lattice, and the mean
  displacement (a rigid translation) is removed; RMSD = sqrt(mean |Δ|²). Cell strain alone does
  not count as atomic motion — it is reported separately as the relative volume change;
* ``stable``: RMSD below ``threshold`` (default :data:`RMSD_THRESHOLD` = 0.1 Å, a tenth of a
  typical bond-length change that a relaxation of a near-equilibrium crystal stays well under).

Relaxation: ASE FIRE on positions and cell (``FrechetCellFilter``) until the largest force is
below ``fmax`` (eV/Å) or ``steps`` steps, bounded by ``timeout`` seconds of wall time.

Failures never raise: a structure that is None, has atoms closer than ``min_distance`` Å, cannot
be evaluated, gives non-finite energies or runs past ``timeout`` yields a :class:`Relaxation`
whose numbers are None and whose ``reason`` says why.

CHGNet (``pip install 'flowmatch[crystal]'`` or ``pip install chgnet``) ships its weights inside
the wheel (``chgnet/pretrained/``): nothing is downloaded at first use.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure

RMSD_THRESHOLD = 0.1  # Å: "moved less than this" counts as stable under the proxy
MODEL_NAME = "0.3.0"
NO_HULL_NOTE = ("proxy only: CHGNet relaxation energy/RMSD; no Materials Project convex hull is "
                "available offline, so no energy above hull is reported")


@dataclass
class Relaxation:
    """The outcome of relaxing one structure; numbers are None when ``reason`` is set."""

    energy_before: float | None = None  # eV/atom
    energy_after: float | None = None  # eV/atom
    rmsd: float | None = None  # Å, see the module docstring
    volume_change: float | None = None  # (V_relaxed − V) / V
    stable: bool | None = None  # rmsd < threshold
    converged: bool | None = None  # max force < fmax within ``steps``
    steps: int | None = None
    seconds: float = 0.0
    structure: Structure | None = None  # the relaxed structure
    reason: str | None = None  # why it failed; None on success

    @property
    def ok(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the relaxed structure as pymatgen's dict, or None)."""
        out = {k: getattr(self, k) for k in ("energy_before", "energy_after", "rmsd",
                                             "volume_change", "stable", "converged", "steps",
                                             "seconds", "reason")}
        out["structure"] = None if self.structure is None else self.structure.as_dict()
        return out


def _import_chgnet():
    try:
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the crystal stability proxy needs CHGNet: pip install 'flowmatch[crystal]' "
            "(or pip install 'chgnet>=0.4')") from exc
    return CHGNet, CHGNetCalculator


@lru_cache(maxsize=4)
def load_potential(device: str = "cpu", model_name: str = MODEL_NAME):
    """The pretrained CHGNet as an ASE calculator (cached; weights read from the wheel)."""
    CHGNet, CHGNetCalculator = _import_chgnet()
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its device
        model = CHGNet.load(model_name=model_name, use_device=device, verbose=False)
        return CHGNetCalculator(model=model, use_device=device, on_isolated_atoms="ignore")


def displacement_rmsd(before: Structure, after: Structure) -> float:
    """RMS per-site displacement (Å) between two structures with the same sites in the same
    order: fractional differences wrapped to [−½, ½), in the lattice of ``after``, with the
    mean (rigid) translation removed."""
    if len(before) != len(after):
        raise ValueError(f"different numbers of sites: {len(before)} and {len(after)}")
    df = after.frac_coords - before.frac_coords
    df -= np.round(df)
    cart = df @ after.lattice.matrix
    cart -= cart.mean(axis=0)
    return float(np.sqrt((cart ** 2).sum(axis=1).mean()))


class _Timeout(Exception):
    pass


def _min_distance(structure: Structure) -> float:
    if len(structure) == 1:
        return float(min(structure.lattice.abc))
    d = np.asarray(structure.distance_matrix, dtype=float)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def relax_structure(structure: Structure | None, *, steps: int = 500, fmax: float = 0.1,
                    timeout: float | None = 60.0, threshold: float = RMSD_THRESHOLD,
                    min_distance: float = 0.5, device: str = "cpu") -> Relaxation:
    """Relax one structure with CHGNet (see the module docstring); never raises on bad input."""
    with warnings.catch_warnings():
        # CHGNet converts a tensor that requires grad to a scalar internally: harmless
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
        return _relax(structure, steps=steps, fmax=fmax, timeout=timeout, threshold=threshold,
                      min_distance=min_distance, device=device)


def _relax(structure: Structure | None, *, steps: int, fmax: float, timeout: float | None,
           threshold: float, min_distance: float, device: str) -> Relaxation:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    calc = load_potential(device)  # an ImportError here is the caller's to see
    start = time.perf_counter()

    def failed(reason: str) -> Relaxation:
        return Relaxation(seconds=time.perf_counter() - start, reason=reason)

    if structure is None:
        return failed("no structure (could not be built)")
    try:
        n = len(structure)
        if n == 0:
            return failed("empty structure")
        volume = float(structure.volume)
        if not math.isfinite(volume) or volume < 0.1:
            return failed(f"degenerate cell (volume {volume:.3g} Å³)")
        if volume / n > 1e4:
            return failed(f"cell too dilute ({volume / n:.3g} Å³/atom)")
        dmin = _min_distance(structure)
        if not dmin >= min_distance:
            return failed(f"atoms {dmin:.3g} Å apart (< {min_distance} Å)")
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calc
        e0 = float(atoms.get_potential_energy()) / n
        if not math.isfinite(e0):
            return failed("non-finite initial energy")
        filtered = FrechetCellFilter(atoms)
        opt = FIRE(filtered, logfile=None)

        def check_time() -> None:
            if timeout is not None and time.perf_counter() - start > timeout:
                raise _Timeout

        opt.attach(check_time, interval=1)
        converged = bool(opt.run(fmax=fmax, steps=steps))
        e1 = float(atoms.get_potential_energy()) / n
        if not math.isfinite(e1) or not np.isfinite(atoms.positions).all():
            return failed("non-finite energy or positions during relaxation")
        relaxed = AseAtomsAdaptor.get_structure(atoms)
        rmsd = displacement_rmsd(structure, relaxed)
        return Relaxation(energy_before=e0, energy_after=e1, rmsd=rmsd,
                          volume_change=float(relaxed.volume) / volume - 1.0,
                          stable=rmsd < threshold, converged=converged,
                          steps=int(opt.nsteps), seconds=time.perf_counter() - start,
                          structure=relaxed)
    except _Timeout:
        return failed(f"relaxation ran past the {timeout} s timeout")
    except Exception as exc:  # noqa: BLE001 - one bad crystal must not end a batch
        return failed(f"{type(exc).__name__}: {exc}"[:300])


def relax_structures(structures: Sequence[Structure | None], *, steps: int = 500,
                     fmax: float = 0.1, timeout: float | None = 60.0,
                     threshold: float = RMSD_THRESHOLD, min_distance: float = 0.5,
                     device: str = "cpu") -> list[Relaxation]:
    """:func:`relax_structure` of each structure, in order (one shared CHGNet)."""
    return [relax_structure(s, steps=steps, fmax=fmax, timeout=timeout, threshold=threshold,
                            min_distance=min_distance, device=device) for s in structures]


def summarize(results: Sequence[Relaxation]) -> dict[str, Any]:
    """Median energies/atom, mean and median RMSD, the fraction below the threshold (over all
    structures, failures counting as not stable, and over the relaxed ones), failure counts."""
    ok = [r for r in results if r.ok]
    n = len(results)

    def median(xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None

    rmsd = [r.rmsd for r in ok]
    return {
        "n": n,
        "n_relaxed": len(ok),
        "n_failed": n - len(ok),
        "n_converged": sum(bool(r.converged) for r in ok),
        "median_energy_before": median([r.energy_before for r in ok]),
        "median_energy_after": median([r.energy_after for r in ok]),
        "median_energy_drop": median([r.energy_before - r.energy_after for r in ok]),
        "mean_rmsd": statistics.fmean(rmsd) if rmsd else None,
        "median_rmsd": median(rmsd),
        "median_abs_volume_change": median([abs(r.volume_change) for r in ok]),
        "stable_fraction": sum(bool(r.stable) for r in ok) / n if n else None,
        "stable_fraction_of_relaxed": (sum(bool(r.stable) for r in ok) / len(ok)
                                       if ok else None),
        "median_seconds": median([r.seconds for r in results]),
        "failure_reasons": sorted({r.reason for r in results if r.reason}),
        "note": NO_HULL_NOTE,
    }

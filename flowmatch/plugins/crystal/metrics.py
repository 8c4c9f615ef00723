"""Crystal evaluation as the community computes it (CDVAE → DiffCSP → FlowMM).

* **Structural validity**: every interatomic distance (over periodic images, excluding an atom
  with itself) ≥ 0.5 Å and cell volume ≥ 0.1 Å³.
* **Compositional validity** (SMACT): some assignment of the elements' known oxidation states is
  charge-neutral for the reduced stoichiometry and passes the Pauling electronegativity test;
  single-element compositions and all-metal compositions count as valid; compositions with more
  than 1e7 oxidation-state combinations are given up on (invalid).
* **CSP match**: ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``; a prediction matches its
  ground truth when both are valid and ``get_rms_dist`` returns a value. Match rate = matched /
  all test crystals; RMSE = mean rms over matched crystals (pymatgen normalises by (V/N)^(1/3)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Composition, Structure

__all__ = ["CSPResult", "compositional_validity", "csp_metrics", "match_rms",
           "structural_validity"]

STANDARD_TOLERANCES = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}
STRICT_TOLERANCES = {"stol": 0.3, "angle_tol": 5.0, "ltol": 0.2}
_MAX_COMBINATIONS = 10_000_000


def structural_validity(structure: Structure | None, *, cutoff: float = 0.5,
                        min_volume: float = 0.1) -> bool:
    """Smallest distance between distinct atoms (periodic images included) ≥ ``cutoff`` Å
    and volume ≥ ``min_volume`` Å³; False for None (a crystal that could not be built)."""
    if structure is None or not math.isfinite(structure.volume) or \
            structure.volume < min_volume:
        return False
    if len(structure) == 1:
        # a lone atom only meets its own periodic images: the shortest lattice vector
        return float(min(structure.lattice.abc)) >= cutoff
    d = np.asarray(structure.distance_matrix)
    d = d + np.diag(np.full(len(structure), np.inf))
    return bool(d.min() >= cutoff)


def compositional_validity(composition: Composition | str) -> bool:
    """SMACT charge neutrality + Pauling test (see the module docstring)."""
    import smact
    from pymatgen.core import Composition
    from smact.screening import pauling_test

    comp = Composition(composition) if isinstance(composition, str) else composition
    symbols = [el.symbol for el in comp.elements]
    if len(symbols) == 1:
        return True
    counts = [int(round(comp[el])) for el in comp.elements]
    divisor = math.gcd(*counts)
    stoichs = [(c // divisor,) for c in counts]
    threshold = max(c for (c,) in stoichs)
    if all(s in smact.metals for s in symbols):
        return True
    elements = [smact.Element(s) for s in symbols]
    electronegs = [e.pauling_eneg for e in elements]
    ox_states = [e.oxidation_states for e in elements]
    if math.prod(len(o) for o in ox_states) > _MAX_COMBINATIONS:
        return False
    for ox in itertools.product(*ox_states):
        ratios = smact.neutral_ratios(ox, stoichs=stoichs, threshold=threshold)
        # SMACT 4 returns the list of neutral ratios, older releases a (bool, list) pair
        if (ratios[0] if isinstance(ratios, tuple) else bool(ratios)):
            if any(e is None for e in electronegs):
                continue
            if pauling_test(ox, electronegs):
                return True
    return False


def match_rms(pred: Structure | None, target: Structure, *, tolerances: dict | None = None
              ) -> float | None:
    """RMS distance of ``pred`` to ``target`` under the matcher, or None when unmatched."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if pred is None:
        return None
    matcher = StructureMatcher(**(tolerances or STANDARD_TOLERANCES))
    try:
        rms = matcher.get_rms_dist(pred, target)
    except Exception:  # noqa: BLE001 - the matcher fails on degenerate cells: unmatched
        return None
    return None if rms is None else float(rms[0])


@dataclass
class CSPResult:
    """Match rate (fraction of all test crystals matched), RMSE over the matched ones, the
    fraction of valid predictions, and the per-crystal rms (None = unmatched)."""

    match_rate: float
    rmse: float
    valid_fraction: float
    rms: list[float | None]


def csp_metrics(predictions: Sequence[Sequence[Structure | None]],
                targets: Sequence[Structure], *, tolerances: dict | None = None) -> CSPResult:
    """Match rate and RMSE of k samples per test crystal (k = 1 or k = 20 in the papers).

    ``predictions[i]`` holds the k samples for ``targets[i]``; the crystal's rms is the minimum
    over its valid samples that match. A sample or target that is not valid (structurally and
    compositionally) never matches.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"predictions ({len(predictions)}) and targets ({len(targets)}) must "
                         "have one entry per test crystal")
    rms: list[float | None] = []
    valid = total = 0
    for samples, target in zip(predictions, targets, strict=True):
        target_ok = structural_validity(target) and compositional_validity(target.composition)
        best = None
        for s in samples:
            total += 1
            ok = structural_validity(s) and compositional_validity(s.composition)
            valid += ok
            if ok and target_ok:
                r = match_rms(s, target, tolerances=tolerances)
                if r is not None and (best is None or r < best):
                    best = r
        rms.append(best)
    matched = [r for r in rms if r is not None]
    return CSPResult(match_rate=len(matched) / max(len(targets), 1),
                     rmse=float(np.mean(matched)) if matched else math.nan,
                     valid_fraction=valid / max(total, 1), rms=rms)

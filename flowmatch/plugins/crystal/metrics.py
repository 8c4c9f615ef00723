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
    try:
        if len(structure) == 1:
            # a lone atom only meets its own periodic images: the shortest lattice vector
            return float(min(structure.lattice.abc)) >= cutoff
        d = np.asarray(structure.distance_matrix)
    except (ArithmeticError, ValueError, np.linalg.LinAlgError):
        # pymatgen's LLL reduction overflows on absurd generated cells: not a valid crystal
        return False
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
    # an element without oxidation states (a noble gas: SMACT gives None, older releases [])
    # admits no neutral assignment
    ox_states = [e.oxidation_states or () for e in elements]
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


def _aspect(structure: Structure) -> float:
    lengths = structure.lattice.abc
    return max(lengths) / min(lengths)


def _hopeless(pred: Structure, target: Structure) -> bool:
    """True for a predicted cell that no tolerance of the protocol can match: an aspect ratio
    (longest / shortest cell vector) ten times the target's, or larger than 1e3, or a volume per
    atom beyond 1e4 Å³. Such cells come from diverged samples, and StructureMatcher's lattice
    search on them can exhaust memory; ltol ≤ 0.3 bounds how far matching lengths may differ."""
    try:
        ratio, reference = _aspect(pred), _aspect(target)
        per_atom = pred.volume / max(len(pred), 1)
    except (ArithmeticError, ValueError):
        return True
    return not (math.isfinite(ratio) and ratio < 1e3 and ratio < 10 * reference
                and reference < 10 * ratio and per_atom < 1e4)


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Timeout


def match_rms(pred: Structure | None, target: Structure, *, tolerances: dict | None = None,
              timeout: float | None = None) -> float | None:
    """RMS distance of ``pred`` to ``target`` under the matcher, or None when unmatched.

    ``timeout`` (seconds) bounds one comparison: StructureMatcher can hang on degenerate cells,
    and a pair that takes longer counts as unmatched. It uses SIGALRM, so it applies in the
    main thread of a process (worker processes included) on Unix, and is ignored elsewhere.
    """
    import signal
    import threading

    from pymatgen.analysis.structure_matcher import StructureMatcher

    if pred is None or _hopeless(pred, target):
        return None
    matcher = StructureMatcher(**(tolerances or STANDARD_TOLERANCES))
    use_alarm = (timeout is not None and hasattr(signal, "setitimer")
                 and threading.current_thread() is threading.main_thread())
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        rms = matcher.get_rms_dist(pred, target)
    except _Timeout:
        return None
    except Exception:  # noqa: BLE001 - the matcher fails on degenerate cells: unmatched
        return None
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return None if rms is None else float(rms[0])


def _match_task(args: tuple) -> float | None:
    pred, target, tolerances, timeout = args
    return match_rms(pred, target, tolerances=tolerances, timeout=timeout)


@dataclass
class CSPResult:
    """Match rate (fraction of all test crystals matched), RMSE over the matched ones, the
    fraction of valid predictions, and the per-crystal rms (None = unmatched)."""

    match_rate: float
    rmse: float
    valid_fraction: float
    rms: list[float | None]


def csp_metrics(predictions: Sequence[Sequence[Structure | None]],
                targets: Sequence[Structure], *, tolerances: dict | None = None,
                jobs: int = 1, timeout: float | None = 60.0) -> CSPResult:
    """Match rate and RMSE of k samples per test crystal (k = 1 or k = 20 in the papers).

    ``predictions[i]`` holds the k samples for ``targets[i]``; the crystal's rms is the minimum
    over its valid samples that match. A sample or target that is not valid (structurally and
    compositionally) never matches. ``jobs`` > 1 runs the comparisons in that many processes;
    ``timeout`` bounds each comparison (seconds; None: no bound).
    """
    if len(predictions) != len(targets):
        raise ValueError(f"predictions ({len(predictions)}) and targets ({len(targets)}) must "
                         "have one entry per test crystal")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    comp_ok: dict = {}

    def valid(s: Structure | None) -> bool:
        if not structural_validity(s):
            return False
        key = s.composition.reduced_formula
        if key not in comp_ok:
            comp_ok[key] = compositional_validity(s.composition)
        return comp_ok[key]

    tasks, owners = [], []
    valid_count = total = 0
    for i, (samples, target) in enumerate(zip(predictions, targets, strict=True)):
        target_ok = valid(target)
        for s in samples:
            total += 1
            ok = valid(s)
            valid_count += ok
            if ok and target_ok:
                tasks.append((s, target, tolerances, timeout))
                owners.append(i)
    if jobs > 1 and len(tasks) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")) as pool:
            results = list(pool.map(_match_task, tasks, chunksize=max(1, len(tasks) // (8 * jobs))))
    else:
        results = [_match_task(t) for t in tasks]
    rms: list[float | None] = [None] * len(targets)
    for i, r in zip(owners, results, strict=True):
        if r is not None and (rms[i] is None or r < rms[i]):
            rms[i] = r
    matched = [r for r in rms if r is not None]
    return CSPResult(match_rate=len(matched) / max(len(targets), 1),
                     rmse=float(np.mean(matched)) if matched else math.nan,
                     valid_fraction=valid_count / max(total, 1), rms=rms)

"""De novo generation (DNG) metrics as the community computes them (CDVAE → DiffCSP → FlowMM).

N generated crystals (10,000 in the papers) are scored against the test split (the
*reference*) and the training crystals:

* **Validity**, over all N samples: structural (every interatomic distance ≥ 0.5 Å, volume
  ≥ 0.1 Å³; a crystal that could not be built is invalid) and compositional (SMACT), both from
  :mod:`~flowmatch.plugins.crystal.metrics`. A sample is *valid* when it is both and its
  CrystalNN fingerprint can be computed (CDVAE's evaluation marks a crystal whose fingerprint
  fails invalid, and so does DiffCSP's).
* **Uniqueness** and **novelty**, over the *valid* samples (chosen here: an invalid crystal
  is not counted as a new material; times the validity, each is a rate over all samples):
  ``StructureMatcher()`` with its defaults (ltol 0.2, stol 0.3, angle_tol 5°, primitive
  cells, volumes scaled). Samples are
  grouped as pymatgen's ``group_structures`` groups them — in sample order, a sample joins the
  group of the first earlier representative that matches it (``fit(representative, sample)``),
  else it starts a group; uniqueness = groups / valid samples. Novelty = the fraction of valid
  samples that match no training crystal (``fit(sample, training)``).
* **Property distances**: Wasserstein-1 distances between 1,000 valid samples drawn at random
  (seeded, without replacement; all of them when fewer are valid) and *all* reference crystals,
  of the density (g/cm³) and of the number of distinct elements.
* **Coverage** (COV-R, recall; COV-P, precision), CDVAE's ``compute_cov``: the structure
  fingerprint of a crystal is the mean over its sites of matminer's CrystalNN fingerprint
  (preset "ops", 61 numbers), the composition fingerprint its Magpie features (132 numbers)
  z-scored with CDVAE's fixed scaler (:mod:`._magpie_scale`). A reference crystal is recalled
  when *some* sample lies within the structure cutoff and *some* sample (not necessarily the
  same one) within the composition cutoff — the two minima are taken separately, as in the
  published code; precision is the same test from each sample's side, divided by all N samples
  (a sample without a fingerprint counts as a miss). Euclidean distances; cutoffs
  :data:`COV_CUTOFFS` (perov-5 and carbon-24 0.2 / 4, MP-20 0.4 / 10).

Bounding the cost. StructureMatcher only matches crystals with the same reduced composition
and — after it reduces both to Niggli-reduced primitive cells — the same number of sites, so
each crystal is reduced once (pymatgen's own reduction, then ``fit(...,
skip_structure_reduction=True)``, exactly as ``group_structures`` does) and compared only
inside its (reduced formula, primitive site count) bucket: an exact filter, not a heuristic.
Inside a bucket a second exact test skips pairs that cannot match: ``fit(s1, s2)`` (both
scaled to one volume) looks for a basis of s1's lattice whose lengths lie within a factor
1 + ltol of s2's Niggli lengths a2 ≤ b2 ≤ c2; the k-th shortest vector of any basis is at
least the k-th successive minimum λ_k, and a Niggli cell's lengths are the successive minima,
so a match needs λ_k(s1) < (1 + ltol)·λ_k(s2) in volume-normalised units for k = 1, 2, 3
(tested with a 0.1 % margin). On 120 carbon-24 test crystals against its val.csv it skipped
18,073 of 39,244 same-bucket pairs and none of their 2,925 matches. Cells with an aspect ratio
(longest / shortest Niggli vector) above 1e3 are never compared (diverged samples, on which
the matcher's lattice search can exhaust memory; such a sample counts as unique and novel and
is reported in ``degenerate``). Every comparison and fingerprint has a ``timeout`` (seconds,
SIGALRM, Unix main thread); one that runs out counts as "no match" / "no fingerprint" and is
reported. ``jobs`` > 1 forks that many processes.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowmatch.plugins.crystal.metrics import compositional_validity, structural_validity

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Composition, Structure

    from flowmatch.geometry import ProductPoint

__all__ = ["COV_CUTOFFS", "PROPERTY_SAMPLES", "DNGResult", "UniqueNovel", "batch_compositions",
           "composition_fingerprint", "coverage", "dng_metrics", "fingerprints",
           "property_distances", "reduce_for_matching", "scale_composition_fingerprints",
           "structure_fingerprint", "unique_novel", "validity"]

COV_CUTOFFS = {"perov_5": (0.2, 4.0), "carbon_24": (0.2, 4.0), "mp_20": (0.4, 10.0)}
"""(structure, composition) fingerprint-distance cutoffs of COV-R / COV-P per data set."""
PROPERTY_SAMPLES = 1000
"""Valid samples drawn for the Wasserstein-1 property distances."""
STRUCTURE_FP_SIZE = 61
COMPOSITION_FP_SIZE = 132
MAX_ASPECT = 1e3
"""Niggli cells with a longer/shorter vector ratio above this are never compared."""


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException, so library code catching Exception lets it pass."""


@contextmanager
def _time_limit(seconds: float | None):
    """Raise :class:`_Timeout` if the body runs longer than ``seconds`` (no limit for None, off
    the main thread, or where SIGALRM does not exist)."""
    if seconds is None or not hasattr(signal, "setitimer") or \
            threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- worker processes --------------------------------------------------------------------------
# Data for the workers lives in _STATE, set before the pool forks, so that tasks are indices
# and nothing large is pickled per task.
_STATE: dict[str, Any] = {}


def _check_jobs(jobs: int) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")


def _parallel(fn: Callable[[Any], Any], tasks: list, jobs: int, state: dict[str, Any], *,
              chunksize: int | None = None) -> list:
    """``[fn(t) for t in tasks]``, in ``jobs`` forked processes that see ``state`` in _STATE."""
    _STATE.clear()
    _STATE.update(state)
    try:
        if jobs > 1 and len(tasks) > 1 and "fork" in mp.get_all_start_methods():
            from concurrent.futures import ProcessPoolExecutor

            size = chunksize or max(1, len(tasks) // (8 * jobs))
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")) as pool:
                return list(pool.map(fn, tasks, chunksize=size))
        return [fn(t) for t in tasks]
    finally:
        _STATE.clear()


# -- validity ----------------------------------------------------------------------------------
def batch_compositions(batch: ProductPoint) -> list[Composition]:
    """The composition of every crystal of a ragged batch (from its type tokens Z − 1), also for
    crystals that :func:`~flowmatch.plugins.crystal.batch_to_structures` cannot build."""
    from pymatgen.core import Composition, Element

    if batch.segments is None:
        raise ValueError("batch must be a ragged ProductPoint with segments")
    z = batch["types"].detach().cpu().long() + 1
    owner = batch.segments.index.cpu()
    out: list[dict[int, int]] = [defaultdict(int) for _ in range(batch.segments.num_segments)]
    for i, zi in zip(owner.tolist(), z.tolist(), strict=True):
        out[i][zi] += 1
    return [Composition({Element.from_Z(k): v for k, v in d.items()}) for d in out]


def validity(structures: Sequence[Structure | None],
             compositions: Sequence[Composition | None] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(structural, compositional) validity flags of each sample.

    The compositional check uses the structure's composition, or ``compositions[i]`` for a
    sample whose structure is None (CDVAE scores the generated atom types even when the cell
    cannot be built); without either it is False.
    """
    if compositions is not None and len(compositions) != len(structures):
        raise ValueError(f"compositions ({len(compositions)}) must have one entry per structure "
                         f"({len(structures)})")
    cache: dict[str, bool] = {}
    struct_ok = np.zeros(len(structures), dtype=bool)
    comp_ok = np.zeros(len(structures), dtype=bool)
    for i, s in enumerate(structures):
        struct_ok[i] = structural_validity(s)
        comp = s.composition if s is not None else \
            (compositions[i] if compositions is not None else None)
        if comp is None:
            continue
        key = comp.reduced_formula
        if key not in cache:
            cache[key] = compositional_validity(comp)
        comp_ok[i] = cache[key]
    return struct_ok, comp_ok


# -- fingerprints ------------------------------------------------------------------------------
_FEATURIZERS: dict[str, Any] = {}


def _featurizers() -> tuple[Any, Any]:
    """matminer's CrystalNN site fingerprint (preset "ops") and Magpie ElementProperty (NaN kept
    for elements without data, as the published scaler expects)."""
    if not _FEATURIZERS:
        try:
            from matminer.featurizers.composition.composite import ElementProperty
            from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("the coverage metrics need matminer: pip install "
                              "'flowmatch[crystal]' (or pip install matminer)") from err
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _FEATURIZERS["site"] = CrystalNNFingerprint.from_preset("ops")
            _FEATURIZERS["magpie"] = ElementProperty.from_preset("magpie", impute_nan=False)
    return _FEATURIZERS["site"], _FEATURIZERS["magpie"]


def structure_fingerprint(structure: Structure | None, *, timeout: float | None = None
                          ) -> np.ndarray | None:
    """Mean over sites of the CrystalNN "ops" site fingerprints (61 numbers); None when the
    structure is None, featurisation raises, runs past ``timeout`` seconds or is not finite."""
    if structure is None:
        return None
    site, _ = _featurizers()
    try:
        with warnings.catch_warnings(), _time_limit(timeout):
            warnings.simplefilter("ignore")
            rows = [site.featurize(structure, i) for i in range(len(structure))]
    except _Timeout:
        return None
    except Exception:  # noqa: BLE001 - CrystalNN fails on odd cells: no fingerprint
        return None
    fp = np.asarray(rows, dtype=np.float64).mean(axis=0)
    return fp if fp.shape == (STRUCTURE_FP_SIZE,) and bool(np.isfinite(fp).all()) else None


def composition_fingerprint(composition: Composition) -> np.ndarray:
    """The 132 Magpie features of a composition (NaN where an element lacks the property)."""
    _, magpie = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(magpie.featurize(composition), dtype=np.float64)


def _fingerprint_task(i: int) -> np.ndarray | None:
    return structure_fingerprint(_STATE["structures"][i], timeout=_STATE["timeout"])


def fingerprints(structures: Sequence[Structure | None], *, jobs: int = 1,
                 timeout: float | None = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Structure [n, 61] and raw composition [n, 132] fingerprints of ``structures``.

    Both rows are NaN for a crystal whose structure fingerprint cannot be computed (CDVAE drops
    its composition fingerprint too). ``timeout`` bounds one crystal's fingerprint (seconds).
    """
    _check_jobs(jobs)
    _featurizers()  # load once, before forking
    struct = np.full((len(structures), STRUCTURE_FP_SIZE), np.nan)
    comp = np.full((len(structures), COMPOSITION_FP_SIZE), np.nan)
    rows = _parallel(_fingerprint_task, list(range(len(structures))), jobs,
                     {"structures": structures, "timeout": timeout})
    by_formula: dict[str, np.ndarray] = {}
    for i, fp in enumerate(rows):
        if fp is None:
            continue
        struct[i] = fp
        formula = structures[i].composition.formula
        if formula not in by_formula:
            by_formula[formula] = composition_fingerprint(structures[i].composition)
        comp[i] = by_formula[formula]
    return struct, comp


FINGERPRINT_CACHE = "flowmatch.crystal.dng-fingerprints/1"


def cached_fingerprints(structures: Sequence[Structure | None], source: str | os.PathLike[str],
                        *, jobs: int = 1, timeout: float | None = 60.0,
                        cache_dir: str | os.PathLike[str] | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fingerprints` of ``structures`` read from ``source`` (a file, or a folder of
    ``*.cif``), cached on disk: a reference set of a few thousand crystals takes minutes to
    fingerprint, and is scored against again and again. The key is the SHA-256 of the source's
    bytes (every CIF's name and bytes for a folder), the number of structures and the timeout;
    the cache (``cache_dir``, default ``~/.cache/flowmatch/crystal``) is written atomically and
    a file that does not fit is recomputed, never trusted."""
    source = Path(source)
    digest = hashlib.sha256(f"{FINGERPRINT_CACHE}|{len(structures)}|{timeout}".encode())
    files = sorted(source.glob("*.cif")) if source.is_dir() else [source]
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    root = Path(cache_dir) if cache_dir is not None else Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowmatch" / "crystal"
    path = root / f"{source.stem}-fp-{digest.hexdigest()[:24]}.npz"
    if path.is_file():
        try:
            with np.load(path) as cached:
                struct, comp = cached["structure"], cached["composition"]
            if struct.shape == (len(structures), STRUCTURE_FP_SIZE) and \
                    comp.shape == (len(structures), COMPOSITION_FP_SIZE):
                return struct, comp
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed
            pass
    struct, comp = fingerprints(structures, jobs=jobs, timeout=timeout)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, structure=struct, composition=comp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return struct, comp


def scale_composition_fingerprints(comp: np.ndarray) -> np.ndarray:
    """z-score Magpie fingerprints with CDVAE's fixed means and deviations; NaN → 0."""
    from flowmatch.plugins.crystal._magpie_scale import MAGPIE_MEANS, MAGPIE_STDS

    z = (np.asarray(comp, dtype=np.float64) - np.asarray(MAGPIE_MEANS)) / np.asarray(MAGPIE_STDS)
    return np.where(np.isnan(z), 0.0, z)


def coverage(sample_struct: np.ndarray, sample_comp: np.ndarray, ref_struct: np.ndarray,
             ref_comp: np.ndarray, *, cutoffs: tuple[float, float], chunk: int = 2048
             ) -> tuple[float, float]:
    """(COV-R, COV-P) as fractions, from the fingerprints of :func:`fingerprints`.

    Rows of NaN (no fingerprint) never cover anything and are never covered, but stay in the
    denominators: COV-P divides by all samples, COV-R by all reference crystals. Distances are
    computed ``chunk`` samples at a time, so memory stays O(chunk × reference).
    """
    from scipy.spatial.distance import cdist

    struct_cut, comp_cut = cutoffs
    n_samples, n_ref = len(sample_struct), len(ref_struct)
    if n_samples == 0 or n_ref == 0:
        raise ValueError(f"coverage needs samples and reference crystals, got {n_samples} and "
                         f"{n_ref}")
    ok = np.isfinite(sample_struct).all(axis=1)
    ref_ok = np.isfinite(ref_struct).all(axis=1)
    s, c = sample_struct[ok], scale_composition_fingerprints(sample_comp[ok])
    rs, rc = ref_struct[ref_ok], scale_composition_fingerprints(ref_comp[ref_ok])
    if len(s) == 0 or len(rs) == 0:
        return 0.0, 0.0
    best_s = np.full(len(rs), np.inf)
    best_c = np.full(len(rs), np.inf)
    precise = 0
    for start in range(0, len(s), chunk):
        ds = cdist(s[start:start + chunk], rs)
        dc = cdist(c[start:start + chunk], rc)
        precise += int(np.sum((ds.min(axis=1) <= struct_cut) & (dc.min(axis=1) <= comp_cut)))
        best_s = np.minimum(best_s, ds.min(axis=0))
        best_c = np.minimum(best_c, dc.min(axis=0))
    recalled = int(np.sum((best_s <= struct_cut) & (best_c <= comp_cut)))
    return recalled / n_ref, precise / n_samples


# -- property distances ------------------------------------------------------------------------
def property_distances(valid_samples: Sequence[Structure], reference: Sequence[Structure], *,
                       n: int = PROPERTY_SAMPLES, seed: int = 0) -> tuple[float, float, int]:
    """(density W1 in g/cm³, number-of-elements W1, samples used): ``n`` valid samples drawn
    without replacement (all when fewer), against all reference crystals."""
    from scipy.stats import wasserstein_distance

    if not valid_samples or not reference:
        return math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(valid_samples), size=min(n, len(valid_samples)), replace=False)
    chosen = [valid_samples[int(i)] for i in pick]
    density = wasserstein_distance([float(s.density) for s in chosen],
                                   [float(s.density) for s in reference])
    elements = wasserstein_distance([len(s.composition.elements) for s in chosen],
                                    [len(s.composition.elements) for s in reference])
    return float(density), float(elements), len(chosen)


# -- uniqueness and novelty --------------------------------------------------------------------
def _matcher():
    if "matcher" not in _STATE:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        _STATE["matcher"] = StructureMatcher()
    return _STATE["matcher"]


def _reduce_task(i: int) -> Structure | None:
    """Niggli-reduced primitive cell, as StructureMatcher() computes it; None on failure."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    s = _STATE["structures"][i]
    try:
        with warnings.catch_warnings(), _time_limit(_STATE["timeout"]):
            warnings.simplefilter("ignore")
            reduced = StructureMatcher._get_reduced_structure(s, True, True)
    except _Timeout:
        return None
    except Exception:  # noqa: BLE001 - reduction fails on degenerate cells
        return None
    abc = reduced.lattice.abc
    aspect = max(abc) / min(abc) if min(abc) > 0 else math.inf
    return reduced if math.isfinite(aspect) and aspect <= MAX_ASPECT else None


def _minima(s: Structure) -> np.ndarray:
    """Successive minima of a Niggli-reduced cell's lattice (its sorted lengths), in units of
    the cube root of the volume per site (the matcher scales volumes)."""
    return np.sort(np.asarray(s.lattice.abc)) / (s.volume / len(s)) ** (1 / 3)


def _fits(a: Structure, b: Structure) -> tuple[bool, bool]:
    """(matched, timed out) for StructureMatcher().fit(a, b) on pre-reduced structures."""
    matcher = _matcher()
    if bool(np.any(_minima(a) >= (1 + matcher.ltol) * (1 + 1e-3) * _minima(b))):
        return False, False  # no basis of a's lattice fits b's lengths (module docstring)
    try:
        with warnings.catch_warnings(), _time_limit(_STATE["timeout"]):
            warnings.simplefilter("ignore")
            return bool(matcher.fit(a, b, skip_structure_reduction=True)), False
    except _Timeout:
        return False, True
    except Exception:  # noqa: BLE001 - the matcher fails on degenerate cells: no match
        return False, False


def _group_task(members: list[int]) -> tuple[list[int], int, int]:
    """Representatives (group_structures order) of one bucket; comparisons; timeouts."""
    reduced = _STATE["reduced"]
    reps: list[int] = []
    calls = timeouts = 0
    for i in members:
        for r in reps:
            calls += 1
            hit, late = _fits(reduced[r], reduced[i])
            timeouts += late
            if hit:
                break
        else:
            reps.append(i)
    return reps, calls, timeouts


def _novel_task(i: int) -> tuple[bool, int, int]:
    """(novel, comparisons, timeouts) of sample i against its bucket of training crystals."""
    sample = _STATE["reduced"][i]
    train = _STATE["train_reduced"]
    calls = timeouts = 0
    for j in _STATE["train_buckets"].get(_STATE["keys"][i], ()):
        calls += 1
        hit, late = _fits(sample, train[j])
        timeouts += late
        if hit:
            return False, calls, timeouts
    return True, calls, timeouts


def _bucket(s: Structure) -> tuple[str, int]:
    return s.composition.reduced_formula, len(s)


@dataclass
class UniqueNovel:
    """Per-sample flags: ``unique`` (the sample represents its group), ``novel`` (matches no
    training crystal); ``degenerate`` (not compared: reduction failed or aspect ratio > 1e3;
    counted unique and novel); matcher ``comparisons`` and ``timeouts``."""

    unique: np.ndarray
    novel: np.ndarray
    degenerate: int
    comparisons: int
    timeouts: int


def unique_novel(structures: Sequence[Structure], training: Sequence[Structure], *,
                 jobs: int = 1, timeout: float | None = 30.0,
                 training_reduced: Sequence[Structure | None] | None = None) -> UniqueNovel:
    """Uniqueness and novelty flags of ``structures`` (see the module docstring).

    ``training_reduced`` may pass the training crystals already reduced (the output of an
    earlier call's reduction, to score several sample sets against one training set).
    """
    _check_jobs(jobs)
    n = len(structures)
    reduced = reduce_for_matching(structures, jobs=jobs, timeout=timeout)
    if training_reduced is None:
        training_reduced = reduce_for_matching(training, jobs=jobs, timeout=timeout)
    elif len(training_reduced) != len(training):
        raise ValueError(f"training_reduced holds {len(training_reduced)} entries for "
                         f"{len(training)} training crystals")
    keys = [None if r is None else _bucket(r) for r in reduced]
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        if k is not None:
            buckets[k].append(i)
    train_buckets: dict[tuple, list[int]] = defaultdict(list)
    for j, r in enumerate(training_reduced):
        if r is not None:
            train_buckets[_bucket(r)].append(j)
    state = {"reduced": reduced, "timeout": timeout, "keys": keys,
             "train_reduced": training_reduced, "train_buckets": dict(train_buckets)}
    degenerate = [i for i, r in enumerate(reduced) if r is None]
    unique = np.zeros(n, dtype=bool)
    unique[degenerate] = True
    calls = timeouts = 0
    # largest buckets first, one bucket per task, so that the longest task starts first
    groups = sorted(buckets.values(), key=len, reverse=True)
    for reps, c, t in _parallel(_group_task, groups, jobs, state, chunksize=1):
        unique[reps] = True
        calls, timeouts = calls + c, timeouts + t
    novel = np.zeros(n, dtype=bool)
    novel[degenerate] = True
    compared = [i for i in range(n) if reduced[i] is not None]
    for i, (is_novel, c, t) in zip(compared, _parallel(_novel_task, compared, jobs, state),
                                   strict=True):
        novel[i] = is_novel
        calls, timeouts = calls + c, timeouts + t
    return UniqueNovel(unique=unique, novel=novel, degenerate=len(degenerate),
                       comparisons=calls, timeouts=timeouts)


# -- everything --------------------------------------------------------------------------------
@dataclass
class DNGResult:
    """The DNG metrics of one sample set (fractions in [0, 1]; see the module docstring).

    ``validity`` counts structural and compositional validity and a computable fingerprint;
    ``uniqueness``, ``novelty`` and ``unique_novel`` (representatives of their group that are
    also novel) are over the ``un_samples`` valid samples scored for them (all valid samples
    unless ``un_limit`` drew a subset); ``property_samples`` valid samples entered the W1
    distances.
    """

    samples: int
    structural_validity: float
    compositional_validity: float
    validity: float
    valid: int
    uniqueness: float
    novelty: float
    unique_novel: float
    un_samples: int
    density_w1: float
    num_elements_w1: float
    property_samples: int
    cov_recall: float
    cov_precision: float
    fingerprint_failures: int
    degenerate: int
    comparisons: int
    matcher_timeouts: int
    seconds: dict[str, float] = field(default_factory=dict)


def dng_metrics(samples: Sequence[Structure | None], reference: Sequence[Structure],
                training: Sequence[Structure], *, cutoffs: tuple[float, float] | str,
                compositions: Sequence[Composition | None] | None = None,
                reference_fingerprints: tuple[np.ndarray, np.ndarray] | None = None,
                training_reduced: Sequence[Structure | None] | None = None,
                property_samples: int = PROPERTY_SAMPLES, un_limit: int | None = None,
                seed: int = 0, jobs: int = 1, timeout: float | None = 30.0) -> DNGResult:
    """All DNG metrics of generated ``samples`` against the test ``reference`` and ``training``.

    ``cutoffs`` is a (structure, composition) pair or a data set name of :data:`COV_CUTOFFS`.
    ``compositions`` (e.g. :func:`batch_compositions`) lets samples that could not be built
    still count in compositional validity. ``reference_fingerprints`` (from
    :func:`fingerprints`) and ``training_reduced`` skip recomputing those. ``un_limit`` scores
    uniqueness and novelty on that many valid samples drawn at random (all when None).
    ``seed`` draws the property and ``un_limit`` subsets.
    """
    _check_jobs(jobs)
    if isinstance(cutoffs, str):
        if cutoffs not in COV_CUTOFFS:
            raise ValueError(f"cutoffs must be a (structure, composition) pair or one of "
                             f"{sorted(COV_CUTOFFS)}, got {cutoffs!r}")
        cutoffs = COV_CUTOFFS[cutoffs]
    n = len(samples)
    if n == 0:
        raise ValueError("samples must hold at least one structure (None for unbuildable)")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    struct_ok, comp_ok = validity(samples, compositions)
    seconds["validity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    s_fp, c_fp = fingerprints(samples, jobs=jobs, timeout=timeout)
    if reference_fingerprints is None:
        reference_fingerprints = fingerprints(reference, jobs=jobs, timeout=timeout)
    r_fp, rc_fp = reference_fingerprints
    if len(r_fp) != len(reference):
        raise ValueError(f"reference_fingerprints hold {len(r_fp)} rows for {len(reference)} "
                         "reference crystals")
    has_fp = np.isfinite(s_fp).all(axis=1)
    recall, precision = coverage(s_fp, c_fp, r_fp, rc_fp, cutoffs=cutoffs)
    seconds["fingerprints_and_coverage"] = time.perf_counter() - t0

    valid_idx = np.flatnonzero(struct_ok & comp_ok & has_fp)
    valid = [samples[int(i)] for i in valid_idx]
    t0 = time.perf_counter()
    density_w1, elements_w1, used = property_distances(valid, reference, n=property_samples,
                                                       seed=seed)
    seconds["property_distances"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scored = valid
    if un_limit is not None and len(valid) > un_limit:
        rng = np.random.default_rng(seed + 1)
        pick = np.sort(rng.choice(len(valid), size=un_limit, replace=False))
        scored = [valid[int(i)] for i in pick]
    if scored:
        un = unique_novel(scored, training, jobs=jobs, timeout=timeout,
                          training_reduced=training_reduced)
        m = len(scored)
        uniqueness, novelty = un.unique.sum() / m, un.novel.sum() / m
        both = (un.unique & un.novel).sum() / m
        degenerate, calls, late = un.degenerate, un.comparisons, un.timeouts
    else:
        uniqueness = novelty = both = math.nan
        degenerate = calls = late = 0
    seconds["uniqueness_novelty"] = time.perf_counter() - t0
    return DNGResult(samples=n, structural_validity=float(struct_ok.mean()),
                     compositional_validity=float(comp_ok.mean()),
                     validity=len(valid) / n, valid=len(valid), uniqueness=float(uniqueness),
                     novelty=float(novelty), unique_novel=float(both), un_samples=len(scored),
                     density_w1=density_w1, num_elements_w1=elements_w1,
                     property_samples=used, cov_recall=recall, cov_precision=precision,
                     fingerprint_failures=int((~has_fp).sum()), degenerate=degenerate,
                     comparisons=calls, matcher_timeouts=late,
                     seconds={k: round(v, 2) for k, v in seconds.items()})


def reduce_for_matching(structures: Sequence[Structure], *, jobs: int = 1,
                        timeout: float | None = 30.0) -> list[Structure | None]:
    """Niggli-reduced primitive cells as ``StructureMatcher()`` computes them (None where the
    reduction fails or the cell is degenerate): pass as ``training_reduced``."""
    _check_jobs(jobs)
    return _parallel(_reduce_task, list(range(len(structures))), jobs,
                     {"structures": list(structures), "timeout": timeout})

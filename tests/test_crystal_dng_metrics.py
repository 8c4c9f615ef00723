"""De novo generation metrics on hand-made crystals whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymatgen", reason="the DNG metrics need pymatgen (flowmatch[crystal])")
pytest.importorskip("smact", reason="compositional validity needs SMACT (flowmatch[crystal])")
pytest.importorskip("matminer", reason="coverage fingerprints need matminer (flowmatch[crystal])")

from pymatgen.core import Composition, Lattice, Structure  # noqa: E402

from flowmatch.plugins.crystal.dng_metrics import (  # noqa: E402
    COV_CUTOFFS,
    batch_compositions,
    cached_fingerprints,
    coverage,
    dng_metrics,
    fingerprints,
    property_distances,
    scale_composition_fingerprints,
    unique_novel,
    validity,
)


def srtio3(a: float = 3.905, shift: float = 0.0) -> Structure:
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"], (frac + shift) % 1.0)


def rocksalt_primitive(a: float = 5.64) -> Structure:
    return Structure(Lattice.from_parameters(a / 2 ** 0.5, a / 2 ** 0.5, a / 2 ** 0.5, 60, 60, 60),
                     ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rocksalt_conventional(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])


def diamond(a: float = 3.567) -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["C"], [[0, 0, 0]])


def overlapping() -> Structure:
    return Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])  # 0.2 Å


def test_duplicates_are_not_unique_and_supercells_are_duplicates():
    # a shifted copy, a 3 % larger copy (volumes are scaled) and the 8-atom conventional cell
    # of rock salt all match an earlier sample: 2 groups among 5 samples
    samples = [srtio3(), srtio3(shift=0.13), rocksalt_primitive(), srtio3(a=4.02),
               rocksalt_conventional()]
    un = unique_novel(samples, [diamond()])
    assert un.unique.tolist() == [True, False, True, False, False]
    assert un.novel.all(), "nothing matches diamond"
    assert un.degenerate == 0 and un.timeouts == 0


def test_training_structures_are_not_novel():
    training = [rocksalt_conventional(), diamond()]
    un = unique_novel([srtio3(), rocksalt_primitive(), diamond(a=3.6)], training)
    assert un.novel.tolist() == [True, False, False]
    assert un.unique.all()


def test_parallel_matching_agrees_with_serial():
    samples = [srtio3(), rocksalt_primitive(), srtio3(shift=0.3), diamond(),
               rocksalt_conventional(), diamond(a=3.7)]
    one = unique_novel(samples, [srtio3()], jobs=1)
    two = unique_novel(samples, [srtio3()], jobs=2)
    assert one.unique.tolist() == two.unique.tolist() == [True, True, False, True, False, False]
    assert one.novel.tolist() == two.novel.tolist() == [False, True, False, True, True, True]


def test_bucketing_and_lattice_screen_agree_with_the_plain_matcher():
    # strained copies straddle the length tolerance (ltol 0.2): the screens must skip only
    # pairs that StructureMatcher() itself rejects, in both argument orders
    from pymatgen.analysis.structure_matcher import StructureMatcher

    def strained(s: Structure, f: float) -> Structure:
        s = s.copy()
        s.apply_strain([0.0, 0.0, f - 1.0])
        return s

    samples = [strained(diamond(), f) for f in (1.0, 1.1, 1.18, 1.25, 1.4)] + \
        [strained(srtio3(), f) for f in (1.0, 1.15, 1.3)] + [rocksalt_conventional()]
    training = [strained(diamond(), 1.3), strained(srtio3(), 1.6)]
    matcher = StructureMatcher()
    groups = [g[0] for g in matcher.group_structures(samples)]
    novel = [not any(matcher.fit(s, t) for t in training) for s in samples]
    un = unique_novel(samples, training)
    assert un.unique.tolist() == [any(s is r for r in groups) for s in samples]
    assert un.novel.tolist() == novel
    assert 0 < un.unique.sum() < len(samples) and 0 < sum(novel) < len(samples)


def test_a_comparison_past_its_timeout_counts_as_no_match():
    un = unique_novel([srtio3(), srtio3()], [srtio3()], timeout=1e-6)
    # every reduction or comparison runs out: nothing matches, so all are unique and novel
    assert un.unique.all() and un.novel.all()
    assert un.timeouts + un.degenerate > 0


def test_wasserstein_distances_of_identical_sets_are_zero_and_shift_with_density():
    crystals = [srtio3(), rocksalt_primitive(), diamond(), srtio3(a=4.1)]
    density, elements, used = property_distances(crystals, crystals, n=1000)
    assert (density, elements, used) == (0.0, 0.0, 4)
    # a 10 % longer cell lowers the density by the factor 1.1³: W1 is that gap for one crystal
    d_srtio3 = float(srtio3().density)
    gap = d_srtio3 - float(srtio3(a=3.905 * 1.1).density)
    density, elements, _ = property_distances([srtio3(a=3.905 * 1.1)], [srtio3()])
    assert density == pytest.approx(gap) and gap == pytest.approx(d_srtio3 * (1 - 1.1 ** -3))
    assert elements == 0.0
    _, elements, _ = property_distances([diamond()], [srtio3()])
    assert elements == 2.0  # 1 element against 3


def test_coverage_of_a_set_against_itself_is_complete():
    crystals = [srtio3(), rocksalt_primitive(), diamond()]
    s, c = fingerprints(crystals)
    assert np.isfinite(s).all() and np.isfinite(c).all()
    assert coverage(s, c, s, c, cutoffs=COV_CUTOFFS["perov_5"]) == (1.0, 1.0)
    # diamond alone covers itself only: recall 1/3; its one sample lies within the cutoffs
    recall, precision = coverage(s[2:], c[2:], s, c, cutoffs=(0.2, 4.0))
    assert (recall, precision) == (pytest.approx(1 / 3), 1.0)


def test_coverage_counts_samples_without_fingerprint_as_misses():
    s, c = fingerprints([srtio3(), None])
    assert np.isnan(s[1]).all() and np.isnan(c[1]).all()
    recall, precision = coverage(s, c, s[:1], c[:1], cutoffs=(0.2, 4.0))
    assert (recall, precision) == (1.0, 0.5)


def test_composition_fingerprints_are_scaled_with_nan_as_the_mean():
    z = scale_composition_fingerprints(np.full((1, 132), np.nan))
    assert (z == 0).all()


def test_validity_counts_invalid_and_unbuildable_samples():
    samples = [srtio3(), overlapping(), None, Structure(Lattice.cubic(5), ["Na", "O", "O", "O"],
                                                        [[0, 0, 0], [.5, .5, 0], [.5, 0, .5],
                                                         [0, .5, .5]])]
    comps = [None, None, Composition("NaCl"), None]
    struct_ok, comp_ok = validity(samples, comps)
    assert struct_ok.tolist() == [True, False, False, True]
    # NaO3 fails SMACT; the unbuildable sample is scored on its generated atom types
    assert comp_ok.tolist() == [True, True, True, False]
    assert validity([None])[1].tolist() == [False], "no composition: not valid"


def test_dng_metrics_on_a_small_sample_set():
    samples = [srtio3(), srtio3(shift=0.2), rocksalt_primitive(), overlapping(), None]
    comps = [None, None, None, None, Composition("NaCl2")]
    reference = [srtio3(), rocksalt_primitive(), diamond()]
    r = dng_metrics(samples, reference, [rocksalt_conventional()], cutoffs="perov_5",
                    compositions=comps)
    assert r.samples == 5
    assert r.structural_validity == pytest.approx(3 / 5)
    assert r.compositional_validity == pytest.approx(4 / 5)  # NaCl2 is not charge-neutral
    assert (r.valid, r.validity) == (3, pytest.approx(3 / 5))
    assert r.uniqueness == pytest.approx(2 / 3)   # SrTiO3 twice
    assert r.novelty == pytest.approx(2 / 3)      # rock salt is in training
    assert r.unique_novel == pytest.approx(1 / 3)
    assert r.property_samples == 3 and r.density_w1 > 0
    assert r.cov_recall == pytest.approx(2 / 3)   # diamond is not generated
    # the overlapping pair has a fingerprint, but its structure one is far (2.1) from rock
    # salt's; the unbuildable sample has none: 3 of 5 samples are precise
    assert r.cov_precision == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="cutoffs must be"):
        dng_metrics(samples, reference, [], cutoffs="mp20")
    with pytest.raises(ValueError, match="jobs must be"):
        dng_metrics(samples, reference, [], cutoffs="perov_5", jobs=0)


def test_batch_compositions_reads_the_type_tokens():
    from flowmatch.plugins.crystal import structures_to_batch

    batch = structures_to_batch([srtio3(), rocksalt_conventional()])
    comps = batch_compositions(batch)
    assert comps[0] == Composition("SrTiO3")
    assert comps[1].reduced_formula == "NaCl" and comps[1].num_atoms == 8


def test_cached_fingerprints_reuse_the_cache_and_notice_a_changed_source(tmp_path, monkeypatch):
    import flowmatch.plugins.crystal.dng_metrics as dm

    structures = [srtio3(), rocksalt_primitive()]
    source = tmp_path / "refs.csv"
    source.write_text("first version")
    cache = tmp_path / "cache"
    first = cached_fingerprints(structures, source, cache_dir=cache)
    np.testing.assert_array_equal(first[0], fingerprints(structures)[0])
    calls = []
    real = dm.fingerprints
    monkeypatch.setattr(dm, "fingerprints", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = cached_fingerprints(structures, source, cache_dir=cache)
    assert not calls, "a second call reads the cache"
    np.testing.assert_array_equal(again[1], first[1])
    source.write_text("second version")  # another file: recomputed
    cached_fingerprints(structures, source, cache_dir=cache)
    assert len(calls) == 1
    for f in cache.glob("*.npz"):  # a damaged cache is recomputed, not trusted
        f.write_bytes(b"not an npz")
    cached_fingerprints(structures, source, cache_dir=cache)
    assert len(calls) == 2
    folder = tmp_path / "cifs"  # a folder of CIFs is keyed by its files
    folder.mkdir()
    (folder / "a.cif").write_text("x")
    cached_fingerprints(structures[:1], folder, cache_dir=cache)
    cached_fingerprints(structures[:1], folder, cache_dir=cache)
    assert len(calls) == 3

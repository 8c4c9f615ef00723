"""The CHGNet stability proxy: a relaxed SrTiO3 barely moves, a perturbed one moves back, a
broken structure gives a reason instead of a crash."""

from __future__ import annotations

import pytest

pytest.importorskip("pymatgen", reason="the crystal extra (pymatgen) is not installed")
pytest.importorskip("chgnet", reason="chgnet is not installed (pip install 'flowmatch[crystal]')")

from pymatgen.core import Lattice, Structure  # noqa: E402

from flowmatch.plugins.crystal.stability import (  # noqa: E402
    displacement_rmsd,
    relax_structure,
    relax_structures,
    summarize,
)


def srtio3(a: float = 3.95) -> Structure:
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])


@pytest.fixture(scope="module")
def relaxed() -> Structure:
    r = relax_structure(srtio3(), fmax=0.02, steps=200)
    assert r.ok, r.reason
    return r.structure


def test_displacement_rmsd_ignores_translation_and_wraps():
    s = srtio3()
    t = s.copy()
    t.translate_sites(range(len(t)), [0.3, 0.9, -0.2])  # rigid shift, wrapped into the cell
    assert displacement_rmsd(s, t) == pytest.approx(0.0, abs=1e-9)


def test_relaxed_srtio3_moves_little(relaxed):
    r = relax_structure(relaxed, fmax=0.05, steps=100)
    assert r.ok, r.reason
    assert r.rmsd < 0.02 and r.stable
    assert abs(r.volume_change) < 0.02
    assert abs(r.energy_after - r.energy_before) < 5e-3
    assert -9.5 < r.energy_after < -7.5  # eV/atom, CHGNet's SrTiO3 is about -8.4


def test_perturbed_srtio3_moves_back(relaxed):
    perturbed = relaxed.copy()
    perturbed.perturb(0.25, min_distance=0.2, seed=0)
    before = displacement_rmsd(relaxed, perturbed)
    r = relax_structure(perturbed, fmax=0.02, steps=300)
    assert r.ok, r.reason
    assert r.energy_after < r.energy_before
    assert r.rmsd > 0.05  # it moved
    assert displacement_rmsd(relaxed, r.structure) < 0.5 * before  # back towards the minimum


def test_broken_structures_give_reasons_not_crashes():
    s = srtio3()
    s.replace(1, "Ti", [0.0, 0.0, 0.001])  # Ti on top of Sr
    results = relax_structures([s, None, srtio3()], steps=5)
    assert [r.ok for r in results] == [False, False, True]
    assert "apart" in results[0].reason and results[0].rmsd is None
    assert "no structure" in results[1].reason
    summary = summarize(results)
    assert summary["n"] == 3 and summary["n_failed"] == 2
    assert summary["stable_fraction"] <= 1 / 3
    assert "hull" in summary["note"]


def test_timeout_is_a_reason():
    s = srtio3()
    s.perturb(0.3, seed=1)
    r = relax_structure(s, steps=10_000, fmax=1e-6, timeout=0.0)
    assert not r.ok and "timeout" in r.reason

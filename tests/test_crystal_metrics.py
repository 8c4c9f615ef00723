"""Crystal metrics: validity rules and the CSP match rate / RMSE on known cases."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("smact")

from pymatgen.core import Lattice, Structure  # noqa: E402

from flowmatch.plugins.crystal.metrics import (  # noqa: E402
    compositional_validity,
    csp_metrics,
    match_rms,
    structural_validity,
)


def srtio3(a: float = 3.905) -> Structure:
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def test_structural_validity_checks_distances_over_images_and_volume():
    assert structural_validity(srtio3())
    close = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]])  # 0.4 Å apart
    assert not structural_validity(close)
    across = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0.01, 0, 0], [0.95, 0, 0]])  # 0.24 Å
    assert not structural_validity(across), "periodic images count"
    assert not structural_validity(None)
    assert not structural_validity(Structure(Lattice.cubic(0.3), ["C"], [[0, 0, 0]]))


@pytest.mark.parametrize("formula, valid", [("SrTiO3", True), ("NaCl", True), ("C", True),
                                            ("CuZn", True), ("NaO3", False), ("KF2", False),
                                            ("NeO2", False), ("ArF", False)])
def test_compositional_validity_follows_smact(formula, valid):
    assert compositional_validity(formula) is valid


def test_csp_metrics_count_matches_over_all_targets():
    target = srtio3()
    distorted = srtio3()
    distorted.perturb(0.05)
    wrong = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.25, 0.25, 0.25], [0.5, 0.5, 0], [0.5, 0, 0.5],
                       [0, 0.5, 0.5]])
    assert match_rms(srtio3(), target) == pytest.approx(0.0, abs=1e-6)
    r = match_rms(distorted, target)
    assert r is not None and 0 < r < 0.1
    res = csp_metrics([[distorted], [None], [wrong, srtio3()]], [target, target, target])
    assert res.match_rate == pytest.approx(2 / 3)
    assert res.rms[1] is None and res.rms[2] == pytest.approx(0.0, abs=1e-6)
    assert res.rmse == pytest.approx((r + 0.0) / 2, abs=1e-6)
    assert res.valid_fraction == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="one entry per test crystal"):
        csp_metrics([[target]], [target, target])
    assert math.isnan(csp_metrics([[None]], [target]).rmse)


def test_template_baseline_relabels_a_training_crystal_of_the_same_pattern():
    from flowmatch.plugins.crystal.baselines import random_structures, template_structures

    training = [srtio3(4.1), Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0],
                                                                          [0.5, 0.5, 0.5]])]
    bazro3 = Structure(Lattice.cubic(4.19), ["Ba", "Zr", "O", "O", "O"],
                       [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    out = template_structures([bazro3.composition, Structure(
        Lattice.cubic(3), ["Fe"], [[0, 0, 0]]).composition], training)
    assert out[1] is None, "no training crystal with a one-element pattern"
    assert out[0].composition == bazro3.composition
    assert match_rms(out[0], bazro3) is not None
    # default: the lattice of a training crystal with the same atom count
    rand = random_structures([bazro3.composition], training, seed=1)[0]
    assert rand.composition == bazro3.composition
    assert rand.lattice == srtio3(4.1).lattice
    # no training crystal of 3 atoms: the closest count's lattice, scaled to the mean volume
    per_atom = (srtio3(4.1).volume / 5 + 5.6**3 / 2) / 2
    li2o = Structure(Lattice.cubic(3), ["Li", "Li", "O"], [[0, 0, 0], [0.5, 0.5, 0.5],
                                                            [0.5, 0, 0]]).composition
    assert random_structures([li2o], training)[0].volume == pytest.approx(3 * per_atom)
    cubic = random_structures([bazro3.composition], training, seed=1, lattice="cubic")[0]
    assert cubic.volume == pytest.approx(5 * per_atom, rel=1e-9)
    with pytest.raises(ValueError, match="lattice must be"):
        random_structures([bazro3.composition], training, lattice="hexagonal")


def test_parallel_matching_and_timeouts_give_the_same_answer():
    target = srtio3()
    samples = []
    for seed in range(6):
        s = srtio3()
        s.perturb(0.03 * (seed + 1))
        samples.append([s])
    serial = csp_metrics(samples, [target] * 6)
    parallel = csp_metrics(samples, [target] * 6, jobs=2)
    assert serial.rms == parallel.rms
    # a comparison cut short counts as unmatched
    assert match_rms(samples[0][0], target, timeout=1e-6) is None
    assert match_rms(samples[0][0], target, timeout=30) is not None
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        csp_metrics(samples, [target] * 6, jobs=0)


def test_absurd_cells_are_invalid_not_a_crash():
    # a generated cell with lengths of 1e30 Å overflowed pymatgen's LLL reduction
    huge = Structure(Lattice.from_parameters(1e30, 2.0, 3.0, 60.5, 119.0, 70.0), ["Na", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert structural_validity(huge) is False


def test_hopeless_cells_are_unmatched_without_running_the_matcher():
    target = srtio3()
    needle = Structure(Lattice.from_parameters(400.0, 3.9, 3.9, 90, 90, 90),
                       ["Sr", "Ti", "O", "O", "O"], target.frac_coords)
    assert match_rms(needle, target) is None
    assert match_rms(srtio3(4.0), target) is not None

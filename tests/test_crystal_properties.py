"""The property regressor that judges property-guided generation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("matminer")
pytest.importorskip("sklearn")

from pymatgen.core import Lattice, Structure  # noqa: E402

from flowmatch.plugins.crystal.properties import (  # noqa: E402
    NUM_FEATURES,
    PropertyRegressor,
    crystal_features,
)

A_SITES = ["Sr", "Ba", "Ca", "K", "Na", "La"]
B_SITES = ["Ti", "Zr", "Nb", "Mg", "Al", "Sc"]


def perovskites(n: int, seed: int):
    """ABO3 cells with a label that depends on the A/B elements' electronegativity and on the
    cell side, the kind of dependence a heat of formation has."""
    rng = np.random.default_rng(seed)
    structures, labels = [], []
    for _ in range(n):
        a, b = A_SITES[rng.integers(6)], B_SITES[rng.integers(6)]
        side = 3.8 + 0.5 * rng.random()
        s = Structure(Lattice.cubic(side), [a, b, "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        chi = float(s.composition.average_electroneg)
        structures.append(s)
        labels.append(3.0 * chi - 2.0 * side + 0.05 * rng.standard_normal())
    return structures, np.array(labels)


def test_features_have_the_documented_layout_and_nan_for_missing_crystals():
    structures, _ = perovskites(3, 0)
    x = crystal_features([structures[0], None, structures[2]])
    assert x.shape == (3, NUM_FEATURES)
    assert np.isnan(x[1]).all() and np.isfinite(x[0, -8:]).all()
    per_atom = structures[0].volume / 5
    np.testing.assert_allclose(x[0, -8], per_atom)
    np.testing.assert_allclose(x[0, -6:-3], [per_atom ** (-1 / 3) * structures[0].lattice.a] * 3)
    np.testing.assert_allclose(x[0, -3:], [90.0, 90.0, 90.0])


def test_the_regressor_learns_a_held_out_property_and_scores_itself():
    train, y_train = perovskites(300, 1)
    test, y_test = perovskites(100, 2)
    model = PropertyRegressor(max_iter=200).fit(train, y_train)
    score = model.score(test, y_test)
    assert score["n"] == 100
    assert score["r2"] > 0.8, score
    assert score["mae"] < 0.5 * score["mae_of_mean"], score
    pred = model.predict([test[0], None])
    assert np.isfinite(pred[0]) and np.isnan(pred[1])


def test_bad_input_is_named():
    structures, labels = perovskites(12, 3)
    with pytest.raises(RuntimeError, match="fit the regressor first"):
        PropertyRegressor().predict(structures)
    with pytest.raises(ValueError, match="one number per structure"):
        PropertyRegressor().fit(structures, labels[:5])
    with pytest.raises(ValueError, match="too few"):
        PropertyRegressor().fit(structures[:5], labels[:5])

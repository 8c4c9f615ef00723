"""A property regressor for crystals: the judge of property-guided generation.

Guidance is measured by predicting the property of generated crystals, which have no DFT
labels. :class:`PropertyRegressor` is trained on labelled crystals (the same data as the
generative model) and scored on a held-out split, so its error is known before its predictions
are trusted.

Features per crystal: the 132 Magpie statistics of the composition (matminer's
``ElementProperty``, NaN where an element lacks a value) and 8 cell descriptors — volume per
atom (Å³), density (g/cm³), the three lattice lengths divided by (V/atom)^⅓ (sorted) and the
three angles (sorted, degrees). Model: scikit-learn's histogram gradient-boosted trees, which
take NaN features natively (no imputation that would blur rare elements).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["PropertyRegressor", "crystal_features"]

NUM_FEATURES = 132 + 8


def crystal_features(structures: Sequence[Structure | None]) -> np.ndarray:
    """Features [n, 140] (module docstring); a row of NaN for a structure that is None or whose
    cell is degenerate."""
    from flowmatch.plugins.crystal.dng_metrics import composition_fingerprint

    out = np.full((len(structures), NUM_FEATURES), np.nan)
    cache: dict[str, np.ndarray] = {}
    for i, s in enumerate(structures):
        if s is None or len(s) == 0:
            continue
        try:
            volume = float(s.volume)
            if not np.isfinite(volume) or volume <= 0:
                continue
            per_atom = volume / len(s)
            lengths = np.sort(np.asarray(s.lattice.abc, dtype=float)) / per_atom ** (1 / 3)
            angles = np.sort(np.asarray(s.lattice.angles, dtype=float))
            cell = np.concatenate([[per_atom, float(s.density)], lengths, angles])
            formula = s.composition.formula
            if formula not in cache:
                cache[formula] = composition_fingerprint(s.composition)
        except Exception:  # noqa: BLE001 - a malformed generated crystal gets no features
            continue
        out[i] = np.concatenate([cache[formula], cell])
    return out


class PropertyRegressor:
    """Gradient-boosted trees on :func:`crystal_features`: ``fit(structures, values)``,
    ``predict(structures)`` (NaN where a crystal has no features) and ``score`` (MAE, R²)."""

    def __init__(self, *, max_iter: int = 600, learning_rate: float = 0.05,
                 seed: int = 0) -> None:
        try:
            from sklearn.ensemble import HistGradientBoostingRegressor
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("the property regressor needs scikit-learn: pip install "
                              "'flowmatch[crystal]' (or pip install scikit-learn)") from err
        self.model = HistGradientBoostingRegressor(max_iter=max_iter,
                                                   learning_rate=learning_rate,
                                                   random_state=seed)
        self.fitted = False

    def fit(self, structures: Sequence[Structure], values: Sequence[float] | np.ndarray
            ) -> PropertyRegressor:
        x = crystal_features(structures)
        y = np.asarray(values, dtype=float)
        if y.shape != (len(structures),):
            raise ValueError(f"values must hold one number per structure ({len(structures)}), "
                             f"got shape {y.shape}")
        keep = ~np.isnan(x).all(axis=1) & np.isfinite(y)
        if keep.sum() < 10:
            raise ValueError(f"only {int(keep.sum())} structures have features and a finite "
                             "label: too few to fit")
        self.model.fit(x[keep], y[keep])
        self.fitted = True
        return self

    def predict(self, structures: Sequence[Structure | None]) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("fit the regressor first")
        x = crystal_features(structures)
        out = np.full(len(structures), np.nan)
        ok = ~np.isnan(x).all(axis=1)
        if ok.any():
            out[ok] = self.model.predict(x[ok])
        return out

    def score(self, structures: Sequence[Structure], values: Sequence[float] | np.ndarray
              ) -> dict[str, Any]:
        """MAE, R² and the count over the structures with features and a finite label."""
        y = np.asarray(values, dtype=float)
        pred = self.predict(structures)
        ok = np.isfinite(pred) & np.isfinite(y)
        err = pred[ok] - y[ok]
        var = float(np.var(y[ok])) if ok.any() else float("nan")
        return {"n": int(ok.sum()), "mae": float(np.abs(err).mean()) if ok.any() else None,
                "r2": 1.0 - float(np.mean(err ** 2)) / var if ok.any() and var > 0 else None,
                "mae_of_mean": float(np.abs(y[ok] - y[ok].mean()).mean()) if ok.any() else None}

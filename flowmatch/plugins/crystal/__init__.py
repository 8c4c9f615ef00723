"""Crystal plugin: periodic crystals as points of a product geometry (lattice × fractional
coordinates on a torus × atom types), CDVAE-format data sets, pymatgen structures in and out.

Modules: ``representation`` (lattice parameters, Structure ↔ ragged batch), ``data`` (CDVAE
CSV loader with a cache), ``model`` (the invariant CrystalVelocityNet), ``equivariant`` (the
e3nn EquivariantCrystalNet), ``csp`` (CrystalFlow: train, sample, save, load), ``metrics`` and
``dng_metrics`` (the community's CSP and de novo protocols), ``baselines``, ``plugin`` (the
``flowmatch crystal`` command). Names load on first access, so discovering the plugin stays
cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ANGLE_RANGE": "flowmatch.plugins.crystal.representation",
    "NUM_ELEMENTS": "flowmatch.plugins.crystal.representation",
    "crystal_product": "flowmatch.plugins.crystal.representation",
    "lattice_to_params": "flowmatch.plugins.crystal.representation",
    "lattice_from_params": "flowmatch.plugins.crystal.representation",
    "structure_arrays": "flowmatch.plugins.crystal.representation",
    "structures_to_batch": "flowmatch.plugins.crystal.representation",
    "batch_to_structures": "flowmatch.plugins.crystal.representation",
    "CrystalSet": "flowmatch.plugins.crystal.data",
    "load_cdvae_csv": "flowmatch.plugins.crystal.data",
    "CrystalFlow": "flowmatch.plugins.crystal.csp",
    "CrystalVelocityNet": "flowmatch.plugins.crystal.model",
    "EquivariantCrystalNet": "flowmatch.plugins.crystal.equivariant",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flowmatch.plugins.crystal' has no attribute {name!r}")

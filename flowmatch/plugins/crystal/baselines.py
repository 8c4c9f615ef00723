"""No-learning CSP baselines, reported beside every model number (crystal-protocol notes).

* :func:`random_structures` — uniform fractional coordinates in a cubic cell whose volume per
  atom is the training set's mean.
* :func:`template_structures` — copy a random training crystal with the same stoichiometry
  pattern (the sorted element counts), relabel its species by (count, electronegativity)
  order, keep its lattice and coordinates. On perov-5 this matches about half the test set,
  which is what a CSP model must beat to have learned anything beyond "it is a perovskite".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Composition, Structure

__all__ = ["random_structures", "template_structures"]


def _order(comp: Composition) -> list:
    """Elements sorted by (count, electronegativity, Z): the relabelling order."""
    def key(el):
        x = el.X if el.X == el.X else 0.0  # NaN electronegativity (noble gases) sorts first
        return (comp[el], x, el.Z)

    return sorted(comp.elements, key=key)


def _pattern(comp: Composition) -> tuple[int, ...]:
    return tuple(sorted(int(round(comp[el])) for el in comp.elements))


def template_structures(compositions: Sequence[Composition], training: Sequence[Structure], *,
                        seed: int = 0) -> list[Structure | None]:
    """One template prediction per composition (None if no training crystal has its pattern)."""
    from pymatgen.core import Structure

    rng = np.random.default_rng(seed)
    by_pattern: dict[tuple[int, ...], list[Structure]] = defaultdict(list)
    for s in training:
        by_pattern[_pattern(s.composition)].append(s)
    out: list[Structure | None] = []
    for comp in compositions:
        pool = by_pattern.get(_pattern(comp))
        if not pool:
            out.append(None)
            continue
        src = pool[int(rng.integers(len(pool)))]
        mapping = dict(zip(_order(src.composition), _order(comp), strict=True))
        out.append(Structure(src.lattice, [mapping[site.specie] for site in src],
                             src.frac_coords))
    return out


def random_structures(compositions: Sequence[Composition], training: Sequence[Structure], *,
                      seed: int = 0) -> list[Structure]:
    """Uniform coordinates in a cubic cell of the training set's mean volume per atom."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    per_atom = float(np.mean([s.volume / len(s) for s in training]))
    out = []
    for comp in compositions:
        species = [el for el in comp.elements for _ in range(int(round(comp[el])))]
        side = (per_atom * len(species)) ** (1 / 3)
        out.append(Structure(Lattice.cubic(side), species, rng.random((len(species), 3))))
    return out

"""No-learning CSP baselines, reported beside every model number (crystal-protocol notes).

* :func:`random_structures` — uniform fractional coordinates in the lattice of a random training
  crystal with the same atom count (or, with ``lattice="cubic"``, a cubic cell of the training
  set's mean volume per atom).
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
                      seed: int = 0, lattice: str = "training") -> list[Structure]:
    """Uniform fractional coordinates in a cell of the right size.

    ``lattice="training"`` (the issue's and the notes' definition): the lattice of a random
    training crystal with the same atom count (with none, the closest count's, scaled to the
    training mean volume per atom). ``"cubic"``: a cubic cell of that mean volume per atom.
    """
    from pymatgen.core import Lattice, Structure

    if lattice not in ("training", "cubic"):
        raise ValueError(f"lattice must be 'training' or 'cubic', got {lattice!r}")
    if not training:
        raise ValueError("random_structures needs at least one training structure")
    rng = np.random.default_rng(seed)
    per_atom = float(np.mean([s.volume / len(s) for s in training]))
    by_size: dict[int, list[Structure]] = defaultdict(list)
    for s in training:
        by_size[len(s)].append(s)
    out = []
    for comp in compositions:
        species = [el for el in comp.elements for _ in range(int(round(comp[el])))]
        n = len(species)
        if lattice == "cubic":
            cell = Lattice.cubic((per_atom * n) ** (1 / 3))
        else:
            size = min(by_size, key=lambda m: (abs(m - n), m))
            pool = by_size[size]
            cell = pool[int(rng.integers(len(pool)))].lattice
            if size != n:
                cell = cell.scale(per_atom * n)
        out.append(Structure(cell, species, rng.random((n, 3))))
    return out

"""Crystals as points of a product geometry, and back to pymatgen structures.

A crystal with n atoms is (lattice, fractional coordinates, atom types):

* **lattice** — 6 unconstrained numbers y = (log a, log b, log c, g(α), g(β), g(γ)) of the
  Niggli-reduced cell, lengths in Å and angles in degrees, with the bijection
  g(θ) = logit((θ − θ_lo) / (θ_hi − θ_lo)) from the open interval (θ_lo, θ_hi) = (59.9°, 120.1°)
  — a Niggli cell's angles lie in [60°, 120°] — onto R. A point of ``Euclidean(6)``; a Gaussian
  base there is log-normal in the lengths.
* **coords** — fractional coordinates in [0, 1)³, one row per atom: a point of
  ``FlatTorus(3, period=1)``.
* **types** — atomic numbers Z stored as tokens Z − 1 in {0, …, 99}: a point of
  ``Discrete(100)``.

A batch of crystals is a :class:`~flowmatch.geometry.ProductPoint` whose ``coords`` and
``types`` are ragged (concatenated atoms, a :class:`~flowmatch.geometry.Segments` index).
pymatgen is imported only by the functions that build or read ``Structure`` objects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowmatch.geometry import Discrete, Euclidean, FlatTorus, Product, ProductPoint, Segments

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

__all__ = ["ANGLE_RANGE", "NUM_ELEMENTS", "angles_to_params", "batch_to_structures",
           "crystal_product", "lattice_from_params", "lattice_to_params", "params_to_angles",
           "structure_arrays", "structures_to_batch"]

ANGLE_RANGE = (59.9, 120.1)
"""Open interval of lattice angles (degrees) mapped onto R; a Niggli cell's lie in [60, 120]."""
NUM_ELEMENTS = 100
"""Atom types are Z − 1 for Z = 1 (H) … 100 (Fm)."""

RAGGED = ("coords", "types")


def crystal_product(lattice: Euclidean | None = None, *, types: str = "uniform") -> Product:
    """Product(lattice=Euclidean(6), coords=FlatTorus(3, 1), types=Discrete(100)), with the
    coordinate velocities mean-free per crystal. ``lattice`` may carry a fitted base
    (:meth:`~flowmatch.geometry.Euclidean.fitted` on training lattices)."""
    lattice = Euclidean(6) if lattice is None else lattice
    if lattice.point_shape != (6,):
        raise ValueError(f"lattice must be a Euclidean(6) factor, got {lattice!r}")
    return Product(lattice=lattice, coords=FlatTorus(3, period=1.0),
                   types=Discrete(NUM_ELEMENTS, source=types), mean_free=("coords",))


def angles_to_params(angles: Tensor) -> Tensor:
    """Angles in degrees, inside ANGLE_RANGE → unconstrained reals (a logit)."""
    lo, hi = ANGLE_RANGE
    if bool(((angles <= lo) | (angles >= hi) | ~torch.isfinite(angles)).any()):
        bad = angles[(angles <= lo) | (angles >= hi) | ~torch.isfinite(angles)]
        raise ValueError(f"lattice angles must lie in ({lo}, {hi}) degrees (Niggli-reduce the "
                         f"cell first), got {bad.flatten()[:4].tolist()}")
    u = (angles - lo) / (hi - lo)
    return torch.log(u) - torch.log1p(-u)


def params_to_angles(y: Tensor) -> Tensor:
    """Inverse of :func:`angles_to_params`: reals → angles in degrees in ANGLE_RANGE."""
    lo, hi = ANGLE_RANGE
    return lo + (hi - lo) * torch.sigmoid(y)


def lattice_to_params(lengths: Tensor, angles: Tensor) -> Tensor:
    """(a, b, c) in Å [..., 3] and (α, β, γ) in degrees [..., 3] → y [..., 6]."""
    if bool((lengths <= 0).any()) or not bool(torch.isfinite(lengths).all()):
        raise ValueError(f"lattice lengths must be positive and finite, got "
                         f"{lengths.flatten()[:6].tolist()}")
    return torch.cat([torch.log(lengths), angles_to_params(angles)], dim=-1)


def lattice_from_params(y: Tensor) -> tuple[Tensor, Tensor]:
    """y [..., 6] → (lengths in Å [..., 3], angles in degrees [..., 3])."""
    if y.shape[-1] != 6:
        raise ValueError(f"lattice parameters must have 6 entries, got shape {tuple(y.shape)}")
    return torch.exp(y[..., :3]), params_to_angles(y[..., 3:])


MAX_CELL_LENGTH = 1000.0
"""Longest lattice vector accepted, Å: far beyond any crystal of the benchmarks, and pymatgen's
Niggli reduction can take hours on cells many orders of magnitude longer."""

# a number this long in a CIF is no crystal: pymatgen's parsers can take minutes on one
_LONG_NUMBER = re.compile(r"\d{40,}")


def check_cell(lattice: Any) -> None:
    """Raise a ValueError unless a pymatgen lattice has finite lengths in (0, MAX_CELL_LENGTH] Å
    and a volume of at least 0.1 Å³."""
    abc = [float(v) for v in lattice.abc]
    if not all(math.isfinite(v) and 0 < v <= MAX_CELL_LENGTH for v in abc):
        raise ValueError(f"lattice lengths must be finite and in (0, {MAX_CELL_LENGTH:g}] Å, got "
                         f"{', '.join(f'{v:.4g}' for v in abc)}")
    volume = float(lattice.volume)
    if not (math.isfinite(volume) and volume >= 0.1):
        raise ValueError(f"the cell volume must be at least 0.1 Å³, got {volume:.4g}")


def structure_from_cif(text: str) -> Structure:
    """Parse one CIF with pymatgen: a ValueError (never a hang, a warning flood or another
    exception type) for text that is not one sane crystal."""
    import warnings

    from pymatgen.core import Structure

    if _LONG_NUMBER.search(text):
        raise ValueError("the CIF holds a number of 40 or more digits")
    try:
        with warnings.catch_warnings():
            # pymatgen reports snapping coordinates like 0.33333 to 1/3 and other parse notes
            warnings.simplefilter("ignore")
            structure = Structure.from_str(text, fmt="cif")
    except Exception as err:  # noqa: BLE001 - pymatgen raises many types on bad CIFs
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"malformed CIF: {first}") from err
    check_cell(structure.lattice)
    return structure


def structure_arrays(structure: Structure, *, niggli: bool = True
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """(lattice params [6], fractional coordinates [n, 3], tokens Z − 1 [n]) of a structure.

    With ``niggli`` the cell is Niggli-reduced first (``get_reduced_structure``) and rebuilt from
    its lengths and angles, so equal crystals get equal parameters whatever cell they came in.
    Float64 parameters and coordinates. Disordered sites (partial occupancies) are an error.
    """
    if not structure.is_ordered:
        raise ValueError(f"structure {structure.composition.reduced_formula} has disordered "
                         "sites (partial occupancies); order it first")
    check_cell(structure.lattice)
    if niggli:
        structure = structure.get_reduced_structure()
    lat = structure.lattice
    lengths = torch.tensor(lat.abc, dtype=torch.float64)
    angles = torch.tensor(lat.angles, dtype=torch.float64)
    z = torch.tensor([site.specie.Z for site in structure], dtype=torch.long)
    if bool((z < 1).any()) or bool((z > NUM_ELEMENTS).any()):
        raise ValueError(f"atomic numbers must lie in [1, {NUM_ELEMENTS}], got "
                         f"{sorted(set(z.tolist()))}")
    frac = torch.remainder(torch.tensor(structure.frac_coords, dtype=torch.float64), 1.0)
    return lattice_to_params(lengths, angles), frac, z - 1


def structures_to_batch(structures: Sequence[Structure], *, niggli: bool = True,
                        dtype: torch.dtype = torch.float32) -> ProductPoint:
    """A ragged batch of crystals (see the module docstring) from pymatgen structures."""
    if not structures:
        raise ValueError("structures must hold at least one structure")
    arrays = [structure_arrays(s, niggli=niggli) for s in structures]
    return batch_from_arrays([a[0] for a in arrays], [a[1] for a in arrays],
                             [a[2] for a in arrays], dtype=dtype)


def batch_from_arrays(lattices: Sequence[Tensor], coords: Sequence[Tensor],
                      types: Sequence[Tensor], *, dtype: torch.dtype = torch.float32
                      ) -> ProductPoint:
    """Concatenate per-crystal arrays into a ragged :class:`ProductPoint`."""
    sizes = [int(c.shape[0]) for c in coords]
    if any(n < 1 for n in sizes):
        raise ValueError(f"every crystal needs at least one atom, got sizes {sizes}")
    return ProductPoint({"lattice": torch.stack(list(lattices)).to(dtype),
                         "coords": torch.cat(list(coords)).to(dtype),
                         "types": torch.cat(list(types)).long()},
                        segments=Segments.from_sizes(sizes), ragged=RAGGED)


def batch_to_structures(batch: ProductPoint) -> list[Structure | None]:
    """pymatgen structures of a crystal batch; None for a crystal that cannot be built.

    "Cannot be built" follows the community protocol: a non-finite value, a non-positive length
    or a cell volume below 0.1 Å³ (a collapsed cell).
    """
    from pymatgen.core import Lattice, Structure

    if not isinstance(batch, ProductPoint) or batch.segments is None:
        raise ValueError("batch must be a ProductPoint with segments (see structures_to_batch)")
    lengths, angles = lattice_from_params(batch["lattice"].detach().double().cpu())
    frac = batch["coords"].detach().double().cpu()
    z = batch["types"].detach().cpu() + 1
    # group the rows by crystal (Segments allow any row order), keeping their order within one
    order = torch.argsort(batch.segments.index.cpu(), stable=True)
    frac, z = frac[order], z[order]
    counts = batch.segments.counts().cpu()
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    out: list[Structure | None] = []
    for i, (start, n) in enumerate(zip(starts, counts.tolist(), strict=True)):
        f, zi = frac[start:start + n], z[start:start + n]
        values = torch.cat([lengths[i], angles[i], f.flatten()])
        if not bool(torch.isfinite(values).all()) or bool((lengths[i] <= 0).any()):
            out.append(None)
            continue
        try:
            lat = Lattice.from_parameters(*lengths[i].tolist(), *angles[i].tolist())
            if not math.isfinite(lat.volume) or lat.volume < 0.1:
                out.append(None)
                continue
            out.append(Structure(lat, zi.tolist(), torch.remainder(f, 1.0).numpy()))
        except (ValueError, ArithmeticError):
            out.append(None)
    return out

"""CDVAE-format crystal data sets (perov-5, carbon-24, MP-20, MPTS-52) as ragged batches.

A CDVAE CSV has one crystal per row: an unnamed index column, ``material_id``, ``cif`` and
numeric properties (``heat_ref``, ``band_gap``, ``formation_energy_per_atom``, …). The published
files load unchanged. Parsing thousands of CIFs takes a while, so the preprocessed tensors are
cached under ``cache_dir`` (default ``~/.cache/flowmatch/crystal``), keyed by the file's SHA-256
and the preprocessing version; the cache is a weights-only ``torch.save`` file, written
atomically.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from flowmatch.geometry import ProductPoint, Segments
from flowmatch.plugins.crystal.representation import (
    RAGGED,
    structure_arrays,
    structure_from_cif,
)

__all__ = ["CrystalSet", "load_cdvae_csv"]

_CACHE_VERSION = "flowmatch.crystal.csv/1"


@dataclass
class CrystalSet:
    """Crystals stored concatenated: ``lattices`` [M, 6] (float64 lattice parameters),
    ``coords`` [N, 3] fractional, ``types`` [N] tokens, ``sizes`` [M] atoms per crystal,
    ``ids`` material ids and ``properties`` (column name → [M] float64, NaN where empty)."""

    lattices: Tensor
    coords: Tensor
    types: Tensor
    sizes: Tensor
    ids: list[str]
    properties: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = torch.cumsum(self.sizes, 0) - self.sizes

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    def batch(self, indices: Sequence[int] | Tensor, *,
              dtype: torch.dtype = torch.float32) -> ProductPoint:
        """The crystals at ``indices`` as a ragged :class:`ProductPoint`."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if indices.numel() == 0:
            raise ValueError("indices must select at least one crystal")
        if int(indices.min()) < 0 or int(indices.max()) >= len(self):
            raise ValueError(f"indices must lie in [0, {len(self)}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        sizes = self.sizes[indices]
        if bool((sizes < 1).any()):
            raise ValueError("every crystal needs at least one atom")
        seg = Segments.from_sizes(sizes)
        # row r of the batch is atom (r − first row of its crystal) of crystal indices[seg[r]]
        first = torch.cumsum(sizes, 0) - sizes
        rows = (self.offsets[indices] - first)[seg.index] + torch.arange(seg.num_rows)
        return ProductPoint({"lattice": self.lattices[indices].to(dtype),
                             "coords": self.coords[rows].to(dtype),
                             "types": self.types[rows].long()}, segments=seg, ragged=RAGGED)

    def sample(self, n: int, generator: torch.Generator | None = None, *,
               properties: Sequence[str] = ()) -> ProductPoint | tuple[ProductPoint, Tensor]:
        """``n`` crystals drawn uniformly with replacement (a ``fit`` data sampler); with
        ``properties``, the pair (crystals, their values [n, P], float64, NaN where unknown)."""
        # the generator may live on an accelerator (fit draws everything from one generator)
        device = generator.device if generator is not None else None
        idx = torch.randint(len(self), (n,), generator=generator, device=device).cpu()
        if not properties:
            return self.batch(idx)
        missing = [p for p in properties if p not in self.properties]
        if missing:
            raise ValueError(f"no property {missing} in this data (it has "
                             f"{sorted(self.properties)})")
        return self.batch(idx), torch.stack([self.properties[p][idx] for p in properties], 1)

    @staticmethod
    def concat(parts: Sequence[CrystalSet]) -> CrystalSet:
        """One CrystalSet of several (e.g. two CSV files); properties kept where all have them."""
        if not parts:
            raise ValueError("concat needs at least one CrystalSet")
        shared = set.intersection(*(set(p.properties) for p in parts))
        return CrystalSet(torch.cat([p.lattices for p in parts]),
                          torch.cat([p.coords for p in parts]),
                          torch.cat([p.types for p in parts]),
                          torch.cat([p.sizes for p in parts]),
                          [i for p in parts for i in p.ids],
                          {k: torch.cat([p.properties[k] for p in parts]) for k in sorted(shared)})

    def subset(self, indices: Sequence[int] | Tensor) -> CrystalSet:
        """A CrystalSet of the crystals at ``indices`` (in that order)."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        rows = torch.cat([torch.arange(int(self.offsets[i]), int(self.offsets[i] + self.sizes[i]))
                          for i in indices.tolist()]) if indices.numel() else \
            torch.zeros(0, dtype=torch.long)
        return CrystalSet(self.lattices[indices], self.coords[rows], self.types[rows],
                          self.sizes[indices], [self.ids[i] for i in indices.tolist()],
                          {k: v[indices] for k, v in self.properties.items()})


def _default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "flowmatch" / "crystal"


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def load_cdvae_csv(path: str | os.PathLike[str], *, niggli: bool = True,
                   cache_dir: str | os.PathLike[str] | None = None, cache: bool = True,
                   progress: bool = False) -> CrystalSet:
    """Read a CDVAE CSV file into a :class:`CrystalSet` (cached; see the module docstring).

    Every row's CIF is parsed with pymatgen and Niggli-reduced (``niggli``). A row whose CIF
    cannot be parsed is an error naming the row and the material id — never skipped silently.
    Numeric columns other than the index become ``properties``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"crystal data file {str(path)!r} does not exist")
    raw = path.read_bytes()
    key = hashlib.sha256(raw + f"{_CACHE_VERSION}|niggli={niggli}".encode()).hexdigest()[:24]
    cache_file = Path(cache_dir or _default_cache_dir()) / f"{path.stem}-{key}.pt"
    if cache and cache_file.is_file():
        try:
            state = torch.load(cache_file, weights_only=True)
            if state.get("format") == _CACHE_VERSION:
                return CrystalSet(state["lattices"], state["coords"], state["types"],
                                  state["sizes"], list(state["ids"]), dict(state["properties"]))
        except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt, never trusted
            pass

    # CIF cells exceed csv's default field limit; the limit is process-wide, so put it back
    previous_limit = csv.field_size_limit(sys.maxsize)
    try:
        rows = list(csv.DictReader(raw.decode("utf-8").splitlines(keepends=True)))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{str(path)!r} is not a readable CSV file: {err}") from err
    finally:
        csv.field_size_limit(previous_limit)
    if not rows:
        raise ValueError(f"{str(path)!r} holds no crystals")
    for i, row in enumerate(rows):
        # DictReader fills a short row with None and files an overlong one's extras under None
        if None in row or any(v is None for v in row.values()):
            raise ValueError(f"{str(path)!r} row {i}: {len([v for v in row.values() if v])} "
                             f"fields, the header has {len([k for k in row if k is not None])}")
    if "cif" not in rows[0]:
        raise ValueError(f"{str(path)!r} has no 'cif' column (columns: {list(rows[0])}); "
                         "expected a CDVAE-format CSV")
    numeric = [c for c in rows[0] if c not in ("", "cif", "material_id")
               and all(_as_float(r[c]) is not None or r[c] == "" for r in rows[:50])]
    from tqdm.auto import tqdm

    lattices, coords, types, sizes, ids = [], [], [], [], []
    for i, row in enumerate(tqdm(rows, disable=not progress, desc=path.name, leave=False)):
        ident = row.get("material_id") or str(i)
        try:
            structure = structure_from_cif(row["cif"])
            lat, frac, tok = structure_arrays(structure, niggli=niggli)
        except ValueError as err:
            raise ValueError(f"{str(path)!r} row {i} (material_id {ident!r}): {err}") from err
        lattices.append(lat)
        coords.append(frac)
        types.append(tok)
        sizes.append(int(tok.shape[0]))
        ids.append(str(ident))
    properties = {}
    for c in numeric:
        values = [_as_float(r[c]) for r in rows]
        properties[c] = torch.tensor([math.nan if v is None else v for v in values],
                                     dtype=torch.float64)
    data = CrystalSet(torch.stack(lattices), torch.cat(coords), torch.cat(types),
                      torch.tensor(sizes, dtype=torch.long), ids, properties)
    if cache:
        from flowmatch.training.checkpoint import save_checkpoint

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(cache_file, {"format": _CACHE_VERSION, "lattices": data.lattices,
                                     "coords": data.coords, "types": data.types,
                                     "sizes": data.sizes, "ids": data.ids,
                                     "properties": data.properties})
    return data

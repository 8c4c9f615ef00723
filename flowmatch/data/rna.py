"""RNA backbone torsion angles on the flat 7-torus T⁷.

The file is tab-separated without a header: PDB id, base letter, then the seven torsion angles
α β γ δ ε ζ χ of a nucleotide in degrees (the "RNA" data set of Riemannian diffusion and
Riemannian flow matching papers; 9,478 rows in the distributed version). Angles are returned in
radians wrapped to [0, 2π), the coordinates of :class:`~flowmatch.geometry.FlatTorus`; test
NLLs in the literature are in nats with respect to the flat volume of [0, 2π)⁷ (whose total
volume is (2π)⁷, so the uniform density has NLL 7 log 2π ≈ 12.86).

Splits: :func:`flowmatch.data.earth.seeded_split` (random 80/10/10, as in the literature).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from flowmatch.data.earth import _clip, _read_text

RNA_ANGLES: tuple[str, ...] = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "chi")


def load_rna(
    path: str | Path, *, dtype: torch.dtype = torch.float32, return_meta: bool = False
) -> Tensor | tuple[Tensor, list[str], list[str]]:
    """Load the torsion-angle table as points of T⁷: radians in [0, 2π), shape [N, 7].

    With ``return_meta`` also returns the PDB ids and base letters of the rows.
    """
    path = Path(path)
    text = _read_text(path, "RNA torsion table")
    angles, ids, bases = [], [], []
    # \n, \r\n and \r end lines (as the universal newlines of open() did); str.splitlines
    # would also split inside a line at \x0b, \x1c and other separators
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 + len(RNA_ANGLES):
            raise ValueError(
                f"{path}:{lineno}: expected {2 + len(RNA_ANGLES)} tab-separated fields "
                f"(pdb id, base, 7 angles), got {len(parts)}"
            )
        try:
            row = [float(v) for v in parts[2:]]
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: cannot parse angles "
                             f"{_clip(parts[2:])}") from err
        if not all(math.isfinite(v) and -360.0 <= v <= 360.0 for v in row):
            raise ValueError(f"{path}:{lineno}: angles must be finite degrees in "
                             f"[-360, 360], got {row}")
        angles.append(row)
        ids.append(parts[0])
        bases.append(parts[1])
    if not angles:
        raise ValueError(f"{path}: no rows")
    rad = torch.remainder(torch.deg2rad(torch.tensor(angles, dtype=torch.float64)), 2 * math.pi)
    # a value a hair below 2π can round up to 2π in float32: fold it back to 0
    rad = rad.to(dtype)
    rad = torch.where(rad >= 2 * math.pi, torch.zeros_like(rad), rad)
    if return_meta:
        return rad, ids, bases
    return rad

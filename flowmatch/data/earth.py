"""Earth-science event catalogues on the sphere S² (volcano, earthquake, flood, fire).

These are the standard Riemannian density-estimation benchmarks of Mathieu & Nickel (2020),
reused by Riemannian score-based models and Riemannian flow matching. Each file is a CSV with a
``lat,lon`` header and one event per row, angles in degrees. Points are returned as unit vectors
in R³ (x = cos φ cos λ, y = cos φ sin λ, z = sin φ for latitude φ and longitude λ), the ambient
coordinates of :class:`~flowmatch.geometry.Sphere`.

The literature reports test negative log-likelihoods (nats, with respect to the area measure of
the unit sphere) on seeded random 80/10/10 train/validation/test splits; :func:`seeded_split`
makes such splits reproducibly. The catalogues repeat locations (volcano: 827 events at 267
distinct places), so a held-out event often sits exactly on a training event and a model can
lower the test NLL without bound by concentrating mass on the training points.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch
from torch import Tensor

EARTH_DATASETS: tuple[str, ...] = ("volcano", "earthquake", "flood", "fire")


def latlon_to_unit(lat_deg: Tensor, lon_deg: Tensor) -> Tensor:
    """Latitude/longitude in degrees (shape [...]) to unit vectors of shape [..., 3]."""
    lat, lon = torch.deg2rad(lat_deg), torch.deg2rad(lon_deg)
    c = torch.cos(lat)
    return torch.stack([c * torch.cos(lon), c * torch.sin(lon), torch.sin(lat)], dim=-1)


def unit_to_latlon(x: Tensor) -> tuple[Tensor, Tensor]:
    """Unit vectors [..., 3] to (latitude, longitude) in degrees, longitude in (−180, 180]."""
    lat = torch.rad2deg(torch.atan2(x[..., 2], torch.linalg.vector_norm(x[..., :2], dim=-1)))
    lon = torch.rad2deg(torch.atan2(x[..., 1], x[..., 0]))
    return lat, lon


def earth_path(root: str | Path, name: str) -> Path:
    """``root/name.csv`` for one of :data:`EARTH_DATASETS` (root is the ``earth/`` folder)."""
    if name not in EARTH_DATASETS:
        raise ValueError(f"name must be one of {EARTH_DATASETS}, got {name!r}")
    return Path(root) / f"{name}.csv"


def _read_text(path: Path, what: str) -> str:
    """The whole of a UTF-8 text file (a leading byte-order mark dropped), or a one-line error.

    ``FileNotFoundError`` when ``path`` is missing or not a regular file, ``ValueError`` naming
    the byte offset when it is not UTF-8 (binary data, another encoding). The data files are
    small (the largest, RNA, is 0.6 MB), so they are read at once.
    """
    if not path.is_file():
        why = "is a directory" if path.is_dir() else (
            "is not a regular file" if path.exists() else "not found")
        raise FileNotFoundError(f"{what} {why}: {path}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: the {what} is not UTF-8 text ({err.reason} at byte "
                         f"{err.start})") from None


def load_earth_latlon(path: str | Path, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """The raw (latitude, longitude) table of a catalogue in degrees, shape [N, 2].

    Malformed files raise ``ValueError`` naming the file and line (a missing one
    ``FileNotFoundError``); extra columns after lat, lon are ignored.
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(_read_text(path, "earth catalogue"), newline=""))
    rows = []
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:2] != ["lat", "lon"]:
            raise ValueError(f"{path}: expected a 'lat,lon' header, got {header[:8]}")
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            try:
                lat, lon = float(row[0]), float(row[1])
            except (ValueError, IndexError) as err:
                raise ValueError(f"{path}:{lineno}: cannot parse lat,lon from "
                                 f"{_clip(row)}") from err
            if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
                raise ValueError(f"{path}:{lineno}: latitude must be in [-90, 90], got {lat}")
            if not (math.isfinite(lon) and -180.0 <= lon <= 360.0):
                raise ValueError(f"{path}:{lineno}: longitude must be in [-180, 360], got {lon}")
            rows.append((lat, lon))
    except csv.Error as err:  # e.g. a field beyond csv's size limit: not a catalogue
        raise ValueError(f"{path}:{reader.line_num}: not a lat,lon CSV ({err})") from None
    if not rows:
        raise ValueError(f"{path}: no events")
    return torch.tensor(rows, dtype=dtype)


def _clip(row: list[str], limit: int = 80) -> str:
    """repr of a parsed row, shortened for an error message."""
    text = repr(row)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_earth(path: str | Path, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Load a ``lat,lon`` CSV as unit vectors on S², shape [N, 3].

    The conversion runs in float64 and the result is renormalised after the cast, so every row
    has unit norm to the precision of ``dtype``.
    """
    x = latlon_to_unit(*load_earth_latlon(path, dtype=torch.float64).unbind(-1))
    x = x.to(dtype)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def seeded_split(
    n: int, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[Tensor, Tensor, Tensor]:
    """Random (train, validation, test) index tensors of a data set of ``n`` rows.

    A permutation drawn from ``torch.Generator().manual_seed(seed)``; the validation and test
    sets hold round(f·n) rows each and the training set the rest, so the three are disjoint and
    cover every row. The same (n, seed) always gives the same split, on any machine.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ValueError(f"n must be an integer ≥ 3, got {n!r}")
    if len(fractions) != 3 or any(not (0 <= f <= 1) for f in fractions) \
            or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three numbers in [0, 1] summing to 1, got {fractions}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_val, n_test = round(fractions[1] * n), round(fractions[2] * n)
    n_train = n - n_val - n_test
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]

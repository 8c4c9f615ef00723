"""Earth (S²) and RNA (T⁷) loaders and the seeded 80/10/10 splits."""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.data.earth import (
    EARTH_DATASETS,
    earth_path,
    latlon_to_unit,
    load_earth,
    load_earth_latlon,
    seeded_split,
    unit_to_latlon,
)
from flowmatch.data.rna import load_rna
from flowmatch.geometry.sphere import Sphere
from flowmatch.geometry.torus import FlatTorus

SIZES = {"volcano": 827, "earthquake": 6120, "flood": 4875, "fire": 12809}


@pytest.mark.parametrize("name", EARTH_DATASETS)
def test_earth_catalogues_load_as_unit_vectors(shared_data, name):
    x = load_earth(earth_path(shared_data / "sphere" / "earth", name))
    assert x.shape == (SIZES[name], 3) and x.dtype == torch.float32
    Sphere(3).check_point(x)
    # the conversion inverts: back to the file's degrees
    raw = load_earth_latlon(earth_path(shared_data / "sphere" / "earth", name))
    lat, lon = unit_to_latlon(latlon_to_unit(raw[:, 0], raw[:, 1]))
    torch.testing.assert_close(lat, raw[:, 0], atol=1e-9, rtol=0)
    dlon = torch.remainder(lon - raw[:, 1] + 180, 360) - 180  # longitude is periodic
    poles = raw[:, 0].abs() > 90 - 1e-9
    assert float(dlon[~poles].abs().max()) < 1e-9


def test_volcano_has_267_distinct_locations(shared_data):
    x = load_earth(shared_data / "sphere" / "earth" / "volcano.csv", dtype=torch.float64)
    assert torch.unique(x, dim=0).shape[0] == 267


def test_latlon_conversion_known_points():
    lat = torch.tensor([0.0, 0.0, 90.0, -90.0, 45.0], dtype=torch.float64)
    lon = torch.tensor([0.0, 90.0, 10.0, 0.0, 180.0], dtype=torch.float64)
    s = math.sqrt(0.5)
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [-s, 0, s]],
                            dtype=torch.float64)
    torch.testing.assert_close(latlon_to_unit(lat, lon), expected, atol=1e-15, rtol=0)


def test_rna_loads_as_points_of_the_7_torus(shared_data):
    x, ids, bases = load_rna(shared_data / "torus" / "rna.tsv", return_meta=True)
    assert x.shape == (9478, 7) and len(ids) == len(bases) == 9478
    FlatTorus(7).check_point(x)
    assert float(x.min()) >= 0 and float(x.max()) < 2 * math.pi
    # first row of the file: 402d G, α = −69.168933°, β = 173.922722°
    assert ids[0] == "402d" and bases[0] == "G"
    expected = torch.tensor([math.radians(-69.168933) + 2 * math.pi, math.radians(173.922722)],
                            dtype=torch.float64)
    torch.testing.assert_close(x[0, :2].double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [3, 10, 827, 9478])
def test_seeded_split_is_a_disjoint_cover_and_reproducible(n):
    tr, va, te = seeded_split(n, seed=4)
    allidx = torch.cat([tr, va, te])
    assert torch.equal(torch.sort(allidx).values, torch.arange(n))
    assert va.numel() == round(0.1 * n) and te.numel() == round(0.1 * n)
    again = seeded_split(n, seed=4)
    assert all(torch.equal(a, b) for a, b in zip((tr, va, te), again, strict=True))
    if n > 10:
        other = seeded_split(n, seed=5)
        assert not torch.equal(te, other[2])


def test_malformed_files_raise_with_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("lat,lon\n10,20\n95,0\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: latitude"):
        load_earth(bad)
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        load_earth(bad)
    tsv = tmp_path / "rna.tsv"
    tsv.write_text("1abc\tG\t1\t2\t3\n")
    with pytest.raises(ValueError, match=r"rna.tsv:1: expected 9"):
        load_rna(tsv)
    tsv.write_text("1abc\tG\t1\t2\t3\t4\t5\t6\tnan\n")
    with pytest.raises(ValueError, match="finite"):
        load_rna(tsv)
    with pytest.raises(FileNotFoundError):
        load_rna(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="name must be one of"):
        earth_path(tmp_path, "tsunami")
    with pytest.raises(ValueError, match="fractions"):
        seeded_split(10, 0, (0.5, 0.5, 0.5))

"""Crystal representation: lattice parameters, Structure ↔ ragged batch, CDVAE CSV loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("pymatgen")

from pymatgen.analysis.structure_matcher import StructureMatcher  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from flowmatch.plugins.crystal import (  # noqa: E402
    batch_to_structures,
    crystal_product,
    lattice_from_params,
    lattice_to_params,
    load_cdvae_csv,
    structures_to_batch,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "crystal"


def perovskite() -> Structure:
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def triclinic() -> Structure:
    lat = Lattice.from_parameters(4.1, 5.3, 6.2, 75.0, 85.0, 100.0)
    return Structure(lat, ["Li", "Fe", "P", "O"],
                     [[0.1, 0.2, 0.3], [0.6, 0.1, 0.9], [0.3, 0.7, 0.5], [0.9, 0.4, 0.05]])


def test_lattice_parameters_round_trip_and_cover_the_niggli_range():
    lengths = torch.tensor([[3.0, 4.5, 20.0], [1.2, 1.2, 1.2]], dtype=torch.float64)
    angles = torch.tensor([[60.0, 90.0, 120.0], [89.5, 70.2, 109.9]], dtype=torch.float64)
    y = lattice_to_params(lengths, angles)
    back_l, back_a = lattice_from_params(y)
    assert torch.allclose(back_l, lengths, rtol=1e-12) and torch.allclose(back_a, angles,
                                                                          atol=1e-9)
    assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match=r"lattice angles must lie in \(59.9, 120.1\)"):
        lattice_to_params(lengths, angles + torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="lengths must be positive"):
        lattice_to_params(-lengths, angles)


@pytest.mark.parametrize("make", [perovskite, triclinic])
def test_structures_survive_the_round_trip_through_a_batch(make):
    structures = [make(), perovskite(), triclinic()]
    batch = structures_to_batch(structures, dtype=torch.float64)
    assert batch.num_samples == 3
    assert batch.segments.counts().tolist() == [len(s) for s in structures]
    crystal_product().check_point(batch)
    rebuilt = batch_to_structures(batch)
    matcher = StructureMatcher()
    for a, b in zip(structures, rebuilt, strict=True):
        assert b is not None and matcher.fit(a, b)
        assert math.isclose(a.volume, b.volume, rel_tol=1e-6)
        assert a.composition == b.composition


def test_structures_follow_the_segments_whatever_the_row_order():
    # Segments allow rows in any order: shuffling the rows (with their crystal ids) must give
    # the same crystals back
    from flowmatch.geometry import ProductPoint, Segments

    structures = [triclinic(), perovskite(), triclinic()]
    batch = structures_to_batch(structures, dtype=torch.float64)
    perm = torch.randperm(batch.segments.num_rows, generator=torch.Generator().manual_seed(3))
    shuffled = ProductPoint({"lattice": batch["lattice"], "coords": batch["coords"][perm],
                             "types": batch["types"][perm]},
                            segments=Segments(batch.segments.index[perm], 3),
                            ragged=("coords", "types"))
    matcher = StructureMatcher()
    for a, b in zip(structures, batch_to_structures(shuffled), strict=True):
        assert b is not None and a.composition == b.composition and matcher.fit(a, b)


def test_crystal_set_batches_equal_the_crystals_stacked_one_by_one():
    from flowmatch.plugins.crystal import CrystalSet

    structures = [triclinic(), perovskite(), triclinic(), perovskite()]
    whole = structures_to_batch(structures, dtype=torch.float64)
    data = CrystalSet(whole["lattice"], whole["coords"], whole["types"],
                      whole.segments.counts(), ["a", "b", "c", "d"])
    picked = [3, 0, 0, 2]
    batch = data.batch(picked, dtype=torch.float64)
    expected = structures_to_batch([structures[i] for i in picked], dtype=torch.float64)
    assert batch.segments == expected.segments
    for k in ("lattice", "coords", "types"):
        assert torch.equal(batch[k], expected[k]), k
    drawn = data.sample(6, torch.Generator().manual_seed(0))
    assert drawn.num_samples == 6 and drawn["coords"].dtype == torch.float32


def test_unbuildable_crystals_come_back_as_none_and_bad_input_is_named():
    batch = structures_to_batch([perovskite(), perovskite()])
    batch["lattice"][1, 0] = float("nan")
    out = batch_to_structures(batch)
    assert out[0] is not None and out[1] is None
    disordered = perovskite()
    disordered.replace_species({"Sr": {"Sr": 0.5, "Ba": 0.5}})
    with pytest.raises(ValueError, match="disordered"):
        structures_to_batch([disordered])


def test_loader_parses_names_malformed_rows_and_caches(tmp_path):
    good = perovskite().to(fmt="cif")
    text = ",material_id,cif,heat_ref\n" + f'0,mp-1,"{good}",1.5\n' + f'1,mp-2,"{good}",\n'
    path = tmp_path / "tiny.csv"
    path.write_text(text)
    data = load_cdvae_csv(path, cache_dir=tmp_path / "cache")
    assert len(data) == 2 and data.ids == ["mp-1", "mp-2"]
    assert data.properties["heat_ref"][0] == 1.5 and math.isnan(data.properties["heat_ref"][1])
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = load_cdvae_csv(path, cache_dir=tmp_path / "cache")
    assert torch.equal(again.coords, data.coords) and again.ids == data.ids
    both = type(data).concat([data, again])
    assert len(both) == 4 and both.properties["heat_ref"].shape == (4,)
    assert torch.equal(both.batch([2])["coords"], data.batch([0])["coords"])
    batch = data.sample(5, torch.Generator().manual_seed(0))
    assert batch.num_samples == 5 and batch["coords"].shape == (25, 3)
    bad = tmp_path / "bad.csv"
    bad.write_text(text + '2,mp-3,"data_broken\\n_cell_length_a oops",0.0\n')
    with pytest.raises(ValueError, match=r"row 2 \(material_id 'mp-3'\): malformed CIF"):
        load_cdvae_csv(bad, cache=False)
    with pytest.raises(FileNotFoundError):
        load_cdvae_csv(tmp_path / "missing.csv")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/crystal is absent (fresh clone)")
def test_the_mp20_sample_loads_with_its_properties(tmp_path):
    data = load_cdvae_csv(SHARED / "mp_20_sample" / "val.csv", cache_dir=tmp_path)
    assert len(data) == 123
    assert int(data.sizes.max()) <= 20
    assert {"formation_energy_per_atom", "band_gap"} <= set(data.properties)
    batch = data.batch(range(len(data)))
    crystal_product().check_point(batch)
    lengths, angles = lattice_from_params(batch["lattice"].double())
    assert bool((angles > 59.9).all()) and bool((angles < 120.1).all())

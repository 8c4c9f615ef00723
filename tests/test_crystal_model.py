"""CrystalVelocityNet symmetries: permutation-equivariant, translation-, image- and
rotation-invariant, and a mixed-size batch equals its crystals run one by one."""

from __future__ import annotations

import pytest
import torch

from flowmatch.geometry import ProductPoint, Segments
from flowmatch.plugins.crystal.model import CrystalVelocityNet

SIZES = [2, 9, 20, 5]
ATOL = 2e-5  # float32 network outputs of order 1


def batch(seed: int = 0, sizes=SIZES) -> ProductPoint:
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    return ProductPoint({"lattice": torch.randn(len(sizes), 6, generator=g),
                         "coords": torch.rand(n, 3, generator=g),
                         "types": torch.randint(100, (n,), generator=g)},
                        segments=Segments.from_sizes(sizes), ragged=("coords", "types"))


@pytest.fixture(scope="module")
def net() -> CrystalVelocityNet:
    torch.manual_seed(0)
    return CrystalVelocityNet(hidden=32, layers=2, num_freqs=8, predict_types=True).eval()


def test_outputs_have_per_atom_and_per_crystal_shapes(net):
    x = batch()
    out = net(x, torch.rand(4))
    assert out["coords"].shape == (36, 3) and out["lattice"].shape == (4, 6)
    assert out["types"].shape == (36, 100)
    with pytest.raises(ValueError, match=r"one time per crystal, shape \[4\]"):
        net(x, torch.rand(36))


def test_permuting_atoms_permutes_the_atom_outputs(net):
    x, t = batch(1), torch.rand(4)
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(2))
    y = ProductPoint({"lattice": x["lattice"], "coords": x["coords"][perm],
                      "types": x["types"][perm]},
                     segments=Segments(x.segments.index[perm], 4), ragged=x.ragged)
    a, b = net(x, t), net(y, t)
    assert torch.allclose(a["coords"][perm], b["coords"], atol=ATOL)
    assert torch.allclose(a["types"][perm], b["types"], atol=ATOL)
    assert torch.allclose(a["lattice"], b["lattice"], atol=ATOL)


def test_translations_and_periodic_images_change_nothing(net):
    x, t = batch(3), torch.rand(4)
    g = torch.Generator().manual_seed(4)
    shift = x.segments.broadcast(torch.rand(4, 3, generator=g))
    images = torch.randint(-3, 4, (36, 3), generator=g).float()
    for coords in (torch.remainder(x["coords"] + shift, 1.0), x["coords"] + images):
        y = x.like({**x, "coords": coords})
        a, b = net(x, t), net(y, t)
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_rotating_the_cartesian_frame_changes_nothing(net):
    pymatgen = pytest.importorskip("pymatgen.core")
    from flowmatch.plugins.crystal import structures_to_batch

    lat = pymatgen.Lattice.from_parameters(4.1, 5.3, 6.2, 75.0, 85.0, 100.0)
    s = pymatgen.Structure(lat, ["Li", "Fe", "P", "O"],
                           [[0.1, 0.2, 0.3], [0.6, 0.1, 0.9], [0.3, 0.7, 0.5], [0.9, 0.4, 0.05]])
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(5),
                                       dtype=torch.float64))
    rotated = pymatgen.Structure(pymatgen.Lattice(lat.matrix @ q.numpy().T), s.species,
                                 s.frac_coords)
    t = torch.tensor([0.4])
    a = net(structures_to_batch([s]), t)
    b = net(structures_to_batch([rotated]), t)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_a_mixed_batch_equals_its_crystals_one_by_one(net):
    x, t = batch(6), torch.rand(4)
    out = net(x, t)
    for i in range(4):
        seg, rows = x.segments.select([i])
        xi = ProductPoint({"lattice": x["lattice"][i:i + 1], "coords": x["coords"][rows],
                           "types": x["types"][rows]}, segments=seg, ragged=x.ragged)
        alone = net(xi, t[i:i + 1])
        assert torch.allclose(alone["coords"], out["coords"][rows], atol=ATOL)
        assert torch.allclose(alone["types"], out["types"][rows], atol=ATOL)
        assert torch.allclose(alone["lattice"], out["lattice"][i:i + 1], atol=ATOL)

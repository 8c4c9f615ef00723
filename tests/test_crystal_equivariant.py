"""EquivariantCrystalNet symmetries and its periodic neighbour search.

The network works in Cartesian space, so rotations are tested on :meth:`cartesian` with a
rotated lattice matrix: the Cartesian vectors must rotate, the fractional velocities and the
lattice outputs must not change. Permutations, a global fractional translation, the choice of
periodic image of each atom and batching are tested on the public ``net(x, t)``.

Tolerances. In float64 every output is a smooth function of inputs that agree to ~1e-15
(the rotated lattice matrix, coordinates shifted by integers, sums in another order), and a
3-layer network of width ≤ 16 amplifies that by far less than 10⁵: 1e-9 leaves a wide margin.
In float32 the inputs already differ by ~1e-7 (|f + 3| rounds at 2.4e-7), amplified the same
way: 1e-4 on outputs of order 1.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from flowmatch.geometry import ProductPoint, Segments
from flowmatch.plugins.crystal.equivariant import (
    EdgeTensorProduct,
    EquivariantCrystalNet,
    lattice_matrix,
    periodic_edges,
)
from flowmatch.plugins.crystal.representation import lattice_to_params

SIZES = [1, 5, 12, 3]
N = sum(SIZES)
ATOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def batch(seed: int = 0, sizes=SIZES, dtype=torch.float64) -> ProductPoint:
    """Random crystals with realistic cells (lengths 3.5–7 Å, angles 70°–110°)."""
    g = torch.Generator().manual_seed(seed)
    s, n = len(sizes), sum(sizes)
    lengths = 3.5 + 3.5 * torch.rand(s, 3, generator=g, dtype=torch.float64)
    angles = 70 + 40 * torch.rand(s, 3, generator=g, dtype=torch.float64)
    return ProductPoint({"lattice": lattice_to_params(lengths, angles).to(dtype),
                         "coords": torch.rand(n, 3, generator=g, dtype=torch.float64).to(dtype),
                         "types": torch.randint(101, (n,), generator=g)},
                        segments=Segments.from_sizes(sizes), ragged=("coords", "types"))


def rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q


def make_net(dtype=torch.float64) -> EquivariantCrystalNet:
    torch.manual_seed(0)
    net = EquivariantCrystalNet(hidden=16, layers=3, lmax=2, cutoff=4.5, num_basis=8,
                                num_states=101, predict_types=True)
    return net.to(dtype).eval()


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def net() -> EquivariantCrystalNet:
    return make_net()


def close(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    for k in a:
        err = float((a[k] - b[k]).abs().max())
        assert err < atol, f"{k}: max deviation {err:.2e} ≥ {atol:g}"


def test_outputs_have_per_atom_and_per_crystal_shapes(net):
    x = batch()
    out = net(x, torch.rand(4, dtype=torch.float64))
    assert out["coords"].shape == (N, 3) and out["lattice"].shape == (4, 6)
    assert out["types"].shape == (N, 100)
    assert all(bool(torch.isfinite(v).all()) for v in out.values())
    assert float(out["coords"].abs().max()) > 1e-4  # not trivially zero
    with pytest.raises(ValueError, match=r"one time per crystal, shape \[4\]"):
        net(x, torch.rand(N))


def test_lattice_matrix_has_the_lengths_and_angles_it_was_given():
    lengths = torch.tensor([[4.1, 5.3, 6.2], [3.0, 3.0, 3.0]], dtype=torch.float64)
    angles = torch.tensor([[75.0, 85.0, 100.0], [90.0, 90.0, 90.0]], dtype=torch.float64)
    m = lattice_matrix(lattice_to_params(lengths, angles))
    assert torch.allclose(m.norm(dim=-1), lengths, atol=1e-12)
    unit = m / m.norm(dim=-1, keepdim=True)
    cosines = torch.stack([(unit[:, 1] * unit[:, 2]).sum(-1), (unit[:, 0] * unit[:, 2]).sum(-1),
                           (unit[:, 0] * unit[:, 1]).sum(-1)], -1)
    assert torch.allclose(torch.rad2deg(torch.acos(cosines)), angles, atol=1e-9)
    assert bool((torch.linalg.det(m) > 0).all())


@pytest.mark.parametrize("seed", [0, 1])
def test_neighbour_search_finds_exactly_the_images_within_the_cutoff(seed):
    # brute force: every offset in [-4, 4]^3 of every pair, kept when closer than the cutoff
    x = batch(seed, sizes=[2, 7])
    lat, coords, seg = lattice_matrix(x["lattice"]), x["coords"], x.segments
    cutoff = 5.0
    i, j, vec = periodic_edges(lat, coords, seg, cutoff)
    found = sorted((int(a), int(b), round(float(v[0]), 9), round(float(v[1]), 9),
                    round(float(v[2]), 9)) for a, b, v in zip(i, j, vec, strict=True))
    expected = []
    for a, b in zip(*seg.pairs(self_loops=True), strict=True):
        s = int(seg.index[a])
        for n in itertools.product(range(-4, 5), repeat=3):
            if a == b and n == (0, 0, 0):
                continue
            v = (coords[b] - coords[a] + torch.tensor(n, dtype=coords.dtype)) @ lat[s]
            if float(v.norm()) < cutoff:
                expected.append((int(a), int(b), *(round(float(c), 9) for c in v)))
    assert found == sorted(expected)
    assert len(found) > 5 * x.segments.num_rows  # a real neighbourhood, not a handful


def test_a_flat_cell_is_capped_by_max_images_the_same_way_for_every_image_choice():
    # α = β = γ = 119°: a nearly flat (noisy) cell whose offsets max_images caps; the kept
    # edges still depend only on the atoms' positions modulo the lattice
    x = batch(2, sizes=[3])
    x = x.like({**x, "lattice": lattice_to_params(
        torch.tensor([[4.0, 4.0, 4.0]], dtype=torch.float64),
        torch.tensor([[119.0, 119.0, 119.0]], dtype=torch.float64))})
    lat = lattice_matrix(x["lattice"])
    i, j, vec = periodic_edges(lat, x["coords"], x.segments, 5.0, max_images=2)
    shifted = x["coords"] + torch.tensor([[3.0, -2.0, 1.0], [0, 0, 0], [-1.0, 0, 5.0]],
                                         dtype=torch.float64)
    i2, j2, vec2 = periodic_edges(lat, shifted, x.segments, 5.0, max_images=2)
    key = lambda a, b, v: sorted(zip(a.tolist(), b.tolist(),  # noqa: E731
                                     v.round(decimals=9).tolist(), strict=True))
    assert key(i, j, vec) == key(i2, j2, vec2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotating_the_cartesian_frame_rotates_vectors_and_keeps_fractional_outputs(dtype):
    net = make_net(dtype)
    x, t = batch(3, dtype=dtype), torch.rand(4, dtype=dtype)
    lat = lattice_matrix(x["lattice"].double())
    rot = rotation(4)
    args = (x["coords"], x["types"], t, x.segments, x["lattice"])
    a = net.cartesian(lat.to(dtype), *args)
    b = net.cartesian((lat @ rot.T).to(dtype), *args)  # every lattice vector a ↦ R a
    assert float(a["vectors"].abs().max()) > 1e-3
    close({"vectors": a["vectors"] @ rot.T.to(dtype), "lattice": a["lattice"],
           "types": a["types"]}, b, ATOL[dtype])

    def fractional(out, m):
        unit = m / torch.linalg.det(m).abs().pow(1 / 3)[:, None, None]
        return torch.einsum("nc,nck->nk", out["vectors"].double(),
                            x.segments.broadcast(torch.linalg.inv(unit)))

    frac = fractional(a, lat)
    assert float((frac - fractional(b, lat @ rot.T)).abs().max()) < ATOL[dtype]
    # the public forward uses the canonical orientation: the same fractional velocities
    assert float((net(x, t)["coords"].double() - frac).abs().max()) < ATOL[dtype]


def test_inversion_flips_the_fractional_velocities(net):
    # r ↦ −r maps the crystal to its inverse image: same lattice, f ↦ −f, so v_f ↦ −v_f
    x, t = batch(5), torch.rand(4, dtype=torch.float64)
    a = net(x, t)
    b = net(x.like({**x, "coords": -x["coords"]}), t)
    close({"coords": -a["coords"], "lattice": a["lattice"], "types": a["types"]}, b, 1e-9)


def test_permuting_atoms_permutes_the_atom_outputs(net):
    x, t = batch(6), torch.rand(4, dtype=torch.float64)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(7))
    y = ProductPoint({"lattice": x["lattice"], "coords": x["coords"][perm],
                      "types": x["types"][perm]},
                     segments=Segments(x.segments.index[perm], 4), ragged=x.ragged)
    a, b = net(x, t), net(y, t)
    close({"coords": a["coords"][perm], "types": a["types"][perm], "lattice": a["lattice"]}, b,
          1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_translations_and_periodic_images_change_nothing(dtype):
    net = make_net(dtype)
    x, t = batch(8, dtype=dtype), torch.rand(4, dtype=dtype)
    g = torch.Generator().manual_seed(9)
    shift = x.segments.broadcast(torch.rand(4, 3, generator=g, dtype=dtype))
    images = torch.randint(-3, 4, (N, 3), generator=g).to(dtype)
    a = net(x, t)
    for coords in (torch.remainder(x["coords"] + shift, 1.0), x["coords"] + images):
        close(a, net(x.like({**x, "coords": coords}), t), ATOL[dtype])


def test_a_mixed_batch_equals_its_crystals_one_by_one(net):
    x, t = batch(10), torch.rand(4, dtype=torch.float64)
    out = net(x, t)
    for i in range(4):
        seg, rows = x.segments.select([i])
        xi = ProductPoint({"lattice": x["lattice"][i:i + 1], "coords": x["coords"][rows],
                           "types": x["types"][rows]}, segments=seg, ragged=x.ragged)
        alone = net(xi, t[i:i + 1])
        close(alone, {"coords": out["coords"][rows], "types": out["types"][rows],
                      "lattice": out["lattice"][i:i + 1]}, 1e-9)


def test_outputs_are_continuous_as_an_image_crosses_the_cutoff(net):
    # stretch a cell until some image leaves the cutoff sphere: the envelope makes the outputs
    # change by O(stretch), not jump
    x, t = batch(11, sizes=[4]), torch.rand(1, dtype=torch.float64)
    lat = lattice_matrix(x["lattice"])
    args = (x["coords"], x["types"], t, x.segments, x["lattice"])
    # the search changes the edge set somewhere on a fine grid; find such a step
    steps = torch.linspace(0, 0.2, 401, dtype=torch.float64)
    edges = [periodic_edges(lat * (1 + float(s)), x["coords"], x.segments, net.cutoff)[0]
             .shape[0] for s in steps]
    k = next(k for k in range(400) if edges[k] != edges[k + 1])
    lo, hi = float(steps[k]), float(steps[k + 1])
    for _ in range(40):  # bisect to the crossing
        mid = (lo + hi) / 2
        n_mid = periodic_edges(lat * (1 + mid), x["coords"], x.segments, net.cutoff)[0].shape[0]
        lo, hi = (mid, hi) if n_mid == edges[k] else (lo, mid)
    below = net.cartesian(lat * (1 + lo), *args)["vectors"]
    above = net.cartesian(lat * (1 + hi), *args)["vectors"]
    assert float((below - above).abs().max()) < 1e-9


@pytest.mark.parametrize("irreps", ["8x0e", "8x0e+4x1o+2x2e", "5x0e+3x1o"])
def test_edge_tensor_product_equals_e3nns_tensor_product(irreps):
    # the specialised product must give the numbers of o3.TensorProduct with the same paths,
    # weights and normalisation, summed into the receiving atoms
    from e3nn import o3

    irreps = o3.Irreps(irreps)
    lmax = irreps.lmax or 2  # scalar inputs: still products with l = 1, 2 harmonics
    tp = EdgeTensorProduct(irreps, lmax)
    instructions = []
    for a, (_, ir) in enumerate(irreps):
        for l2, _ in tp.paths_of(ir.l, lmax):
            instructions.append((a, l2, len(instructions), "uvu", True))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn stores its Wigner 3j in the default dtype
    try:
        ref = o3.TensorProduct(irreps, o3.Irreps.spherical_harmonics(lmax), tp.irreps_out,
                               instructions, shared_weights=False, internal_weights=False)
    finally:
        torch.set_default_dtype(default)
    assert ref.weight_numel == tp.weight_numel
    g = torch.Generator().manual_seed(12)
    n, e = 7, 60
    x = torch.randn(n, irreps.dim, generator=g, dtype=torch.float64)
    sh = o3.spherical_harmonics(o3.Irreps.spherical_harmonics(lmax),
                                torch.randn(e, 3, generator=g, dtype=torch.float64),
                                normalize=True, normalization="component")
    w = torch.randn(e, tp.weight_numel, generator=g, dtype=torch.float64)
    i, j = torch.randint(n, (e,), generator=g), torch.randint(n, (e,), generator=g)
    mine = tp(x, i, j, EdgeTensorProduct.couplings(sh, lmax), w)
    theirs = torch.zeros(n, tp.irreps_out.dim, dtype=torch.float64).index_add(
        0, i, ref(x[j], sh, w))
    assert float((mine - theirs).abs().max()) < 1e-12


def test_cells_far_from_the_data_give_finite_bounded_outputs(net):
    # mid-flow states can have angles at the edge of (60°, 120°) (even flat triples), tiny or
    # huge cells: the outputs must stay finite, and the lattice velocity of moderate size
    x = batch(13)
    far = torch.tensor([[-1.0, 0.5, 3.0, 40.0, -40.0, 40.0], [0.3, 0.3, 0.3, 30.0, 30.0, 30.0],
                        [4.0, 4.0, 4.0, 0.0, 0.0, 0.0], [-2.0, -2.0, -2.0, 5.0, -5.0, 0.0]],
                       dtype=torch.float64)
    out = net(x.like({**x, "lattice": far}), torch.rand(4, dtype=torch.float64))
    assert all(bool(torch.isfinite(v).all()) for v in out.values())
    assert float(out["lattice"].abs().max()) < 100

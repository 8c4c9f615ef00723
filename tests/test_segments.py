"""Ragged batches: Segments reductions, ProductPoint layouts and per-sample Product maths.

A batch of crystals stores one lattice row per crystal and one coordinate row per atom; the
reductions must give one value per crystal, equal to what each crystal gives alone, and the
mean-free projection must remove exactly each crystal's mean velocity.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowmatch.geometry import (
    Discrete,
    Euclidean,
    FlatTorus,
    Product,
    ProductPoint,
    Segments,
    Sphere,
)
from flowmatch.paths import CondOTPath, GeodesicPath, ProductPath

SIZES = [2, 5, 3, 7]


def crystal_space(mean_free=("coords",)) -> Product:
    return Product(lattice=Euclidean(6), coords=FlatTorus(3, period=1.0),
                   types=Discrete(10, source="uniform"), mean_free=mean_free)


def crystal_batch(sizes=SIZES, seed=0, dtype=torch.float64) -> ProductPoint:
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    return ProductPoint({"lattice": torch.randn(len(sizes), 6, generator=g, dtype=dtype),
                         "coords": torch.rand(n, 3, generator=g, dtype=dtype),
                         "types": torch.randint(10, (n,), generator=g)},
                        segments=Segments.from_sizes(sizes), ragged=("coords", "types"))


def one_crystal(x: ProductPoint, i: int) -> ProductPoint:
    seg, rows = x.segments.select([i])
    return ProductPoint({"lattice": x["lattice"][i:i + 1], "coords": x["coords"][rows],
                         "types": x["types"][rows]}, segments=seg, ragged=x.ragged)


# -- Segments ---------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=6), seed=st.integers(0, 99))
def test_segment_reductions_match_a_python_loop(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    seg = Segments.from_sizes(sizes)
    perm = torch.randperm(seg.num_rows, generator=g)
    shuffled = Segments(seg.index[perm], len(sizes))  # rows need not be grouped
    v = torch.randn(seg.num_rows, 3, generator=g, dtype=torch.float64)
    for s, values in ((seg, v), (shuffled, v[perm])):
        for i, n in enumerate(sizes):
            rows = values[s.index == i]
            assert torch.allclose(s.sum(values)[i], rows.sum(0), atol=1e-12)
            expected_mean = rows.mean(0) if n else torch.zeros(3, dtype=torch.float64)
            assert torch.allclose(s.mean(values)[i], expected_mean, atol=1e-12)
        assert s.counts().tolist() == sizes
        centered = s.center(values)
        assert s.sum(centered).abs().max() < 1e-12
        # centering is a projection: idempotent
        assert torch.allclose(s.center(centered), centered, atol=1e-12)
        assert torch.equal(s.broadcast(torch.arange(len(sizes))), s.index)


def test_segments_reject_bad_input():
    with pytest.raises(ValueError, match="index must be a 1-D integer"):
        Segments(torch.zeros(3))
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 2\)"):
        Segments(torch.tensor([0, 2]), 2)
    with pytest.raises(ValueError, match="sizes must be"):
        Segments.from_sizes([2, -1])
    seg = Segments.from_sizes([1, 2])
    with pytest.raises(ValueError, match="one row per segment member"):
        seg.sum(torch.zeros(4))
    with pytest.raises(ValueError, match="one row per sample"):
        seg.broadcast(torch.zeros(3))


def test_select_and_cat_round_trip():
    seg = Segments(torch.tensor([1, 0, 1, 2, 0, 1]), 3)
    values = torch.arange(6.0)
    sub, rows = seg.select([2, 1])
    assert sub.counts().tolist() == [1, 3]
    assert values[rows].tolist() == [3.0, 0.0, 2.0, 5.0]
    both = Segments.cat([Segments.from_sizes([2, 1]), Segments.from_sizes([3])])
    assert both.index.tolist() == [0, 0, 1, 2, 2, 2] and both.num_segments == 3


# -- ProductPoint and the Product ----------------------------------------------------------------
def test_product_point_checks_its_layout():
    seg = Segments.from_sizes([2, 3])
    with pytest.raises(ValueError, match="factor 'coords' must have 5 rows"):
        ProductPoint({"lattice": torch.zeros(2, 6), "coords": torch.zeros(4, 3)},
                     segments=seg, ragged=("coords",))
    with pytest.raises(ValueError, match="factor 'lattice' must have 2 rows"):
        ProductPoint({"lattice": torch.zeros(5, 6), "coords": torch.zeros(5, 3)},
                     segments=seg, ragged=("coords",))
    with pytest.raises(ValueError, match="need segments"):
        ProductPoint({"coords": torch.zeros(5, 3)}, ragged=("coords",))
    x = crystal_batch()
    assert x.num_samples == 4 and isinstance(x, dict)


def test_reductions_are_per_crystal_and_match_crystals_one_by_one():
    space = crystal_space()
    x = crystal_batch(seed=1)
    y = space.sample_base_like(x, generator=torch.Generator().manual_seed(2))
    assert isinstance(y, ProductPoint) and y.segments is x.segments
    u = space.random_tangent(x, generator=torch.Generator().manual_seed(3))
    batch = {"dist": space.dist(x, y), "inner": space.inner(x, u),
             "base_log_prob": space.base_log_prob(y), "point_error": space.point_error(x)}
    for value in batch.values():
        assert value.shape == (4,)
    for i in range(4):
        xi, yi = one_crystal(x, i), one_crystal(y, i)
        ui = space.proju(xi, {k: u[k][i:i + 1] if k == "lattice" else
                              u[k][x.segments.index == i] for k in u})
        assert torch.allclose(space.dist(xi, yi), batch["dist"][i:i + 1], atol=1e-12)
        assert torch.allclose(space.inner(xi, ui), batch["inner"][i:i + 1], atol=1e-12)
        assert torch.allclose(space.base_log_prob(yi), batch["base_log_prob"][i:i + 1],
                              atol=1e-5)
    # the flat torus and a uniform token each contribute log(1/volume) per atom
    n = torch.tensor(SIZES, dtype=torch.float64)
    lattice = -0.5 * y["lattice"].pow(2).sum(-1) - 3 * math.log(2 * math.pi)
    expected = lattice + n * (0.0 - math.log(10))
    assert torch.allclose(batch["base_log_prob"], expected, atol=1e-5)


def test_plain_dicts_of_different_sizes_get_a_clear_error():
    space = crystal_space(mean_free=())
    x = dict(crystal_batch())
    with pytest.raises(ValueError, match="give a ProductPoint"):
        space.base_log_prob(x)


def test_mean_free_projection_removes_each_crystals_mean_velocity():
    space = crystal_space()
    x = crystal_batch(seed=4)
    u = {"lattice": torch.randn(4, 6, dtype=torch.float64),
         "coords": torch.randn(17, 3, dtype=torch.float64) + 5.0}
    v = space.proju(x, u)
    assert x.segments.mean(v["coords"]).abs().max() < 1e-12
    assert torch.equal(v["lattice"], u["lattice"])
    # an orthogonal projection: idempotent and self-adjoint
    assert torch.allclose(space.proju(x, v)["coords"], v["coords"], atol=1e-12)
    w = {"lattice": torch.randn(4, 6, dtype=torch.float64),
         "coords": torch.randn(17, 3, dtype=torch.float64)}
    lhs = space.inner(x, space.proju(x, u), w)
    rhs = space.inner(x, u, space.proju(x, w))
    assert torch.allclose(lhs, rhs, atol=1e-10)
    space.check_tangent(x, v)
    with pytest.raises(ValueError, match="zero mean per sample"):
        space.check_tangent(x, u)
    # translating every atom of a crystal is invisible to the projected velocity
    shifted = dict(u, coords=u["coords"] + x.segments.broadcast(torch.randn(4, 3).double()))
    assert torch.allclose(space.proju(x, shifted)["coords"], v["coords"], atol=1e-12)


def test_mean_free_works_on_dense_factors_and_rejects_curved_ones():
    space = Product(pos=Euclidean(3), mean_free=["pos"])
    x = {"pos": torch.randn(4, 6, 3)}  # 4 samples of 6 particles
    v = space.proju(x, {"pos": torch.randn(4, 6, 3)})
    assert v["pos"].mean(1).abs().max() < 1e-6
    with pytest.raises(ValueError, match="must be flat"):
        Product(s=Sphere(3), mean_free=["s"])
    with pytest.raises(ValueError, match="not a factor"):
        Product(pos=Euclidean(3), mean_free=["coords"])


# -- transformed base distributions ---------------------------------------------------------------
def test_fitted_affine_base_samples_and_scores_its_gaussian():
    g = torch.Generator().manual_seed(5)
    loc = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    data = loc + scale * torch.randn(20000, 3, generator=g, dtype=torch.float64)
    space = Euclidean.fitted(data)
    assert not space.standard_base and Euclidean(3).standard_base
    draws = space.sample_base(20000, generator=g, dtype=torch.float64)
    assert torch.allclose(draws.mean(0), loc, atol=0.05)
    assert torch.allclose(draws.std(0), scale, rtol=0.03)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    s_hat, m_hat = space.base_scale, space.base_loc
    expected = torch.distributions.Normal(m_hat, s_hat).log_prob(x).sum(-1)
    assert torch.allclose(space.base_log_prob(x), expected, atol=1e-10)
    # the contracted base at s = 1 is the base itself, whatever y
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(space.contracted_base_log_prob(x, y, torch.ones(5, dtype=torch.float64)),
                          expected, atol=1e-10)
    with pytest.raises(ValueError, match="base_scale must be"):
        Euclidean(3, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="N ≥ 2"):
        Euclidean.fitted(torch.zeros(1, 3))


# -- ProductPath on ragged batches -----------------------------------------------------------------
def test_product_path_gives_each_atom_its_crystals_time_and_holds_fixed_factors():
    space = crystal_space()
    path = ProductPath(lattice=CondOTPath(), coords=GeodesicPath(FlatTorus(3, period=1.0)),
                       types=None)
    assert path.fixed == {"types"}
    x1 = crystal_batch(seed=6)
    x0 = space.sample_base_like(x1, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64)
    s = path.sample(x0, x1, t)
    assert s["coords"].t.shape == (17,)
    assert torch.equal(s["coords"].t, x1.segments.broadcast(t))
    assert torch.equal(s.x_t["types"], x1["types"])  # fixed: the given composition
    assert s["types"].dx_t is None and set(s.dx_t) == {"lattice", "coords"}
    assert isinstance(s.x_t, ProductPoint) and s.x_t.segments is x1.segments
    # every atom of crystal i sits at time t_i of its own geodesic
    for i in range(4):
        rows = x1.segments.index == i
        expected = GeodesicPath(FlatTorus(3, period=1.0)).sample(
            x0["coords"][rows], x1["coords"][rows], t[i].expand(int(rows.sum())))
        assert torch.allclose(s.x_t["coords"][rows], expected.x_t, atol=1e-12)
    with pytest.raises(ValueError, match=r"one time per sample, shape \[4\]"):
        path.sample(x0, x1, torch.rand(17))


def test_pairs_enumerate_each_samples_complete_graph():
    seg = Segments(torch.tensor([1, 0, 1, 2, 0, 1]), 4)  # sample 3 has no rows
    i, j = seg.pairs(self_loops=True)
    assert len(i) == 2 * 2 + 3 * 3 + 1
    assert bool((seg.index[i] == seg.index[j]).all())
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == len(i)
    i, j = seg.pairs()
    assert len(i) == 2 + 6 and bool((i != j).all())

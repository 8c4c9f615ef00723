"""A ragged batch of crystals through the core: `fit` trains it and `ProductSolver` samples it.

A crystal here is a point of Product(lattice=Euclidean(6), coords=FlatTorus(3) per atom,
types=Discrete fixed), with 2 to 20 atoms per crystal in one batch (a ProductPoint whose
Segments say which crystal each atom row belongs to). The core must give the field one time
per crystal, keep each crystal's coordinate velocity mean-free, hold the fixed atom types, and
treat a batch exactly as the crystals one by one — the contract the crystal plugin builds on.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowmatch.geometry import Discrete, Euclidean, FlatTorus, Product, ProductPoint, Segments
from flowmatch.paths import CondOTPath, GeodesicPath, ProductPath
from flowmatch.solvers import ProductSolver
from flowmatch.training import fit, product_loss

TYPES = 5
TORUS = FlatTorus(3, period=1.0)


def crystal_space() -> Product:
    return Product(lattice=Euclidean(6), coords=TORUS,
                   types=Discrete(TYPES, source="uniform"), mean_free=("coords",))


def crystal_path() -> ProductPath:
    return ProductPath(lattice=CondOTPath(), coords=GeodesicPath(TORUS), types=None)


def toy_crystals(n: int, generator: torch.Generator, sizes=None) -> ProductPoint:
    """Crystals with a pattern a network can learn: atoms on a line through the cell, shifted
    by a random translation, a lattice near a fixed vector, types cycling 0, 1, 2."""
    if sizes is None:
        sizes = torch.randint(2, 21, (n,), generator=generator).tolist()
    seg = Segments.from_sizes(sizes)
    coords, types = [], []
    for m in sizes:
        k = torch.arange(m, dtype=torch.float32)[:, None]
        line = torch.cat([k / m, 2 * k / m, torch.full_like(k, 0.25)], dim=1)
        shift = torch.rand(1, 3, generator=generator)
        coords.append(torch.remainder(line + shift, 1.0))
        types.append(torch.arange(m) % 3)
    lattice = torch.tensor([1.0, 1.2, 0.8, 0.0, 0.3, -0.2]) + 0.05 * torch.randn(
        n, 6, generator=generator)
    return ProductPoint({"lattice": lattice, "coords": torch.cat(coords),
                         "types": torch.cat(types)}, segments=seg, ragged=("coords", "types"))


class TinyCrystalField(nn.Module):
    """Per-atom MLP on (type, sin/cos of 2π coords, lattice, t) with crystal mean pooling."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(TYPES, 8)
        self.atom = nn.Sequential(nn.Linear(8 + 6 + 6 + 1, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden), nn.SiLU())
        self.coords_head = nn.Linear(2 * hidden, 3)
        self.lattice_head = nn.Sequential(nn.Linear(hidden + 6 + 1, hidden), nn.SiLU(),
                                          nn.Linear(hidden, 6))
        self.seen_times: list[tuple[int, ...]] = []

    def forward(self, x: ProductPoint, t: torch.Tensor) -> dict[str, torch.Tensor]:
        seg = x.segments
        self.seen_times.append(tuple(t.shape))
        angle = 2 * math.pi * x["coords"]
        per_atom = torch.cat([self.embed(x["types"]), angle.sin(), angle.cos(),
                              seg.broadcast(x["lattice"]), seg.broadcast(t[:, None])], dim=1)
        h = self.atom(per_atom)
        pooled = seg.mean(h)
        coords = self.coords_head(torch.cat([h, seg.broadcast(pooled)], dim=1))
        lattice = self.lattice_head(torch.cat([pooled, x["lattice"], t[:, None]], dim=1))
        return {"coords": coords, "lattice": lattice}


def one_crystal(x: ProductPoint, i: int) -> ProductPoint:
    seg, rows = x.segments.select([i])
    return ProductPoint({"lattice": x["lattice"][i:i + 1], "coords": x["coords"][rows],
                         "types": x["types"][rows]}, segments=seg, ragged=x.ragged)


def test_a_ragged_crystal_batch_trains_with_fit_and_samples_with_the_product_solver():
    torch.manual_seed(0)
    space, path = crystal_space(), crystal_path()
    model = TinyCrystalField()
    result = fit(model, toy_crystals, path, space, steps=400, batch_size=16, lr=3e-3,
                 ema_decay=0.99, seed=1, progress=False)
    assert set(model.seen_times) == {(16,)}, "one time per crystal, not per atom"
    early, late = sum(result.losses[:40]) / 40, sum(result.losses[-40:]) / 40
    assert late < 0.6 * early, (early, late)

    # sampling: four crystals of 2 to 20 atoms in one batch
    x1 = toy_crystals(4, torch.Generator().manual_seed(2), sizes=[2, 9, 20, 5])
    x0 = space.sample_base_like(x1, generator=torch.Generator().manual_seed(3))
    x0["types"] = x1["types"]  # structure prediction: the composition is given
    field = result.ema_model
    field.seen_times = []
    solver = ProductSolver(field, space, path)
    out = solver.sample(x0, num_steps=20, method="midpoint")
    assert set(field.seen_times) == {(4,)}
    assert isinstance(out, ProductPoint) and out.segments == x1.segments
    assert torch.equal(out["types"], x1["types"]), "fixed types never change"
    space.check_point(out)
    assert solver.nfe == 40

    # the batch is the crystals one by one
    for i in range(4):
        alone = ProductSolver(field, space, path).sample(one_crystal(x0, i), num_steps=20,
                                                         method="midpoint")
        rows = x1.segments.index == i
        assert torch.allclose(alone["lattice"], out["lattice"][i:i + 1], atol=1e-5)
        assert torch.allclose(TORUS.dist(alone["coords"], out["coords"][rows]),
                              torch.zeros(int(rows.sum())), atol=1e-5)

    # the learned motion beats the untrained one on the lattice (its targets are near-fixed)
    fresh = ProductSolver(TinyCrystalField(), space, path).sample(x0, num_steps=20)
    target = x1["lattice"]
    assert (out["lattice"] - target).norm() < 0.5 * (fresh["lattice"] - target).norm()


def test_coordinate_velocities_are_mean_free_in_the_solver():
    space, path = crystal_space(), crystal_path()
    x0 = toy_crystals(4, torch.Generator().manual_seed(4), sizes=[3, 20, 2, 11])
    g = torch.Generator().manual_seed(5)
    drift = torch.randn(4, 3, generator=g)

    def field(x, t):
        angle = 2 * math.pi * x["coords"]
        return {"coords": angle.sin() + 0.3 * angle.cos().roll(1, dims=1),
                "lattice": -x["lattice"]}

    def translated(x, t):
        out = field(x, t)
        # adding a per-crystal translation velocity must change nothing
        return {**out, "coords": out["coords"] + x.segments.broadcast(drift)}

    a = ProductSolver(field, space, path).sample(x0, num_steps=8)
    b = ProductSolver(translated, space, path).sample(x0, num_steps=8)
    assert torch.allclose(a["coords"], b["coords"], atol=1e-5)
    # Euler moves each atom by h Σ P v: the crystal's mean displacement stays 0 (no wrapping at
    # these small steps)
    step = ProductSolver(field, space, path).sample(x0, num_steps=1, time_grid=[0.0, 0.01])
    shift = TORUS.logmap(x0["coords"], step["coords"])
    assert x0.segments.mean(shift).abs().max() < 1e-6


def test_batched_training_loss_is_the_mean_of_the_crystals_losses():
    space, path = crystal_space(), crystal_path()
    model = TinyCrystalField()
    x1 = toy_crystals(4, torch.Generator().manual_seed(6), sizes=[2, 13, 20, 7])
    x0 = space.sample_base_like(x1, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([0.2, 0.5, 0.7, 0.95])
    batch = path.sample(x0, x1, t)
    total, parts = product_loss(model(batch.x_t, batch.t), batch, space,
                                {"coords": 10.0, "lattice": 1.0}, reduction="none")
    assert total.shape == (4,) and set(parts) == {"coords", "lattice"}
    for i in range(4):
        s = path.sample(one_crystal(x0, i), one_crystal(x1, i), t[i:i + 1])
        single, _ = product_loss(model(s.x_t, s.t), s, space, {"coords": 10.0, "lattice": 1.0})
        assert torch.allclose(single, total[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sizes", [[2], [20, 2, 20]])
def test_solver_rejects_a_field_that_omits_a_moving_factor(sizes):
    space, path = crystal_space(), crystal_path()
    x0 = toy_crystals(len(sizes), torch.Generator().manual_seed(8), sizes=sizes)
    with pytest.raises(ValueError, match="lattice"):
        ProductSolver(lambda x, t: {"coords": torch.zeros_like(x["coords"])}, space,
                      path).sample(x0, num_steps=2)

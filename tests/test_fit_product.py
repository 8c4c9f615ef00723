"""`fit` as the one training loop: ragged product batches (crystals), joint continuous +
discrete products, discrete paths alone, per-factor loss weights and a pluggable loss.

A crystal here is a point of Product(coords = FlatTorus(3) per atom, lattice = Euclidean(6) per
crystal, types = Discrete tokens per atom): a batch of crystals of 2, 7, 13 and 20 atoms is one
ProductPoint whose Segments say which crystal each atom row belongs to. The loop must give the
field one time per crystal, weigh every crystal the same, and resume bit-exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowmatch.geometry import Discrete, Euclidean, FlatTorus, Product, ProductPoint, Segments
from flowmatch.paths import CondOTPath, GeodesicPath, MixtureDiscretePath, ProductPath
from flowmatch.paths.schedulers import CondOTScheduler
from flowmatch.training import discrete_cross_entropy, fit, product_loss

TYPES = 4
SIZES = [2, 7, 13, 20]
TORUS = FlatTorus(3, period=1.0)  # fractional coordinates
LATTICE = torch.tensor([1.0, 1.2, 0.8, 0.0, 0.3, -0.2])


def crystals(n: int, generator: torch.Generator, sizes=None) -> ProductPoint:
    """n crystals (sizes cycling through SIZES): atoms on a line through the cell, shifted by a
    random translation, a lattice near a fixed vector, types 0 for most atoms."""
    sizes = sizes or [SIZES[i % len(SIZES)] for i in range(n)]
    coords, types = [], []
    for m in sizes:
        k = torch.arange(m, dtype=torch.float32)[:, None]
        line = torch.cat([k / m, 2 * k / m, torch.full_like(k, 0.25)], dim=1)
        coords.append(torch.remainder(line + torch.rand(1, 3, generator=generator), 1.0))
        types.append((torch.rand(m, generator=generator) < 0.2).long())  # 80 % type 0
    lattice = LATTICE + 0.05 * torch.randn(n, 6, generator=generator)
    return ProductPoint({"coords": torch.cat(coords), "lattice": lattice,
                         "types": torch.cat(types)},
                        segments=Segments.from_sizes(sizes), ragged=("coords", "types"))


def space(types_source: str = "uniform") -> Product:
    return Product(coords=TORUS, lattice=Euclidean(6), types=Discrete(TYPES, types_source),
                   mean_free=("coords",))


def csp_path() -> ProductPath:
    """Structure prediction: coordinates and lattice move, the atom types are given (fixed)."""
    return ProductPath(coords=GeodesicPath(TORUS), lattice=CondOTPath(), types=None)


def joint_path() -> ProductPath:
    """De novo generation: the atom types move too, by a masked mixture path."""
    return ProductPath(coords=GeodesicPath(TORUS), lattice=CondOTPath(),
                       types=MixtureDiscretePath(CondOTScheduler()))


class CrystalField(nn.Module):
    """Per-atom MLP on (type, sin/cos 2π coords, lattice, t) with crystal mean pooling.

    Returns per-atom coordinate velocities [N, 3], per-crystal lattice velocities [S, 6] and,
    with ``types_out``, per-atom type logits [N, TYPES]. It records the shape of every t.
    """

    def __init__(self, hidden: int = 48, *, types_out: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(TYPES + 1, 8)  # + the mask token
        self.atom = nn.Sequential(nn.Linear(8 + 6 + 6 + 1, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden), nn.SiLU())
        self.coords_head = nn.Linear(2 * hidden, 3)
        self.types_head = nn.Linear(2 * hidden, TYPES) if types_out else None
        self.lattice_head = nn.Sequential(nn.Linear(hidden + 6 + 1, hidden), nn.SiLU(),
                                          nn.Linear(hidden, 6))
        self.seen: list[tuple[tuple[int, ...], int, int]] = []

    def forward(self, x: ProductPoint, t: torch.Tensor) -> dict[str, torch.Tensor]:
        seg = x.segments
        self.seen.append((tuple(t.shape), seg.num_segments, seg.num_rows))
        angle = 2 * math.pi * x["coords"]
        h = self.atom(torch.cat([self.embed(x["types"]), angle.sin(), angle.cos(),
                                 seg.broadcast(x["lattice"]), seg.broadcast(t[:, None])], 1))
        pooled = seg.mean(h)  # one vector per crystal, whatever its atom count
        both = torch.cat([h, seg.broadcast(pooled)], 1)
        out = {"coords": self.coords_head(both),
               "lattice": self.lattice_head(torch.cat([pooled, x["lattice"], t[:, None]], 1))}
        if self.types_head is not None:
            out["types"] = self.types_head(both)
        return out


def _run(model, path, geometry, **kw):
    kw = dict(steps=300, batch_size=4, lr=3e-3, ema_decay=0.99, seed=1, progress=False) | kw
    return fit(model, crystals, path, geometry, **kw)


def _mean(values):
    return sum(values) / len(values)


def heldout_loss(net, geometry, path) -> float:
    """The product loss on 64 fixed crystals at 64 times spread over (0, 1)."""
    gen = torch.Generator().manual_seed(7)
    x1 = crystals(64, gen)
    x0 = geometry.sample_base_like(x1, generator=gen)
    sample = path.sample(x0, x1, torch.linspace(0.01, 0.99, 64), generator=gen)
    with torch.no_grad():
        return float(product_loss(net(sample.x_t, sample.t), sample, geometry)[0])


def test_a_ragged_batch_of_four_crystals_trains_one_time_per_crystal():
    geometry, path = space(), csp_path()
    torch.manual_seed(0)
    model = CrystalField()
    before = heldout_loss(model, geometry, path)
    model.seen.clear()
    result = _run(model, path, geometry)
    # the field saw 4 crystals of 42 atoms in all, with one time per crystal
    assert set(model.seen) == {((4,), 4, sum(SIZES))}
    early, late = _mean(result.losses[:50]), _mean(result.losses[-50:])
    assert late < 0.7 * early, (early, late)
    after = heldout_loss(result.ema_model, geometry, path)
    assert after < 0.4 * before, (before, after)  # measured: 1.59 → 0.32


def test_the_crystal_loss_is_the_mean_over_crystals_of_their_atom_means():
    # rows="mean": a crystal of 20 atoms weighs what a crystal of 2 weighs; rows="sum" sums
    # its atoms. Checked on the first update's loss against product_loss on the same draw.
    geometry, path = space(), csp_path()
    losses = {}
    for rows in ("mean", "sum"):
        torch.manual_seed(0)
        losses[rows] = _run(CrystalField(), path, geometry, steps=1, rows=rows).losses[0]
    gen = torch.Generator().manual_seed(1)
    x1 = crystals(4, gen)
    x0 = geometry.sample_base_like(x1, generator=gen)
    t = torch.rand(4, generator=gen)
    sample = path.sample(x0, x1, t, generator=gen)
    torch.manual_seed(0)
    with torch.no_grad():
        out = CrystalField()(sample.x_t, sample.t)
    for rows in ("mean", "sum"):
        expected, _ = product_loss(out, sample, geometry, rows=rows)
        assert losses[rows] == pytest.approx(float(expected), rel=1e-6)
    assert losses["sum"] > losses["mean"]  # the coordinates' atoms add up


def test_resume_of_a_crystal_run_is_bit_exact(tmp_path):
    geometry, path = space(), joint_path()
    common = dict(steps=40, ema_decay=0.9)

    torch.manual_seed(0)
    full = _run(CrystalField(types_out=True), path, geometry, **common)

    calls = {"n": 0}

    def crashing(n, generator):
        calls["n"] += 1
        if calls["n"] == 23:
            raise RuntimeError("simulated crash")
        return crystals(n, generator)

    ckpt = tmp_path / "fit.pt"
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(CrystalField(types_out=True), crashing, path, geometry, batch_size=4, lr=3e-3,
            seed=1, progress=False, checkpoint_path=ckpt, checkpoint_every=10, **common)
    torch.manual_seed(123)  # a different initialisation: the checkpoint must overwrite it
    resumed = fit(CrystalField(types_out=True), crystals, path, geometry, batch_size=4,
                  lr=3e-3, seed=1, progress=False, checkpoint_path=ckpt, **common)
    assert resumed.resumed_from == 20
    assert resumed.losses == full.losses
    for a, b in zip(resumed.ema_model.parameters(), full.ema_model.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="training settings differ .*loss_weights"):
        fit(CrystalField(types_out=True), crystals, path, geometry, batch_size=4, lr=3e-3,
            seed=1, progress=False, checkpoint_path=ckpt, loss_weights={"coords": 2.0},
            **common)


def test_joint_continuous_and_discrete_product_learns_the_types():
    geometry, path = space("mask"), joint_path()
    torch.manual_seed(0)
    model = CrystalField(types_out=True)
    initial = CrystalField(types_out=True)
    initial.load_state_dict(model.state_dict())
    result = _run(model, path, geometry, steps=300)
    early, late = _mean(result.losses[:50]), _mean(result.losses[-50:])
    assert late < 0.7 * early, (early, late)

    # held-out crystals: the types' cross-entropy falls from about log 4 = 1.39 nats towards
    # the data's entropy (0.2 of type 1: 0.50 nats); masked atoms only, at t = 0 all masked
    gen = torch.Generator().manual_seed(7)
    x1 = crystals(64, gen)
    x0 = geometry.sample_base_like(x1, generator=gen)
    sample = path.sample(x0, x1, torch.zeros(64), generator=gen)
    with torch.no_grad():
        def types_loss(net):
            out = net(sample.x_t, sample.t)["types"]
            return float(discrete_cross_entropy(out, x1["types"], sample["types"].x_t,
                                                geometry["types"]))
        before, after = types_loss(initial), types_loss(result.ema_model)
    assert before > 1.0 and after < 0.65, (before, after)


class TokenField(nn.Module):
    """Logits [B, L, K] from an embedding of x_t (K + 1 states with the mask) and of t."""

    def __init__(self, length: int = 6, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(TYPES + 1, hidden)
        self.position = nn.Parameter(torch.zeros(length, hidden))
        self.time = nn.Linear(1, hidden)
        self.mix = nn.Sequential(nn.SiLU(), nn.Linear(length * hidden, length * hidden),
                                 nn.SiLU())
        self.head = nn.Linear(hidden, TYPES)

    def forward(self, x, t):
        b, n = x.shape
        h = self.embed(x) + self.position + self.time(t[:, None])[:, None]
        return self.head(self.mix(h.reshape(b, -1)).reshape(b, n, -1))


def sequences(n, generator):
    """Token sequences (s, s + 1, s + 2, …) mod K from a random start s: the start decides
    the whole sequence, so an unmasked token reveals every other."""
    start = torch.randint(TYPES, (n, 1), generator=generator)
    return (start + torch.arange(6)) % TYPES


def test_a_discrete_path_alone_trains_with_the_cross_entropy():
    torch.manual_seed(0)
    vocabulary = Discrete(TYPES, "mask")
    result = fit(TokenField(), sequences, MixtureDiscretePath(CondOTScheduler()), vocabulary,
                 steps=300, batch_size=64, lr=3e-3, seed=0, progress=False)
    early, late = _mean(result.losses[:30]), _mean(result.losses[-30:])
    # An untrained field pays log 4 per masked token, log 4 · E[1 − t] = 0.69 nats per token.
    # Once one token is visible the others follow, so the best field pays log 4 only when all
    # six are masked: log 4 · E[(1 − t)^6] = log 4 / 7 = 0.198 nats per token.
    assert early > 0.35 and late < 0.23, (early, late)


def test_loss_weights_weigh_the_per_factor_losses():
    # same seed, same draws: the first update's loss is Σ_k w_k loss_k
    geometry, path = space(), csp_path()

    def first_loss(weights):
        torch.manual_seed(0)
        return _run(CrystalField(), path, geometry, steps=1, loss_weights=weights).losses[0]

    coords = first_loss({"lattice": 0.0})
    lattice = first_loss({"coords": 0.0})
    assert coords > 0 and lattice > 0
    assert first_loss(None) == pytest.approx(coords + lattice, rel=1e-6)
    assert first_loss({"coords": 2.0, "lattice": 3.0}) == pytest.approx(
        2 * coords + 3 * lattice, rel=1e-6)
    assert first_loss({"coords": 2.0}) == pytest.approx(2 * coords + lattice, rel=1e-6)


def test_a_pluggable_loss_is_called_and_its_per_sample_values_averaged():
    geometry, path = space(), csp_path()
    seen = []

    def lattice_only(prediction, sample, geometry_):
        seen.append((type(sample).__name__, tuple(sample.t.shape), geometry_))
        per_crystal = (prediction["lattice"] - sample["lattice"].dx_t).pow(2).sum(-1)
        seen[-1] += (per_crystal.detach(),)
        return per_crystal  # [4]: fit averages

    torch.manual_seed(0)
    result = _run(CrystalField(), path, geometry, steps=3, loss=lattice_only)
    assert [s[:3] for s in seen] == [("ProductPathSample", (4,), geometry)] * 3
    assert result.losses == [pytest.approx(float(s[3].mean()), rel=1e-6) for s in seen]

    # on tensors too: a scalar loss (the video recipe's unweighted MSE mean)
    def mse(prediction, sample, geometry_):
        return (prediction - sample.dx_t).pow(2).mean()

    class PointField(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(3, 2)

        def forward(self, x, t):
            return self.net(torch.cat([x, t[:, None]], 1))

    out = fit(PointField(), lambda n, g: torch.randn(n, 2, generator=g) + 3, CondOTPath(),
              steps=2, batch_size=8, loss=mse, progress=False)
    assert len(out.losses) == 2
    with pytest.raises(ValueError, match=r"one loss per sample \[8\]"):
        fit(PointField(), lambda n, g: torch.randn(n, 2, generator=g), CondOTPath(), steps=1,
            batch_size=8, loss=lambda p, s, g: (p - s.dx_t).pow(2), progress=False)


def test_product_training_refuses_what_it_cannot_do():
    geometry, path = space(), csp_path()
    common = dict(steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="Product geometry"):
        fit(CrystalField(), crystals, path, Euclidean(6), **common)
    with pytest.raises(ValueError, match="same factors"):
        fit(CrystalField(), crystals, ProductPath(coords=GeodesicPath(TORUS), types=None),
            geometry, **common)
    with pytest.raises(ValueError, match="coupling"):
        fit(CrystalField(), crystals, path, geometry, coupling=lambda a, b: (a, b), **common)
    with pytest.raises(ValueError, match="marginal_target is for tensor data"):
        fit(CrystalField(), crystals, path, geometry, marginal_target=0, **common)
    with pytest.raises(ValueError, match="loss_weights names 'atoms'"):
        fit(CrystalField(), crystals, path, geometry, loss_weights={"atoms": 1.0}, **common)
    with pytest.raises(ValueError, match="finite number ≥ 0"):
        fit(CrystalField(), crystals, path, geometry, loss_weights={"coords": -1.0}, **common)
    with pytest.raises(ValueError, match="loss_weights and rows"):
        fit(nn.Linear(2, 2), lambda n, g: torch.randn(n, 2, generator=g), CondOTPath(),
            loss_weights={"x": 1.0}, **common)
    with pytest.raises(ValueError, match="rows must be one of"):
        fit(CrystalField(), crystals, path, geometry, rows="max", **common)
    with pytest.raises(ValueError, match="returned 5 samples, expected batch_size=4"):
        fit(CrystalField(), lambda n, g: crystals(n + 1, g), path, geometry, **common)

    def with_nan(n, g):
        x = crystals(n, g)
        x["lattice"][1, 2] = float("nan")
        return x

    with pytest.raises(ValueError, match=r"output\['lattice'\] must be finite"):
        fit(CrystalField(), with_nan, path, geometry, **common)

    def bad_types(n, g):
        x = crystals(n, g)
        x["types"][0] = TYPES + 3
        return x

    with pytest.raises(ValueError, match="types"):
        fit(CrystalField(), bad_types, path, geometry, **common)
    with pytest.raises(ValueError, match="Discrete"):
        fit(TokenField(), sequences, MixtureDiscretePath(CondOTScheduler()), **common)


def test_a_dense_product_as_a_plain_dict_trains():
    # no ragged factor: a plain dict whose factors all lead with the sample dimension
    geometry = Product(pos=Euclidean(2), label=Discrete(3, "uniform"))
    path = ProductPath(pos=CondOTPath(), label=MixtureDiscretePath(CondOTScheduler()))

    def labelled(n, generator):
        label = torch.randint(3, (n,), generator=generator)
        centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
        return {"pos": centres[label] + 0.1 * torch.randn(n, 2, generator=generator),
                "label": label}

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(3, 8)
            self.net = nn.Sequential(nn.Linear(2 + 8 + 1, 64), nn.SiLU(), nn.Linear(64, 2 + 3))

        def forward(self, x, t):
            h = self.net(torch.cat([x["pos"], self.embed(x["label"]), t[:, None]], 1))
            return {"pos": h[:, :2], "label": h[:, 2:]}

    torch.manual_seed(0)
    result = fit(Field(), labelled, path, geometry, steps=300, batch_size=64, lr=3e-3,
                 progress=False)
    early, late = _mean(result.losses[:30]), _mean(result.losses[-30:])
    assert late < 0.85 * early, (early, late)  # measured 3.43 → 2.80 (the CondOT floor is high)
    with pytest.raises(ValueError, match="must all lead with the sample dimension"):
        fit(Field(), lambda n, g: {**labelled(n, g), "label": torch.zeros(n + 1).long()},
            path, geometry, steps=1, batch_size=4, progress=False)

"""Joint continuous–discrete flows on a Product: path, solver and an exact joint field.

The toy joint: a label k ∈ {0, 1, 2} with probabilities π and a position x ∈ R² ~ N(μ_k, s² I).
With a Gaussian source on the position (CondOT path) and a mask source on the label (mixture
path, κ_t = t), the exact marginal field is known in closed form: while the label is masked,
p(k | x_t) ∝ π_k N(x_t; t μ_k, σ_t² I) with σ_t² = (1 − t)² + t² s²; once unmasked it is δ_k.
The position velocity is Σ_k p(k | ·) u_k(x) with u_k(x) = μ_k + (σ̇_t/σ_t)(x − t μ_k), and the
label posterior logits are log p(k | ·). Sampling with that field must reproduce the joint.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.geometry import Euclidean, FlatTorus, Product, ProductPoint, Segments
from flowmatch.geometry.discrete import Discrete
from flowmatch.paths import AffinePath, CondOTScheduler, GeodesicPath, ProductPath
from flowmatch.paths.mixture import MixtureDiscretePath
from flowmatch.solvers.product import ProductSolver

PI = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MU = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [-1.0, -1.5]], dtype=torch.float64)
S = 0.3
K = 3


def make_space():
    geometry = Product(pos=Euclidean(2), label=Discrete(K, source="mask"))
    path = ProductPath(pos=AffinePath(CondOTScheduler()),
                       label=MixtureDiscretePath(CondOTScheduler()))
    return geometry, path


def exact_field(x, t):
    pos, label = x["pos"], x["label"]
    tt = t[:, None]
    var = (1 - tt) ** 2 + tt**2 * S**2
    rate = (-(1 - tt) + tt * S**2) / var  # σ̇_t / σ_t
    # log π_k + log N(pos; t μ_k, var I) for every k: [B, K]
    diff = pos[:, None, :] - tt[:, :, None] * MU[None]
    log_post = PI.log()[None] - 0.5 * diff.pow(2).sum(-1) / var - math.log(2 * math.pi) - var.log()
    masked = label == K
    known = torch.full_like(log_post, -1e30)
    known.scatter_(1, label.clamp_max(K - 1)[:, None], 0.0)
    log_post = torch.where(masked[:, None], log_post, known)
    post = torch.softmax(log_post, dim=-1)
    u_k = MU[None] + rate[:, :, None] * diff  # [B, K, 2]
    return {"pos": (post[:, :, None] * u_k).sum(1), "label": log_post}


@pytest.mark.parametrize("method, steps", [("euler", 400), ("midpoint", 100)])
def test_exact_joint_field_reproduces_the_joint(method, steps):
    geometry, path = make_space()
    n = 20000
    g = torch.Generator().manual_seed(3)
    x0 = {"pos": torch.randn(n, 2, generator=g, dtype=torch.float64),
          "label": torch.full((n,), K, dtype=torch.long)}
    solver = ProductSolver(exact_field, geometry, path)
    x1 = solver.sample(x0, num_steps=steps, method=method, generator=g)
    assert solver.nfe == steps * (2 if method == "midpoint" else 1)
    label, pos = x1["label"], x1["pos"]
    assert int((label == K).sum()) == 0, "every label is unmasked at t = 1"
    counts = torch.bincount(label, minlength=K).double()
    chi2 = float(((counts - n * PI) ** 2 / (n * PI)).sum())
    assert chi2 < 13.8, f"chi-square {chi2:.2f} exceeds the 0.1% critical value for 2 dof"
    for k in range(K):
        sel = pos[label == k]
        # the position must follow *its own* label's component: coupling is kept
        assert (sel.mean(0) - MU[k]).norm() < 0.03, (k, sel.mean(0))
        assert abs(float(sel.std(0).mean()) - S) < 0.02, (k, sel.std(0))


def test_product_path_samples_each_factor():
    geometry, path = make_space()
    x0 = geometry.sample_base(8)
    x1 = {"pos": torch.randn(8, 2), "label": torch.randint(0, K, (8,))}
    t = torch.rand(8)
    samples = path.sample(x0, x1, t)
    expected = t[:, None] * x1["pos"] + (1 - t[:, None]) * x0["pos"]
    torch.testing.assert_close(samples["pos"].x_t, expected)
    lab = samples["label"].x_t
    assert bool(((lab == x1["label"]) | (lab == K)).all())
    assert samples["label"].dx_t is None


def test_product_path_draws_discrete_factors_from_the_generator():
    geometry, path = make_space()
    x0 = geometry.sample_base(4096, generator=torch.Generator().manual_seed(0))
    x1 = {"pos": torch.randn(4096, 2), "label": torch.randint(0, K, (4096,))}
    t = torch.full((4096,), 0.5)

    def draw(seed, global_seed):
        torch.manual_seed(global_seed)  # must not matter: every draw comes from the generator
        return path.sample(x0, x1, t, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(1, 0), draw(1, 99), draw(2, 0)
    assert torch.equal(a["label"].x_t, b["label"].x_t)
    assert torch.equal(a["pos"].x_t, c["pos"].x_t)  # the continuous path is deterministic
    assert not torch.equal(a["label"].x_t, c["label"].x_t)
    # κ_0.5 = 0.5 of the CondOT mixture path: about half the labels have jumped to the data
    kept = (a["label"].x_t == x1["label"]).float().mean()
    assert abs(float(kept) - 0.5) < 0.05


def test_product_path_takes_time_per_factor():
    path = ProductPath(lattice=AffinePath(CondOTScheduler()), coords=AffinePath(CondOTScheduler()))
    t_crystal = torch.tensor([0.2, 0.7])
    atoms_of = torch.tensor([0, 0, 0, 1, 1])  # crystal index of each atom
    x0 = {"lattice": torch.zeros(2, 6), "coords": torch.zeros(5, 3)}
    x1 = {"lattice": torch.ones(2, 6), "coords": torch.ones(5, 3)}
    s = path.sample(x0, x1, {"lattice": t_crystal, "coords": t_crystal[atoms_of]})
    torch.testing.assert_close(s["coords"].x_t[:, 0], t_crystal[atoms_of])


def test_bad_input_is_named():
    geometry, path = make_space()
    solver = ProductSolver(exact_field, geometry, path)
    x0 = geometry.sample_base(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="missing"):
        solver.sample({"pos": x0["pos"]})
    with pytest.raises(ValueError, match="increase"):
        solver.sample(x0, time_grid=[1.0, 0.0])
    with pytest.raises(ValueError, match="not both"):
        solver.sample(x0, num_steps=3, step_size=0.1)
    with pytest.raises(ValueError, match="dict with the factors"):
        ProductSolver(lambda x, t: {"pos": x["pos"]}, geometry, path).sample(x0, num_steps=2)
    with pytest.raises(ValueError, match="factors"):
        path.sample({"pos": x0["pos"]}, {"pos": x0["pos"]}, torch.rand(4))
    # a discrete factor needs a path that provides its jump step (None would hold it fixed)
    with pytest.raises(TypeError, match="ConvexScheduler"):
        ProductSolver(exact_field, geometry, {})
    with pytest.raises(TypeError, match="discrete factor 'label'.*jump step"):
        ProductSolver(exact_field, geometry, {"label": AffinePath(CondOTScheduler())})


def test_joint_training_learns_the_coupling():
    """A small joint network trained with product_loss beats the independent baseline."""
    from flowmatch.training.product_loss import product_loss

    geometry, path = make_space()
    torch.manual_seed(0)

    class JointField(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(K + 1, 16)
            self.net = torch.nn.Sequential(torch.nn.Linear(2 + 16 + 1, 128), torch.nn.SiLU(),
                                           torch.nn.Linear(128, 128), torch.nn.SiLU(),
                                           torch.nn.Linear(128, 2 + K))

        def forward(self, x, t):
            h = torch.cat([x["pos"], self.embed(x["label"]), t[:, None]], dim=-1)
            out = self.net(h)
            return {"pos": out[:, :2], "label": out[:, 2:]}

    model = JointField().double()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)

    def data(n):
        k = torch.multinomial(PI, n, replacement=True, generator=g)
        return {"pos": MU[k] + S * torch.randn(n, 2, generator=g, dtype=torch.float64),
                "label": k}

    def ce_at_half():
        with torch.no_grad():
            x1 = data(4000)
            x0 = geometry.sample_base(4000, dtype=torch.float64)
            s = path.sample(x0, x1, torch.full((4000,), 0.5, dtype=torch.float64))
            out = model({k: v.x_t for k, v in s.items()}, s["pos"].t)
            return product_loss(out, s, geometry)[1]["label"]

    before = ce_at_half()
    for _ in range(400):
        x1 = data(256)
        x0 = geometry.sample_base(256, dtype=torch.float64)
        s = path.sample(x0, x1, torch.rand(256, generator=g, dtype=torch.float64))
        out = model({k: v.x_t for k, v in s.items()}, s["pos"].t)
        loss, parts = product_loss(out, s, geometry, {"pos": 1.0, "label": 1.0})
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = ce_at_half()
    # Unmasked tokens cost nothing (their posterior is exact) and half are masked at t = 0.5.
    # Without looking at the position the best masked-token cross-entropy is the entropy of π
    # (1.03 nats), so an independent model scores ≥ 0.5 · H(π); the position at t = 0.5
    # reveals the label almost surely, which only a coupled model can exploit.
    independent = 0.5 * float(-(PI * PI.log()).sum())
    assert float(before) > 0.8 * independent
    assert float(after) < 0.4 * independent, (float(before), float(after))


def test_intermediates_are_returned_at_the_grid_points():
    geometry, path = make_space()
    x0 = geometry.sample_base(50, dtype=torch.float64)
    states = ProductSolver(exact_field, geometry, path).sample(
        x0, time_grid=[0.0, 0.5, 1.0], num_steps=10, return_intermediates=True)
    assert len(states) == 3
    assert states[0] is not None and torch.equal(states[0]["label"], x0["label"])
    assert int((states[-1]["label"] == K).sum()) == 0


# -- batched product points: a ragged batch of crystals ------------------------------------------
def crystal_space():
    """Fractional coordinates on the torus (one row per atom), a lattice per crystal, and atom
    types that condition the sample (fixed)."""
    geometry = Product(coords=FlatTorus(3), lattice=Euclidean(6), types=Discrete(4, "uniform"),
                       mean_free=("coords",))
    path = ProductPath(coords=GeodesicPath(FlatTorus(3)), lattice=AffinePath(CondOTScheduler()),
                       types=None)
    return geometry, path


def crystals(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    return ProductPoint({"coords": torch.rand(n, 3, generator=g, dtype=torch.float64),
                         "lattice": torch.randn(len(sizes), 6, generator=g, dtype=torch.float64),
                         "types": torch.randint(0, 4, (n,), generator=g)},
                        segments=Segments.from_sizes(sizes), ragged=("coords", "types"))


def crystal_field(drift=None, seen=None):
    """A field that couples the factors within a crystal (pooled atoms drive the lattice, the
    lattice and the types drive the atoms) and adds a per-crystal translation ``drift``."""
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def field(x, t):
        seg = x.segments
        if seen is not None:
            seen.append(tuple(t.shape))
        assert t.shape == (x.num_samples,), "one time per crystal, not per atom"
        angle = 2 * math.pi * x["coords"]
        pooled = seg.mean(angle.sin())
        coords = (angle.cos().roll(1, dims=1) + w[x["types"]] * seg.broadcast(t[:, None])
                  + seg.broadcast(x["lattice"][:, :3] + pooled))
        if drift is not None:
            coords = coords + seg.broadcast(drift)
        lattice = -x["lattice"] + torch.cat([pooled, pooled.pow(2)], dim=1) * (1 + t[:, None])
        return {"coords": coords, "lattice": lattice}  # no output for the fixed types

    return field


def one(x, i):
    seg, rows = x.segments.select([i])
    return ProductPoint({"coords": x["coords"][rows], "lattice": x["lattice"][i:i + 1],
                         "types": x["types"][rows]}, segments=seg, ragged=x.ragged)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("continuous_step", ["expmap", "projx"])
def test_a_ragged_batch_of_crystals_is_the_crystals_one_by_one(method, continuous_step):
    geometry, path = crystal_space()
    sizes = [2, 5, 3, 7]
    x0 = crystals(sizes, seed=1)
    seen = []
    solver = ProductSolver(crystal_field(seen=seen), geometry, path)
    out = solver.sample(x0, num_steps=6, method=method, continuous_step=continuous_step)
    assert set(seen) == {(4,)}
    assert isinstance(out, ProductPoint) and out.segments == x0.segments
    assert out.ragged == x0.ragged
    assert out["types"] is x0["types"], "a fixed factor is held at its x0 value"
    geometry.check_point(out)
    assert solver.nfe == 6 * {"euler": 1, "midpoint": 2, "rk4": 4}[method]
    for i, m in enumerate(sizes):
        alone = ProductSolver(crystal_field(), geometry, path).sample(
            one(x0, i), num_steps=6, method=method, continuous_step=continuous_step)
        rows = x0.segments.index == i
        assert alone["coords"].shape == (m, 3)
        torch.testing.assert_close(alone["lattice"], out["lattice"][i:i + 1], rtol=0,
                                   atol=1e-12)
        torch.testing.assert_close(FlatTorus(3).dist(alone["coords"], out["coords"][rows]),
                                   torch.zeros(m, dtype=torch.float64), rtol=0, atol=1e-12)
        assert torch.equal(alone["types"], out["types"][rows])


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_coordinate_velocity_is_mean_free_per_crystal(method):
    geometry, path = crystal_space()
    x0 = crystals([2, 5, 3, 7], seed=2)
    drift = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plain = ProductSolver(crystal_field(), geometry, path).sample(x0, num_steps=5, method=method)
    drifted = ProductSolver(crystal_field(drift), geometry, path).sample(x0, num_steps=5,
                                                                         method=method)
    # the product's proju removes each crystal's mean velocity: a per-crystal translation of the
    # field changes nothing
    torch.testing.assert_close(drifted["coords"], plain["coords"], rtol=0, atol=1e-12)
    torch.testing.assert_close(drifted["lattice"], plain["lattice"], rtol=0, atol=1e-12)
    # a short step moves every crystal's atoms by a mean-free displacement (no wrap at h = 1e-3)
    step = ProductSolver(crystal_field(drift), geometry, path).sample(
        x0, time_grid=[0.0, 1e-3], method=method)
    shift = FlatTorus(3).logmap(x0["coords"], step["coords"])
    assert float(shift.abs().max()) > 1e-4
    assert float(x0.segments.mean(shift).abs().max()) < 1e-15


def test_fixed_factors_by_mapping_and_a_held_continuous_factor():
    geometry, path = crystal_space()
    x0 = crystals([2, 5, 3, 7], seed=4)
    by_path = ProductSolver(crystal_field(), geometry, path).sample(x0, num_steps=4)
    # the mapping form: a factor mapped to None is fixed; continuous factors need no entry
    by_map = ProductSolver(crystal_field(), geometry, {"types": None}).sample(x0, num_steps=4)
    assert all(torch.equal(by_path[k], by_map[k]) for k in by_path)

    def no_lattice(x, t):
        out = crystal_field()(x, t)
        return {"coords": out["coords"]}

    held = ProductSolver(no_lattice, geometry, {"types": None, "lattice": None}).sample(
        x0, num_steps=4, method="midpoint")
    assert held["lattice"] is x0["lattice"] and held["types"] is x0["types"]
    assert not torch.equal(held["coords"], x0["coords"])
    # a field that does return a fixed factor is fine; one that omits a moving factor is not
    ProductSolver(lambda x, t: {**crystal_field()(x, t), "types": None}, geometry, path).sample(
        x0, num_steps=1)
    with pytest.raises(ValueError, match=r"\['coords', 'lattice'\].*fixed \['types'\]"):
        ProductSolver(no_lattice, geometry, path).sample(x0, num_steps=1)
    with pytest.raises(ValueError, match="not factors"):
        ProductSolver(no_lattice, geometry, {"charge": None})


def test_plain_dict_points_keep_their_batch_rule():
    # without segments the field's t has the leading size of the first continuous factor
    geometry, path = make_space()
    x0 = geometry.sample_base(7, dtype=torch.float64)
    seen = []

    def field(x, t):
        seen.append(tuple(t.shape))
        return exact_field(x, t)

    out = ProductSolver(field, geometry, path).sample(x0, num_steps=3)
    assert set(seen) == {(7,)} and type(out) is dict

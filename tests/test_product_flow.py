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

from flowmatch.geometry import Euclidean, Product
from flowmatch.geometry.discrete import Discrete
from flowmatch.paths import AffinePath, CondOTScheduler, ProductPath
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
    with pytest.raises(TypeError, match="ConvexScheduler"):
        ProductSolver(exact_field, geometry, {"label": None})


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

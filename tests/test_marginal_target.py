"""Marginal velocity targets: contracted base densities, the posterior mean, and fit."""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.geometry import Euclidean, FlatTorus, Sphere
from flowmatch.geometry.base import Geometry
from flowmatch.geometry.hyperbolic import Hyperbolic
from flowmatch.paths import CondOTPath, GeodesicPath, MixtureDiscretePath, OTCoupling
from flowmatch.paths.marginal import marginal_velocity
from flowmatch.paths.schedulers import PolynomialScheduler
from flowmatch.training import fit


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _volume(g) -> float:
    if isinstance(g, Sphere):
        return math.exp(g.log_volume)
    return g.period ** g.d


# -- the contracted base density ---------------------------------------------------------------
@pytest.mark.parametrize("g", [Sphere(2), Sphere(3), Sphere(4), FlatTorus(2)], ids=repr)
@pytest.mark.parametrize("s", [1.0, 0.6, 0.25])
def test_contracted_density_integrates_to_one(g, s):
    # ∫ p dV = vol · E_uniform[p]
    u = g.sample_base((400_000,), generator=_gen(1), dtype=torch.float64)
    y = g.sample_base((1,), generator=_gen(2), dtype=torch.float64)
    p = g.contracted_base_log_prob(u, y, torch.tensor(s, dtype=torch.float64)).exp()
    mass = _volume(g) * p.mean()
    se = _volume(g) * p.std() / math.sqrt(p.numel())
    assert abs(float(mass) - 1.0) < 5 * float(se) + 1e-9


@pytest.mark.parametrize("g", [Sphere(3), Sphere(4), FlatTorus(3)], ids=repr)
def test_contracted_density_is_the_law_of_the_geodesic_path(g):
    # E[f(x_t)] from path samples equals vol · E_uniform[f p_t(· | y)] for a test function f
    path = GeodesicPath(g, PolynomialScheduler(2.0))
    n = 200_000
    y = g.sample_base((1,), generator=_gen(3), dtype=torch.float64)
    t = torch.full((n,), 0.55, dtype=torch.float64)
    x0 = g.sample_base((n,), generator=_gen(4), dtype=torch.float64)
    xt = path.sample(x0, y.expand(n, -1), t).x_t
    a = torch.randn(xt.shape[-1], generator=_gen(5), dtype=torch.float64)

    def f(x):
        z = torch.cos(x) if isinstance(g, FlatTorus) else x
        return torch.exp(z @ a)

    lhs = f(xt).mean()
    u = g.sample_base((n,), generator=_gen(6), dtype=torch.float64)
    w = f(u) * path.conditional_log_prob(u, y, t).exp()
    rhs = _volume(g) * w.mean()
    se = float(f(xt).std()) / math.sqrt(n) + _volume(g) * float(w.std()) / math.sqrt(n)
    assert abs(float(lhs - rhs)) < 5 * se


def test_sphere_contracted_density_limits():
    g = Sphere(3)
    y = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    s = torch.tensor(0.3, dtype=torch.float64)
    at_y = g.contracted_base_log_prob(y, y, s)
    assert torch.allclose(at_y, torch.tensor(-math.log(4 * math.pi) - 2 * math.log(0.3),
                                             dtype=torch.float64))
    far = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)       # r = π/2 > 0.3 π
    assert g.contracted_base_log_prob(far, y, s).item() == -math.inf
    uniform = g.contracted_base_log_prob(far, y, torch.tensor(1.0, dtype=torch.float64))
    assert uniform.item() == pytest.approx(-math.log(4 * math.pi))


def test_euclidean_contracted_density_is_gaussian():
    g = Euclidean(2, base_scale=2.0)
    x = torch.randn(5, 2, generator=_gen(7), dtype=torch.float64)
    y = torch.randn(5, 2, generator=_gen(8), dtype=torch.float64)
    s = torch.rand(5, generator=_gen(9), dtype=torch.float64)
    ref = torch.distributions.Normal((1 - s[:, None]) * y, 2.0 * s[:, None])
    assert torch.allclose(g.contracted_base_log_prob(x, y, s), ref.log_prob(x).sum(-1))


def test_unsupported_geometry_is_refused_up_front():
    # a geometry without the closed-form density: the direct call names it, and both
    # marginal_velocity and fit refuse before any work instead of failing mid-training
    g = Hyperbolic(2)
    x = torch.tensor([[1.0, 0.0, 0.0]])
    path = GeodesicPath(g)
    with pytest.raises(NotImplementedError, match="Hyperbolic"):
        path.conditional_log_prob(x, x, torch.tensor([0.5]))
    with pytest.raises(TypeError, match="Hyperbolic"):
        marginal_velocity(path, x, torch.tensor([0.5]), x)
    with pytest.raises(ValueError, match="Hyperbolic"):
        fit(torch.nn.Linear(3, 3), lambda n, gen: x.expand(n, 3), path, g, steps=2,
            batch_size=4, progress=False, marginal_target=0)


# -- weighted logarithms -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 4])
def test_sphere_posterior_logmap_matches_the_generic_tables(n):
    g = Sphere(n)
    x = g.sample_base((64,), generator=_gen(10), dtype=torch.float64)
    near = g.expmap(x[:8], 1e-4 * g.random_tangent(x[:8], generator=_gen(11)))
    y = torch.cat([g.sample_base((40,), generator=_gen(12), dtype=torch.float64), near, x[8:9],
                   -x[9:11] + 1e-3 * torch.randn(2, n, generator=_gen(13), dtype=torch.float64)])
    y = y / y.norm(dim=-1, keepdim=True)
    s = torch.rand(64, generator=_gen(14), dtype=torch.float64)
    s[:4] = torch.tensor([1.0, 1e-3, 1e-5, 0.999])
    fast, ok_fast = g.posterior_logmap(x, y, s)
    slow, ok_slow = Geometry.posterior_logmap(g, x, y, s)
    assert torch.equal(ok_fast, ok_slow)
    assert torch.allclose(fast, slow, atol=1e-9)
    assert (x * fast).sum(-1).abs().max() < 1e-12


def test_torus_posterior_logmap_matches_the_generic_tables():
    g = FlatTorus(3)
    x = g.sample_base((64,), generator=_gen(23), dtype=torch.float64)
    y = torch.cat([g.sample_base((30,), generator=_gen(24), dtype=torch.float64),
                   g.expmap(x[:10], 0.05 * torch.randn(10, 3, generator=_gen(25),
                                                        dtype=torch.float64))])
    s = torch.rand(64, generator=_gen(26), dtype=torch.float64)
    s[:3] = torch.tensor([1.0, 1e-3, 0.05])
    fast, ok_fast = g.posterior_logmap(x, y, s)
    slow, ok_slow = Geometry.posterior_logmap(g, x, y, s)
    assert torch.equal(ok_fast, ok_slow) and not ok_fast.all()
    assert torch.allclose(fast, slow, atol=1e-12)


# -- the marginal velocity ---------------------------------------------------------------------
def _cases():
    return [
        ("sphere", GeodesicPath(Sphere(3)), Sphere(3)),
        ("torus", GeodesicPath(FlatTorus(2), PolynomialScheduler(1.5)), FlatTorus(2)),
        ("euclidean-geodesic", GeodesicPath(Euclidean(2)), Euclidean(2)),
        ("affine", CondOTPath(), Euclidean(2)),
    ]


@pytest.mark.parametrize("name,path,g", _cases(), ids=[c[0] for c in _cases()])
def test_one_reference_point_gives_the_conditional_velocity(name, path, g):
    n = 32
    y = g.sample_base((1,), generator=_gen(15), dtype=torch.float64)
    x0 = g.sample_base((n,), generator=_gen(16), dtype=torch.float64)
    t = torch.rand(n, generator=_gen(17), dtype=torch.float64) * 0.98
    sample = path.sample(x0, y.expand(n, -1), t)
    u, supported = marginal_velocity(path, sample.x_t, t, y)
    assert supported.all()
    assert torch.allclose(u, sample.dx_t, atol=1e-8)


@pytest.mark.parametrize("name,path,g", _cases(), ids=[c[0] for c in _cases()])
def test_marginal_velocity_is_the_posterior_mean(name, path, g):
    # u_t(x) = E[u_t(x_t | x1) | x_t = x], so E[(u_t(x_t | x1) − u_t(x_t)) · h(x_t)] = 0 for
    # every test field h; equal weights on the reference points (a wrong posterior) fail it
    n = 200_000
    ref = g.sample_base((3,), generator=_gen(18), dtype=torch.float64)
    idx = torch.randint(0, 3, (n,), generator=_gen(19))
    x0 = g.sample_base((n,), generator=_gen(20), dtype=torch.float64)
    t = torch.full((n,), 0.5, dtype=torch.float64)
    sample = path.sample(x0, ref[idx], t)
    u, supported = marginal_velocity(path, sample.x_t, t, ref, chunk_size=50_000)
    assert supported.all()
    xt = sample.x_t
    h = torch.stack([torch.sin(xt[:, 0] + 2 * xt[:, 1]), torch.cos(3 * xt[:, 1] - xt[:, 0])], -1)
    if isinstance(g, Sphere):
        h = g.proju(xt, torch.cat([h, torch.sin(xt[:, 2:])], -1))

    def residual(v):
        r = ((sample.dx_t - v) * h).sum(-1)
        return float(r.mean()), float(r.std()) / math.sqrt(n)

    mean, se = residual(u)
    assert abs(mean) < 5 * se
    table = path.conditional_velocity(xt.unsqueeze(1), ref.unsqueeze(0), t.unsqueeze(1))
    mean_bad, se_bad = residual(table.mean(1))
    assert abs(mean_bad) > 10 * se_bad


def test_marginal_velocity_checks_its_inputs():
    path = GeodesicPath(Sphere(3))
    x = Sphere(3).sample_base((4,), generator=_gen(21))
    with pytest.raises(ValueError, match="point shape"):
        marginal_velocity(path, x, torch.rand(4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        marginal_velocity(path, x, torch.rand(3), x)
    with pytest.raises(ValueError, match="at least one"):
        marginal_velocity(path, x, torch.rand(4), x[:0])
    with pytest.raises(TypeError, match="MixtureDiscretePath"):
        marginal_velocity(MixtureDiscretePath(), x, torch.rand(4), x)


# -- fit -----------------------------------------------------------------------------------------
class _Field(torch.nn.Module):
    def __init__(self, g):
        super().__init__()
        self.g = g
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.SiLU(),
                                       torch.nn.Linear(64, 3))

    def forward(self, x, t):
        return self.g.proju(x, self.net(torch.cat([x, t[:, None]], -1)))


def _sphere_data():
    g = Sphere(3)
    centers = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    data = g.expmap(centers.repeat(50, 1), 0.1 * g.random_tangent(centers.repeat(50, 1),
                                                                  generator=_gen(22)))
    return g, data


@pytest.mark.parametrize("target", [0, 16, "all"])
def test_fit_with_marginal_targets_lowers_the_target_variance(target):
    g, data = _sphere_data()

    def sample(n, gen):
        return data[torch.randint(0, data.shape[0], (n,), generator=gen)]

    def run(marginal):
        torch.manual_seed(0)
        return fit(_Field(g), sample, GeodesicPath(g), g, steps=150, batch_size=64, lr=3e-3,
                   progress=False, ema_decay=None, marginal_target=marginal, log_every=50)

    plain = run(None)
    marginal = run(data if target == "all" else target)
    # the conditional target's variance is a floor under the plain loss; the marginal
    # target removes most of it
    assert sum(marginal.losses[-50:]) < 0.5 * sum(plain.losses[-50:])
    assert sum(marginal.losses[-50:]) < sum(marginal.losses[:50])


def test_fit_marginal_target_bad_settings():
    g, data = _sphere_data()

    def sample(n, gen):
        return data[torch.randint(0, data.shape[0], (n,), generator=gen)]

    common = dict(steps=2, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="coupling"):
        fit(_Field(g), sample, GeodesicPath(g), g, marginal_target=0,
            coupling=OTCoupling(geometry=g), **common)
    with pytest.raises(ValueError, match="int ≥ 0"):
        fit(_Field(g), sample, GeodesicPath(g), g, marginal_target=-1, **common)
    with pytest.raises(ValueError, match=r"‖x‖ = 1|marginal_target"):
        fit(_Field(g), sample, GeodesicPath(g), g, marginal_target=2 * data, **common)

    def conditional(n, gen):
        return sample(n, gen), torch.zeros(n, dtype=torch.long)

    with pytest.raises(ValueError, match="unconditional"):
        fit(_Field(g), conditional, GeodesicPath(g), g, marginal_target=0, **common)
    with pytest.raises(ValueError, match="N\\(0, I\\)"):
        fit(torch.nn.Linear(3, 3), sample, CondOTPath(), Euclidean(3, base_scale=2.0),
            marginal_target=0, **common)


def test_fit_resume_refuses_another_marginal_target(tmp_path):
    g, data = _sphere_data()

    def sample(n, gen):
        return data[torch.randint(0, data.shape[0], (n,), generator=gen)]

    ckpt = tmp_path / "fit.pt"
    fit(_Field(g), sample, GeodesicPath(g), g, steps=2, batch_size=8, progress=False,
        checkpoint_path=ckpt, marginal_target=0)
    with pytest.raises(ValueError, match="marginal_target"):
        fit(_Field(g), sample, GeodesicPath(g), g, steps=4, batch_size=8, progress=False,
            checkpoint_path=ckpt, marginal_target=4)

"""The solver engine: one explicit Runge–Kutta loop, motions, Solution, and the step-rule protocol.

Every solver face runs `flowmatch.solvers.engine.solve`; these tests check the engine's own
contract — tableau orders, what each motion does with the stage slopes, the count of
evaluations a result carries — and the layering rule that `flowmatch.solvers` reaches discrete
paths only through their `jump_step` method, never by importing `flowmatch.paths`.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import flowmatch.solvers as solvers_pkg
from flowmatch.geometry import Euclidean, Product, Sphere
from flowmatch.geometry.discrete import Discrete
from flowmatch.models.mlp import MLP
from flowmatch.paths import CondOTScheduler, MixtureDiscretePath
from flowmatch.paths.metric_induced import MetricInducedPath
from flowmatch.plugins.video import GaussianVideo, VideoSampler
from flowmatch.solvers import (
    DiscreteSolver,
    MetricInducedJump,
    MixtureJump,
    ODESolver,
    ProductSolver,
    RiemannianODESolver,
    Solution,
    discrete_step_for,
)
from flowmatch.solvers.engine import (
    TABLEAUX,
    Accumulate,
    Factors,
    Fixed,
    Flat,
    FlatBroadcast,
    Jump,
    float_steps,
    node_steps,
    solve,
)

F64 = torch.float64
SOLVERS_DIR = Path(solvers_pkg.__file__).parent


# -- layering ------------------------------------------------------------------------------------
def _imports_of(tree: ast.AST, package: str) -> list[str]:
    """Every module an ``import`` statement of ``tree`` names (relative ones resolved)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]
    return found


def test_solvers_import_nothing_from_paths():
    files = sorted(SOLVERS_DIR.glob("*.py"))
    assert len(files) >= 10
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for module in _imports_of(tree, "flowmatch.solvers"):
            if module == "flowmatch.paths" or module.startswith("flowmatch.paths."):
                offenders.append(f"{path.name}: {module}")
    assert not offenders, f"flowmatch/solvers must not import flowmatch.paths: {offenders}"


def test_the_import_check_sees_relative_and_nested_imports():
    src = ("def f():\n    from ..paths import mixture\n"
           "from .. import paths\nimport flowmatch.paths.product as p\n")
    found = _imports_of(ast.parse(src), "flowmatch.solvers")
    assert "flowmatch.paths" in found and "flowmatch.paths.mixture" in found
    assert "flowmatch.paths.product" in found


# -- tableaux and motions --------------------------------------------------------------------------
@pytest.mark.parametrize("method, order", [("euler", 1), ("midpoint", 2), ("heun", 2),
                                           ("rk4", 4)])
def test_tableau_orders(method, order):
    # ẋ = −2 t x from x(0) = 1: x(1) = e^{−1}
    def err(n):
        nodes = torch.linspace(0.0, 1.0, n + 1, dtype=F64)
        sol = solve(lambda x, t: -2 * t[:, None] * x, torch.ones(1, 1, dtype=F64),
                    node_steps(nodes, TABLEAUX[method], 1), Flat())
        assert sol.nfe == n * TABLEAUX[method].stages and sol.num_steps == n
        return abs(float(sol.state) - math.exp(-1))

    observed = math.log2(err(20) / err(40))
    assert abs(observed - order) < 0.15, observed


def test_rk4_quadrature_is_simpsons_rule():
    # a state the integrand does not see: RK4 is Simpson's rule, exact for cubics
    steps = float_steps([0.0, 0.5], [0.5, 0.5], [0.5, 1.0], TABLEAUX["rk4"])
    sol = solve(lambda acc, t: torch.tensor(4 * t**3 + 1, dtype=F64), torch.zeros((), dtype=F64),
                steps, Accumulate())
    assert float(sol.state) == pytest.approx(2.0, abs=1e-15)
    assert sol.times == (0.0, 0.5, 1.0)


def test_jump_uses_the_first_stage_and_holds_the_state_at_the_others():
    seen, used = [], []

    def f(x, t):
        seen.append((x.clone(), t))
        return torch.full((2,), t)

    def step(x, logits, t, h):
        used.append((float(logits[0]), t, h))
        return x + 1

    sol = solve(f, torch.zeros(2), float_steps([0.0, 0.25], [0.25, 0.75], [0.25, 1.0],
                                               TABLEAUX["rk4"]), Jump(step))
    assert torch.equal(sol.state, torch.full((2,), 2.0))
    assert used == [(0.0, 0.0, 0.25), (0.25, 0.25, 0.75)]
    assert [float(x[0]) for x, _ in seen] == [0.0] * 4 + [1.0] * 4  # held at the stages
    assert sol.nfe == 8


def test_flat_and_broadcast_motions_agree():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=F64)
    ks = [torch.randn(3, 4, generator=g, dtype=F64) for _ in range(4)]
    for name, tab in TABLEAUX.items():
        a = Flat().update(x, tab.update, ks, 0.3, 0.0)
        b = FlatBroadcast().update(x, tab.update, ks, torch.tensor(0.3, dtype=F64), 0.0)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15, msg=name)


def test_factors_hold_fixed_and_project_at_the_base_point():
    geometry = Product(pos=Euclidean(2), s=Sphere(3), tag=Discrete(3, "uniform"))
    x = {"pos": torch.zeros(4, 2, dtype=F64), "s": Sphere(3).sample_base(4, dtype=F64),
         "tag": torch.arange(4) % 3}
    from flowmatch.solvers.engine import Geodesic

    motion = Factors({"pos": Geodesic(Euclidean(2)), "s": Geodesic(Sphere(3)), "tag": Fixed()},
                     geometry.proju, tangent_factors=("pos", "s"))
    k = motion.tangent(x, x, {"pos": torch.ones(4, 2, dtype=F64), "s": torch.ones(4, 3, dtype=F64)})
    assert set(k) == {"pos", "s"}
    assert float((k["s"] * x["s"]).sum(-1).abs().max()) < 1e-15  # tangent at x
    y = motion.update(x, TABLEAUX["euler"].update, [k], 0.1, 0.0)
    assert y["tag"] is x["tag"]
    torch.testing.assert_close(y["pos"], torch.full((4, 2), 0.1, dtype=F64))


# -- Solution: each call's own count of evaluations -----------------------------------------------
def test_a_solution_keeps_its_nfe_after_later_calls():
    torch.manual_seed(0)
    solver = ODESolver(MLP(2, hidden=16, layers=1))
    x0 = torch.randn(5, 2)
    sol = solver.sample(x0, method="midpoint", num_steps=20, return_solution=True)
    assert isinstance(sol, Solution) and sol.nfe == 40 and sol.num_steps == 20
    assert len(sol.times) == 21 and sol.times[0] == 0.0 and sol.times[-1] == 1.0
    assert torch.equal(sol.state, solver.sample(x0, method="midpoint", num_steps=20))
    ll = solver.log_likelihood(sol.state, lambda z: -0.5 * (z**2).sum(-1), method="rk4",
                               num_steps=25, return_solution=True)
    assert ll.nfe == 100 == solver.nfe and sol.nfe == 40
    x_back, log_p = ll.state
    assert x_back.shape == (5, 2) and log_p.shape == (5,)
    adaptive = solver.sample(x0, method="dopri5", return_solution=True)
    assert adaptive.nfe == solver.nfe > 0 and adaptive.num_steps is None


def test_every_face_returns_a_solution():
    torch.manual_seed(1)
    sph = Sphere(3)
    rs = RiemannianODESolver(MLP(3, hidden=16, layers=1).double(), sph)
    x = sph.sample_base(4, dtype=F64)
    sol = rs.sample(x, method="rk4", num_steps=6, time_grid=torch.tensor([0.0, 0.5, 1.0]),
                    return_solution=True, return_intermediates=True)
    assert sol.nfe == 24 and sol.num_steps == 6 and sol.state.shape == (3, 4, 3)
    ll = rs.log_likelihood(x, method="heun", num_steps=3, return_solution=True)
    assert ll.nfe == 6 == rs.nfe and ll.times == pytest.approx((1.0, 2 / 3, 1 / 3, 0.0))

    sp = Discrete(4, "mask")
    ds = DiscreteSolver(lambda y, t: torch.zeros(*y.shape, 4), sp, CondOTScheduler())
    d = ds.sample(sp.sample_base((3, 2)), num_steps=5, return_solution=True)
    assert d.nfe == 5 and d.num_steps == 5 and not bool((d.state == 4).any())

    geometry = Product(pos=Euclidean(1), tag=Discrete(4, "mask"))
    ps = ProductSolver(lambda y, t: {"pos": -y["pos"], "tag": torch.zeros(*y["tag"].shape, 4)},
                       geometry, {"tag": MixtureDiscretePath(CondOTScheduler())})
    p = ps.sample(geometry.sample_base(3), num_steps=4, method="midpoint", return_solution=True)
    assert p.nfe == 8 and set(p.state) == {"pos", "tag"}

    gv = GaussianVideo(4)
    v = VideoSampler(gv.velocity, "heun").sample(torch.randn(2, 1, 4, 1, 1, dtype=F64),
                                                 num_steps=5, return_solution=True)
    assert v.nfe == 9 and v.num_steps == 5 and v.times[-1] == 1.0


# -- the step-rule protocol ------------------------------------------------------------------------
def test_paths_provide_their_steps_and_anything_else_is_a_clear_type_error():
    mask, uniform = Discrete(4, "mask"), Discrete(4, "uniform")
    assert isinstance(MixtureDiscretePath(CondOTScheduler()).jump_step(mask), MixtureJump)
    step = discrete_step_for(CondOTScheduler(), mask, {"eta": 0.5})  # a bare scheduler delegates
    assert isinstance(step, MixtureJump) and step.options == {"eta": 0.5}
    assert isinstance(discrete_step_for(MetricInducedPath.ordinal(4), uniform),
                      MetricInducedJump)
    with pytest.raises(TypeError, match="discrete factor 'y' needs a path that provides its "
                                        "jump step.*got object"):
        discrete_step_for(object(), mask, factor="y")
    with pytest.raises(TypeError, match="Discrete space"):
        discrete_step_for(CondOTScheduler(), Euclidean(2))


def test_a_new_discrete_path_plugs_in_through_jump_step():
    class Stay:
        """A discrete 'path' whose step keeps every token (a custom rule, no paths import)."""

        def __init__(self):
            self.calls = 0

        def jump_step(self, space, options=None, *, generator=None, checked=True, factor=None):
            def step(x, logits, t, h):
                self.calls += 1
                return x

            return step

    rule = Stay()
    geometry = Product(pos=Euclidean(1), tag=Discrete(3, "uniform"))
    x0 = geometry.sample_base(5)
    out = ProductSolver(lambda y, t: {"pos": torch.ones_like(y["pos"]),
                                      "tag": torch.zeros(5, 3)}, geometry, {"tag": rule}).sample(
        x0, num_steps=4)
    assert rule.calls == 4  # one jump per step
    assert torch.equal(out["tag"], x0["tag"])
    torch.testing.assert_close(out["pos"], x0["pos"] + 1)


def test_flow_mixture_refuses_return_solution():
    from flowmatch.solvers import FlowMixture

    mixture = FlowMixture([ODESolver(lambda x, t: x), ODESolver(lambda x, t: -x)])
    with pytest.raises(ValueError, match="return_solution"):
        mixture.sample(torch.zeros(2, 1), return_solution=True)
    with pytest.raises(ValueError, match="return_solution"):
        mixture.log_likelihood(torch.zeros(2, 1), lambda z: z.sum(-1), return_solution=True)

"""Products with a metric-induced discrete factor: ProductSolver dispatches the step per path.

The toy joint: a label y uniform on K = 4 ordinal classes and a position x ∈ R ~ N(c_y, s²).
The position has a Gaussian source and the CondOT path; the label has a uniform source and the
metric-induced path p_t(l | y) = softmax_l(−β_t |l − y|). Given y the two factors are
independent along the path, x_t ~ N(t c_y, σ_t²) with σ_t² = (1 − t)² + t² s², so the exact
posterior of the label given the whole state is

    p(y | x_t, l_t) ∝ N(x_t; t c_y, σ_t²) p_t(l_t | y),

the position velocity is Σ_y p(y | ·) u_y(x_t) with u_y(x) = c_y + (σ̇_t/σ_t)(x − t c_y), and
the label's posterior logits are log p(y | ·). Sampling with that field must reproduce the joint
at t = 1 and the path's label law Σ_y π_y p_t(· | y) at intermediate times.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from flowmatch.geometry import Euclidean, Product
from flowmatch.geometry.discrete import Discrete
from flowmatch.paths import AffinePath, CondOTScheduler, ProductPath
from flowmatch.paths.metric_induced import MetricInducedPath, PowerBetaScheduler
from flowmatch.paths.mixture import MixtureDiscretePath
from flowmatch.solvers.ctmc import ctmc_step
from flowmatch.solvers.discrete_step import (
    CTMC_STEP_OPTIONS,
    METRIC_INDUCED_STEP_OPTIONS,
    discrete_step_for,
)
from flowmatch.solvers.metric_induced import MetricInducedSolver, metric_induced_step
from flowmatch.solvers.product import ProductSolver

K = 4
S = 0.3
C = torch.tensor([-3.0, -1.0, 1.0, 3.0], dtype=torch.float64)
LABEL_PATH = MetricInducedPath.ordinal(K, PowerBetaScheduler(1.0, 1.0))
# 0.1% critical values of the chi-square distribution
CHI2_3DOF = 16.27
CHI2_12DOF = 32.91


def make_space():
    geometry = Product(pos=Euclidean(1), label=Discrete(K, "uniform"))
    path = ProductPath(pos=AffinePath(CondOTScheduler()), label=LABEL_PATH)
    return geometry, path


def exact_field(x, t):
    pos, label = x["pos"], x["label"]
    tt = t[:, None]
    var = (1 - tt) ** 2 + tt**2 * S**2
    rate = (-(1 - tt) + tt * S**2) / var  # σ̇_t / σ_t
    diff = pos - tt * C[None]  # x_t − t c_y for every y: [B, K]
    # log N(x_t; t c_y, σ_t²) + log p_t(l_t | y), dropping what does not depend on y
    log_post = -0.5 * diff**2 / var + LABEL_PATH.log_likelihood(label, t)
    post = torch.softmax(log_post, dim=-1)
    velocity = (post * (C[None] + rate * diff)).sum(-1, keepdim=True)
    return {"pos": velocity, "label": log_post}


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("method", ["marginal", "sample_x1"])
def test_exact_joint_field_reproduces_the_joint_and_the_path(method):
    geometry, path = make_space()
    n, steps = 16000, 160
    g = torch.Generator().manual_seed(5)
    x0 = geometry.sample_base(n, generator=g, dtype=torch.float64)
    states = ProductSolver(exact_field, geometry, path).sample(
        x0, time_grid=[0.0, 0.5, 1.0], num_steps=steps, generator=g,
        discrete_options={"label": {"method": method}}, return_intermediates=True)
    mid, end = states[1], states[2]
    # at t = 0.5 the label follows the path's marginal Σ_y π_y p_t(· | y)
    law_mid = LABEL_PATH.log_probs(torch.arange(K), torch.tensor(0.5)).exp().mean(0)
    chi2 = chi_square(torch.bincount(mid["label"], minlength=K).double(), law_mid)
    assert chi2 < CHI2_3DOF, f"label law at t=0.5: chi-square {chi2:.2f} (3 dof)"
    # at t = 1 the labels are uniform and each position follows its own label's component
    chi2 = chi_square(torch.bincount(end["label"], minlength=K).double(),
                      torch.full((K,), 1.0 / K, dtype=torch.float64))
    assert chi2 < CHI2_3DOF, f"label law at t=1: chi-square {chi2:.2f} (3 dof)"
    for k in range(K):
        sel = end["pos"][end["label"] == k, 0]
        assert abs(float(sel.mean()) - float(C[k])) < 0.03, (k, float(sel.mean()))
        assert abs(float(sel.std()) - S) < 0.02, (k, float(sel.std()))


def test_one_hot_posterior_ends_at_the_target_along_the_conditional_path():
    # a field that knows each sample's target y*: the label must follow p_t(· | y*) and end at y*
    geometry, path = make_space()
    n = 16000
    target = torch.arange(n) % K

    def field(x, t):
        logits = torch.full((n, K), float("-inf"), dtype=torch.float64)
        logits[torch.arange(n), target] = 0.0
        return {"pos": -x["pos"], "label": logits}

    g = torch.Generator().manual_seed(11)
    x0 = geometry.sample_base(n, generator=g, dtype=torch.float64)
    states = ProductSolver(field, geometry, path).sample(
        x0, time_grid=[0.0, 0.4, 1.0], num_steps=60, generator=g, return_intermediates=True)
    assert torch.equal(states[-1]["label"], target)
    law = LABEL_PATH.log_probs(torch.arange(K), torch.tensor(0.4)).exp()  # [y*, K]
    chi2 = sum(chi_square(torch.bincount(states[1]["label"][target == y], minlength=K).double(),
                          law[y]) for y in range(K))
    assert chi2 < CHI2_12DOF, f"label law at t=0.4 given y*: chi-square {chi2:.2f} (12 dof)"


W = torch.randn(K, K, generator=torch.Generator().manual_seed(0))


def label_field(label, t):
    return W[label] * (1 + t[:, None]) + t[:, None] * torch.arange(K)


@pytest.mark.parametrize("method", ["euler", "midpoint"])
@pytest.mark.parametrize("options", [{}, {"method": "sample_x1", "temperature": 0.7},
                                     {"top_k": 2, "top_p": 0.9}])
def test_product_draws_equal_the_single_factor_solver(method, options):
    # the position does not touch the label and uses no randomness, so the product solver must
    # make exactly the metric-induced solver's draws from the same generator (t is float32 in
    # both: the position is float32)
    geometry, path = make_space()
    n = 300
    x0 = geometry.sample_base(n, generator=torch.Generator().manual_seed(2))
    grid = dict(time_grid=[0.0, 0.4, 1.0], num_steps=12)

    def field(x, t):
        return {"pos": -x["pos"] * t[:, None], "label": label_field(x["label"], t)}

    product = ProductSolver(field, geometry, path).sample(
        x0, **grid, method=method, discrete_options={"label": options},
        generator=torch.Generator().manual_seed(7), return_intermediates=True)
    single = MetricInducedSolver(label_field, geometry["label"], LABEL_PATH).sample(
        x0["label"], **grid, **options, generator=torch.Generator().manual_seed(7),
        return_intermediates=True)
    assert len(product) == single.shape[0] == 3
    for state, tokens in zip(product, single, strict=True):
        assert torch.equal(state["label"], tokens)
    assert not torch.equal(single[0], single[-1])


def test_mixture_and_metric_induced_factors_share_one_grid():
    geometry = Product(pos=Euclidean(1), masked=Discrete(K, "mask"),
                       label=Discrete(K, "uniform"))
    path = ProductPath(pos=AffinePath(CondOTScheduler()),
                       masked=MixtureDiscretePath(CondOTScheduler()), label=LABEL_PATH)

    def field(x, t):
        return {"pos": -x["pos"], "masked": label_field(x["masked"].clamp_max(K - 1), t),
                "label": label_field(x["label"], t)}

    x0 = geometry.sample_base(200, generator=torch.Generator().manual_seed(3))
    solver = ProductSolver(field, geometry, path)
    x1 = solver.sample(x0, num_steps=8, generator=torch.Generator().manual_seed(4),
                       discrete_options={"masked": {"eta": 0.5},
                                         "label": {"method": "sample_x1"}})
    assert solver.nfe == 8
    assert int((x1["masked"] == K).sum()) == 0, "every masked token is unmasked at t = 1"
    assert 0 <= int(x1["label"].min()) and int(x1["label"].max()) < K
    # a mapping factor → path (or → scheduler for a mixture factor) works like the ProductPath
    by_name = ProductSolver(field, geometry, {"masked": CondOTScheduler(), "label": LABEL_PATH})
    again = by_name.sample(x0, num_steps=8, generator=torch.Generator().manual_seed(4),
                           discrete_options={"masked": {"eta": 0.5},
                                             "label": {"method": "sample_x1"}})
    assert all(torch.equal(x1[k], again[k]) for k in x1)


def test_bad_discrete_options_name_the_factor_and_the_allowed_keys():
    geometry, path = make_space()
    solver = ProductSolver(exact_field, geometry, path)
    x0 = geometry.sample_base(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"discrete_options\['label'\]: \['eta'\] are not.*"
                                         r"MetricInducedPath.*'method', 'temperature'"):
        solver.sample(x0, num_steps=2, discrete_options={"label": {"eta": 0.5}})
    with pytest.raises(ValueError, match=r"\['generator'\]"):
        solver.sample(x0, num_steps=2, discrete_options={"label": {"generator": None}})
    with pytest.raises(ValueError, match="method must be one of"):
        solver.sample(x0, num_steps=2, discrete_options={"label": {"method": "exact"}})
    mixture = Product(pos=Euclidean(1), label=Discrete(K, "mask"))
    mixture_solver = ProductSolver(
        exact_field, mixture,
        ProductPath(pos=AffinePath(CondOTScheduler()),
                    label=MixtureDiscretePath(CondOTScheduler())))
    with pytest.raises(ValueError, match=r"\['method'\].*mixture path.*'eta', 'corrector'"):
        mixture_solver.sample(mixture.sample_base(4, dtype=torch.float64), num_steps=2,
                              discrete_options={"label": {"method": "marginal"}})
    # a metric-induced path starts at the uniform source: a mask factor is refused up front
    with pytest.raises(ValueError, match="uniform"):
        ProductSolver(exact_field, mixture, {"label": LABEL_PATH})
    with pytest.raises(TypeError, match="discrete factor 'label'.*MetricInducedPath"):
        ProductSolver(exact_field, geometry, {"label": AffinePath(CondOTScheduler())})


def test_option_tables_match_the_step_signatures():
    for table, step in ((CTMC_STEP_OPTIONS, ctmc_step),
                        (METRIC_INDUCED_STEP_OPTIONS, metric_induced_step)):
        keywords = [p.name for p in inspect.signature(step).parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "generator"]
        assert list(table) == keywords, step.__name__
    with pytest.raises(ValueError, match=r"options: \['eta'\] are not options of the "):
        discrete_step_for(LABEL_PATH, Discrete(K, "uniform"), {"eta": 0.1})


def test_product_path_and_loss_train_a_metric_induced_factor():
    # ProductPath samples the metric-induced factor (x0 ignored, dx_t None) and product_loss
    # gives it the plain cross-entropy, which is how metric-induced networks are trained
    from flowmatch.training.discrete_loss import discrete_cross_entropy
    from flowmatch.training.product_loss import product_loss

    geometry, path = make_space()
    g = torch.Generator().manual_seed(9)
    n = 64
    y = torch.randint(K, (n,), generator=g)
    x1 = {"pos": C[y][:, None] + S * torch.randn(n, 1, generator=g, dtype=torch.float64),
          "label": y}
    samples = path.sample(geometry.sample_base(n, generator=g, dtype=torch.float64), x1,
                          torch.rand(n, generator=g, dtype=torch.float64))
    assert samples["label"].dx_t is None
    assert 0 <= int(samples["label"].x_t.min()) and int(samples["label"].x_t.max()) < K
    out = exact_field({k: s.x_t for k, s in samples.items()}, samples["pos"].t)
    _, parts = product_loss(out, samples, geometry)
    expected = discrete_cross_entropy(out["label"], y, samples["label"].x_t, geometry["label"])
    torch.testing.assert_close(parts["label"], expected)

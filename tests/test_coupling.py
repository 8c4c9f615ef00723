"""Couplings: the OT coupling is a permutation, optimal for the assignment, lowers the cost."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowmatch.geometry import Euclidean, as_geometry
from flowmatch.paths import OTCoupling, independent_coupling


def _is_permutation(perm: torch.Tensor, n: int) -> bool:
    return perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(n))


def _mean_cost(x0, x1):
    return float((x0 - x1).flatten(1).pow(2).sum(-1).mean())


def test_independent_coupling_is_identity():
    x0, x1 = torch.randn(5, 2), torch.randn(5, 2)
    a, b = independent_coupling(x0, x1)
    assert a is x0 and b is x1
    with pytest.raises(ValueError, match="same batch size"):
        independent_coupling(x0, torch.randn(4, 2))


def test_exact_coupling_matches_brute_force_assignment():
    # For B = 6 there are 720 pairings: the exact coupling must find the cheapest one.
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    perm = OTCoupling("exact").permutation(x0, x1)
    assert _is_permutation(perm, 6)
    best = min(sum(float((x0[p[j]] - x1[j]).pow(2).sum()) for j in range(6))
               for p in itertools.permutations(range(6)))
    got = sum(float((x0[perm[j]] - x1[j]).pow(2).sum()) for j in range(6))
    assert got == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_ot_coupling_is_a_permutation_that_lowers_transport_cost(method):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 2, generator=g)
    x1 = torch.randn(256, 2, generator=g) * 0.5 + torch.tensor([3.0, 0.0])
    coupling = OTCoupling(method)
    perm = coupling.permutation(x0, x1)
    assert _is_permutation(perm, 256)  # every x0 used exactly once: no duplicates, no drops
    a, b = coupling(x0, x1)
    assert b is x1
    torch.testing.assert_close(a, x0[perm])
    # Independent pairing costs E|x0 − x1|² = 2 + 0.5 + 9 = 11.5 in expectation; the OT
    # pairing of this batch (measured: ≈ 9.6) must be clearly below the identity pairing.
    identity, coupled = _mean_cost(x0, x1), _mean_cost(a, x1)
    assert coupled < identity - 1.0
    if method == "sinkhorn":
        exact = _mean_cost(*OTCoupling("exact")(x0, x1))
        assert coupled <= exact * 1.02  # rounding a sharp entropic plan ≈ the exact assignment


@pytest.mark.parametrize("reg", [0.01, 0.05, 1.0])
def test_sinkhorn_rounding_is_near_optimal(reg):
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g) + 1
    exact = _mean_cost(*OTCoupling("exact")(x0, x1))
    rounded = _mean_cost(*OTCoupling("sinkhorn", reg=reg)(x0, x1))
    assert exact <= rounded + 1e-6  # the exact assignment is optimal among permutations
    assert rounded <= exact * 1.002  # and the rounded entropic plan is within 0.2 % of it


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 24), shape=st.sampled_from([(1,), (3,), (2, 2), (2, 1, 3)]),
       seed=st.integers(0, 2**31 - 1), method=st.sampled_from(["exact", "sinkhorn"]))
def test_ot_coupling_is_a_permutation_never_worse_than_identity(batch, shape, seed, method):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    x1 = 2 * torch.randn(batch, *shape, generator=g, dtype=torch.float64) + 1
    perm = OTCoupling(method).permutation(x0, x1)
    assert _is_permutation(perm, batch)
    if method == "exact":  # optimal among all permutations, the identity included
        assert _mean_cost(x0[perm], x1) <= _mean_cost(x0, x1) + 1e-12


def test_ot_coupling_flattens_any_data_shape():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 3, 4, 4, generator=g)
    # x1 is a shuffled, slightly perturbed copy of x0: the OT coupling must undo the shuffle
    shuffle = torch.randperm(32, generator=g)
    x1 = x0[shuffle] + 1e-3 * torch.randn(32, 3, 4, 4, generator=g)
    perm = OTCoupling("exact").permutation(x0, x1)
    assert torch.equal(perm, shuffle)


def test_ot_coupling_with_geometry_uses_geodesic_distance():
    import geoopt

    sphere = as_geometry(geoopt.Sphere())
    g = torch.Generator().manual_seed(0)
    x0 = sphere.projx(torch.randn(24, 3, generator=g, dtype=torch.float64))
    shuffle = torch.randperm(24, generator=g)
    x1 = x0[shuffle]
    coupling = OTCoupling("exact", geometry=sphere)
    c = coupling.cost_matrix(x0, x1)
    # cost = squared great-circle angle (geoopt clamps the cosine to 1 − 1e-7, so coincident
    # points get an angle of ≈ 4.5e-4 rather than 0: hence the absolute tolerance on d²)
    cos = (x0[:, None] * x1[None]).sum(-1).clamp(-1, 1)
    torch.testing.assert_close(c, torch.arccos(cos).pow(2), atol=3e-7, rtol=1e-6)
    assert torch.equal(coupling.permutation(x0, x1), shuffle)
    # on flat space the geometry cost equals the default squared Euclidean cost
    flat = OTCoupling(geometry=Euclidean(3)).cost_matrix(x0, x1)
    torch.testing.assert_close(flat, OTCoupling().cost_matrix(x0, x1), atol=1e-10, rtol=0)


def test_ot_coupling_custom_cost_and_validation():
    x0, x1 = torch.randn(8, 2), torch.randn(8, 2)
    l1 = OTCoupling(cost=lambda a, b: torch.cdist(a, b, p=1))
    assert _is_permutation(l1.permutation(x0, x1), 8)
    with pytest.raises(ValueError, match="method must be one of"):
        OTCoupling("hungarian")
    with pytest.raises(ValueError, match="cost must be one of"):
        OTCoupling(cost="manhattan")
    with pytest.raises(ValueError, match="reg must be positive"):
        OTCoupling("sinkhorn", reg=0.0)
    with pytest.raises(ValueError, match="same batch size"):
        OTCoupling().permutation(x0, x1[:5])
    with pytest.raises(ValueError, match="same point shape"):
        OTCoupling().permutation(x0, torch.randn(8, 3))
    bad = x0.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x0 must be finite"):
        OTCoupling().permutation(bad, x1)
    with pytest.raises(ValueError, match=r"return a \[8, 8\] matrix"):
        OTCoupling(cost=lambda a, b: torch.zeros(8)).permutation(x0, x1)

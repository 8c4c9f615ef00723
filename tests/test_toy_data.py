"""Toy 2D data sets: support, exact densities, determinism, registry."""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.data import TOY_DATASETS, Checkerboard, EightGaussians, get_toy_dataset


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_every_dataset_samples_finite_2d_points_deterministically(name):
    data = get_toy_dataset(name)
    a = data.sample(500, torch.Generator().manual_seed(7))
    b = data.sample(500, torch.Generator().manual_seed(7))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert data.sample(0).shape == (0, 2)
    assert data.sample(3, dtype=torch.float64).dtype == torch.float64
    # every toy set lives in a box of a few units around the origin (comparable to N(0, I))
    assert a.abs().max() < 6 and a.std(0).min() > 0.5
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        data.sample(-1)


def test_checkerboard_samples_lie_on_occupied_squares_uniformly():
    board = Checkerboard()
    x = board.sample(40_000, torch.Generator().manual_seed(0))
    assert torch.isfinite(board.log_prob(x)).all()  # every sample is on a dark square
    cell = torch.floor((x + 4) / 2).long()
    idx = (cell[:, 0] * 4 + cell[:, 1]).tolist()
    counts = torch.bincount(torch.tensor(idx), minlength=16).float()
    occupied = counts > 0
    assert int(occupied.sum()) == 8
    # uniform over 8 cells: each count ~ Binomial(40000, 1/8), sd ≈ 66; 5 sd bound
    assert (counts[occupied] - 5000).abs().max() < 5 * math.sqrt(40_000 / 8 * 7 / 8)
    # and uniform within a cell: the offset inside the square has mean ½ and variance 1/12
    u = (x + 4) / 2 - cell
    torch.testing.assert_close(u.mean(0), torch.full((2,), 0.5), atol=0.01, rtol=0)
    torch.testing.assert_close(u.var(0), torch.full((2,), 1 / 12), atol=0.005, rtol=0)


def test_checkerboard_log_prob_is_a_normalised_density():
    board = Checkerboard(squares=4, half_width=4.0)
    assert board.entropy == pytest.approx(math.log(32))
    # Riemann sum of the density on a fine grid over [-5, 5]² must be 1
    h = 0.02
    g = torch.arange(-5 + h / 2, 5, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    total = board.log_prob(torch.stack([xx, yy], -1)).exp().sum() * h * h
    assert float(total) == pytest.approx(1.0, abs=1e-6)
    pts = torch.tensor([[0.5, 0.5], [0.5, -0.5], [9.0, 0.0]], dtype=torch.float64)
    assert board.log_prob(pts).tolist() == [
        -math.log(32), float("-inf"), float("-inf")]
    with pytest.raises(ValueError, match="even integer"):
        Checkerboard(squares=3)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 2\]"):
        board.log_prob(torch.zeros(3))


def test_eight_gaussians_log_prob_normalised_and_matches_monte_carlo_entropy():
    mix = EightGaussians()
    h = 0.05
    g = torch.arange(-8 + h / 2, 8, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    total = mix.log_prob(torch.stack([xx, yy], -1)).exp().sum() * h * h
    assert float(total) == pytest.approx(1.0, abs=1e-4)
    # well-separated components: entropy ≈ log 8 + H(N(0, 0.25 I)) = log 8 + 1 + log(2π·0.25)
    x = mix.sample(50_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    entropy = -float(mix.log_prob(x).mean())
    expected = math.log(8) + 1 + math.log(2 * math.pi * 0.25)
    assert entropy == pytest.approx(expected, abs=0.02)


def test_registry_and_errors():
    assert set(TOY_DATASETS) == {"checkerboard", "8gaussians", "moons", "spirals"}
    with pytest.raises(ValueError, match="unknown toy data set 'swissroll'"):
        get_toy_dataset("swissroll")
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="differs from the generator"):
        Checkerboard().sample(3, gen, device="meta")

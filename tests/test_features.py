"""Fourier features: formulas, exact periodicity on the torus, seeding, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.models import RandomFourierFeatures, TorusFourierFeatures


# -- random Fourier features ------------------------------------------------------------------
def test_random_features_formula_and_shapes():
    f = RandomFourierFeatures(3, 16, 10.0, seed=1)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    out = f(x)
    assert f.out_dim == 3 + 32 and out.shape == (5, 4, 35) and out.dtype == torch.float64
    b = f.frequencies.double()
    assert b.shape == (3, 16)
    torch.testing.assert_close(out, torch.cat([x, torch.sin(x @ b), torch.cos(x @ b)], -1))
    g = RandomFourierFeatures(3, 16, 10.0, seed=1, include_input=False)
    assert g.out_dim == 32
    torch.testing.assert_close(g(x), out[..., 3:])


def test_random_frequencies_have_the_requested_scale():
    b = RandomFourierFeatures(4, 4096, 2.5).frequencies
    # 16,384 draws: the sample std of N(0, σ²) is within 3 % of σ (≈ 5 standard errors)
    assert abs(float(b.std()) / 2.5 - 1) < 0.03
    assert abs(float(b.mean())) < 0.1


def test_random_features_are_seeded_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    a = RandomFourierFeatures(3, 8, 1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.frequencies, RandomFourierFeatures(3, 8, 1.0, seed=7).frequencies)
    assert not torch.equal(a.frequencies, RandomFourierFeatures(3, 8, 1.0, seed=8).frequencies)
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(a.frequencies,
                       RandomFourierFeatures(3, 8, 1.0, generator=gen).frequencies)
    # the default seed is 0, and B is exactly σ times a standard normal draw of that seed (the
    # features the sphere benchmark has always used)
    expected = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 10.0
    assert torch.equal(RandomFourierFeatures(3, 8, 10.0).frequencies, expected)


def test_frequencies_travel_in_the_state_dict():
    a, b = RandomFourierFeatures(3, 8, 1.0, seed=1), RandomFourierFeatures(3, 8, 1.0, seed=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# -- torus features ---------------------------------------------------------------------------
def test_torus_features_layout_and_formula():
    f = TorusFourierFeatures(7, 12, 2.0, harmonics=3, seed=0)
    assert f.out_dim == 2 * 7 * 3 + 2 * 12
    x = torch.rand(9, 7, dtype=torch.float64) * 2 * math.pi
    out = f(x)
    assert out.shape == (9, f.out_dim)
    k = f.frequencies.double()
    waves = [1 * x, 2 * x, 3 * x]
    expected = torch.cat([*map(torch.cos, waves), *map(torch.sin, waves),
                          torch.cos(x @ k), torch.sin(x @ k)], -1)
    torch.testing.assert_close(out, expected)
    # the defaults (one harmonic, no mixing) are the plain embedding (cos θ, sin θ) of T⁷ in R¹⁴
    plain = TorusFourierFeatures(7)
    assert plain.out_dim == 14
    torch.testing.assert_close(plain(x), torch.cat([torch.cos(x), torch.sin(x)], -1))
    only_mixing = TorusFourierFeatures(7, 12, 2.0, harmonics=0)
    torch.testing.assert_close(only_mixing(x), out[:, 42:])


def test_torus_frequencies_are_integers_from_the_seed():
    f = TorusFourierFeatures(7, 128, 2.0)
    k = f.frequencies
    assert torch.equal(k, torch.round(k)) and k.abs().max() > 1
    expected = torch.round(torch.randn(7, 128, generator=torch.Generator().manual_seed(0)) * 2.0)
    assert torch.equal(k, expected)
    assert not torch.equal(k, TorusFourierFeatures(7, 128, 2.0, seed=1).frequencies)


@pytest.mark.parametrize("harmonics", [0, 1, 4])
def test_torus_features_are_periodic_in_every_angle(harmonics):
    f = TorusFourierFeatures(5, 64, 3.0, harmonics=harmonics, seed=3)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(200, 5, generator=gen, dtype=torch.float64) - 0.5) * 4 * math.pi
    shift = torch.randint(-3, 4, (200, 5), generator=gen).double() * (2 * math.pi)
    # integer frequencies: the features are functions on T⁵, equal at θ and θ + 2π m up to the
    # float64 rounding of the arguments (|k| |θ| ε ≲ 1e-13 here)
    torch.testing.assert_close(f(x + shift), f(x), rtol=0, atol=1e-11)
    # the same check catches non-integer frequencies: random Fourier features of the angles
    # are not periodic
    g = RandomFourierFeatures(5, 64, 3.0, seed=3, include_input=False)
    assert float((g(x + shift) - g(x)).abs().max()) > 0.5


# -- both -------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: RandomFourierFeatures(3, 32, 10.0),
                                  lambda: TorusFourierFeatures(3, 32, 2.0, harmonics=2)])
def test_gradients_are_finite_and_match_finite_differences(make):
    f = make().double()
    x = torch.cat([torch.zeros(1, 3), torch.randn(6, 3), 1e4 * torch.ones(1, 3)]).double()
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    assert torch.isfinite(grad).all()
    assert torch.autograd.gradcheck(f, (x[:4].detach().requires_grad_(True),))


def test_float32_inputs_use_float32_frequencies():
    f = TorusFourierFeatures(2, 4, 1.0)
    out = f(torch.rand(3, 2))
    assert out.dtype == torch.float32 and f.double()(torch.rand(3, 2).double()).dtype == \
        torch.float64


@pytest.mark.parametrize(("make", "match"), [
    (lambda: RandomFourierFeatures(3, 0, 1.0), "num must be an integer ≥ 1"),
    (lambda: RandomFourierFeatures(0, 4, 1.0), "in_dim must be an integer ≥ 1"),
    (lambda: RandomFourierFeatures(3, 4, 0.0), "scale must be a positive finite number"),
    (lambda: RandomFourierFeatures(3, 4, float("nan")), "scale must be a positive finite"),
    (lambda: RandomFourierFeatures(3, 4, 1.0, seed=1, generator=torch.Generator()),
     "seed or generator, not both"),
    (lambda: RandomFourierFeatures(3, 4, 1.0, seed=1.5), "seed must be an int"),
    (lambda: TorusFourierFeatures(3, 0, harmonics=0), "num ≥ 1 or harmonics ≥ 1"),
    (lambda: TorusFourierFeatures(3, -1), "num must be an integer ≥ 0"),
    (lambda: TorusFourierFeatures(3, 2, -2.0), "scale must be a positive finite number"),
    (lambda: TorusFourierFeatures(3, harmonics=True), "harmonics must be an integer ≥ 0"),
])
def test_bad_arguments_name_the_rule(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_name_the_shape_and_dtype():
    f = RandomFourierFeatures(3, 4, 1.0)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 3\]"):
        f(torch.randn(5, 2))
    with pytest.raises(ValueError, match="floating-point"):
        f(torch.ones(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 7\] \(dim angles\)"):
        TorusFourierFeatures(7)(torch.randn(5, 6))

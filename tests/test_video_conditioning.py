"""Frame-mask conditioning on an analytic Gaussian AR(1) video, where conditionals are exact."""

from __future__ import annotations

import pytest
import torch

from flowmatch.plugins.video import (
    GaussianVideo,
    concat_condition,
    extension_mask,
    first_frame_mask,
    first_last_mask,
    generate_long,
    last_frame_mask,
    masked_mse,
    per_frame_time,
    random_training_mask,
    sample_video,
    video_path_sample,
)

F64 = torch.float64


def _series(x):
    """[B, 1, T, H, W] → [B·H·W, T] pixel time series."""
    return x.permute(0, 3, 4, 1, 2).reshape(-1, x.shape[2])


def test_mask_builders():
    assert first_frame_mask(5).tolist() == [True, False, False, False, False]
    assert last_frame_mask(5, 2).tolist() == [False, False, False, True, True]
    assert first_last_mask(5).tolist() == [True, False, False, False, True]
    assert extension_mask(5, 2).tolist() == [True, True, False, False, False]
    assert extension_mask(5, 2, "backward").tolist() == [False, False, False, True, True]
    with pytest.raises(ValueError, match="direction"):
        extension_mask(5, 2, "sideways")
    with pytest.raises(ValueError, match="k must lie in"):
        first_frame_mask(3, 4)


def test_random_training_mask_task_mixture():
    g = torch.Generator().manual_seed(0)
    m = random_training_mask(4000, 6, generator=g)
    assert m.shape == (4000, 6) and m.dtype == torch.bool
    t2v = float((~m.any(1)).float().mean())  # default weight 0.4; "random" adds ≈ 0.1·0.8⁶
    assert t2v == pytest.approx(0.4 + 0.1 * 0.8**6, abs=0.03)
    only_i2v = random_training_mask(50, 6, task_probs={"i2v": 1.0}, generator=g)
    assert bool((only_i2v == first_frame_mask(6)).all())
    with pytest.raises(ValueError, match="unknown tasks"):
        random_training_mask(4, 6, task_probs={"outpaint": 1.0})


def test_conditional_sampling_matches_closed_form_and_replacement_is_biased():
    # Frame 0 is given (= 1.5) on a zero-mean AR(1) with ρ = 0.9: the exact conditional mean
    # of frame k is 1.5·ρ^k. The per-frame path with the exact conditional field (what a
    # mask-trained model learns) reproduces it; replacing frame 0 in the unconditional sampler
    # does not (frame 1: ≈ 0.49 instead of 1.35).
    T = 8
    gv = GaussianVideo(T, rho=0.9)
    known = first_frame_mask(T)
    n = 4000
    x0 = torch.randn(n, 1, T, 1, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = torch.zeros_like(x0)
    ref[:, :, 0] = 1.5
    mean, cov = gv.conditional_moments(known, ref)
    torch.testing.assert_close(mean[0, 0, :, 0, 0], 1.5 * 0.9 ** torch.arange(1, T, dtype=F64))

    # (the exact field is smooth at t = 1, so the full Heun step is used to the end)
    x = sample_video(gv.conditional_field(known), x0, method="heun", num_steps=40, known=known,
                     reference=ref, conditioning="per_frame", final_euler=False)
    assert bool((x[:, :, 0] == 1.5).all())  # the known frame never moves
    # deterministic: the ODE maps the unknown frames' noise to μ_c + Σ_c^{1/2} ε exactly
    lam, V = torch.linalg.eigh(cov)
    root = V @ torch.diag(lam.sqrt()) @ V.T
    exact = mean + torch.einsum("st,bcthw->bcshw", root, x0[:, :, 1:])
    # (Heun's O(h²) error at 40 steps, measured 1.1e-3 at worst over 4000 clips)
    assert float((x[:, :, 1:] - exact).abs().max()) < 3e-3
    # statistical: SE of a frame mean ≤ √(0.78/4000) = 0.014; of a covariance entry ≤ 0.018
    s = _series(x[:, :, 1:])
    se = (cov.diag() / n).sqrt()
    assert bool(((s.mean(0) - mean[0, 0, :, 0, 0]).abs() < 4 * se).all())
    assert float((torch.cov(s.T) - cov).abs().max()) < 0.08

    x_rep = sample_video(gv.velocity, x0, method="heun", num_steps=40, known=known,
                         reference=ref, conditioning="replace")
    bias = (_series(x_rep[:, :, 1:]).mean(0) - mean[0, 0, :, 0, 0]).abs()
    assert float(bias[0]) > 0.7  # measured 0.86: > 50 standard errors
    assert bool((bias > 10 * se).all())


def test_forward_and_backward_extension_agree_by_symmetry():
    # Stationary AR(1) is time-reversible; extending backwards from the end with time-reversed
    # noise must give the time-reversed forward video, to rounding.
    T_chunk, overlap, total = 6, 2, 14
    gv = GaussianVideo(T_chunk, rho=0.8, var=1.2, height=2, width=2)
    g = torch.Generator().manual_seed(2)
    noises = [torch.randn(3, 1, T_chunk, 2, 2, generator=g, dtype=F64) for _ in range(5)]

    def chunk_sampler(flip):
        def sample_chunk(known, ref, index):
            eps = noises[index].flip(2) if flip else noises[index]
            if ref is None:
                return sample_video(gv.velocity, eps, method="heun", num_steps=30)
            return sample_video(gv.conditional_field(known), eps, method="heun", num_steps=30,
                                known=known, reference=ref)
        return sample_chunk

    fwd = generate_long(chunk_sampler(False), total, T_chunk, overlap, direction="forward")
    bwd = generate_long(chunk_sampler(True), total, T_chunk, overlap, direction="backward")
    assert fwd.shape == bwd.shape == (3, 1, total, 2, 2)
    torch.testing.assert_close(bwd, fwd.flip(2), atol=1e-10, rtol=0)


def test_chunked_autoregression_reproduces_the_long_markov_video():
    # AR(1) is Markov: conditioning each chunk on the previous chunk's last frame gives the
    # exact joint law of the long video, Σ_jk = v ρ^|j−k| over all 13 frames.
    T_chunk, overlap, total = 5, 1, 13
    gv = GaussianVideo(T_chunk, rho=0.85)
    g = torch.Generator().manual_seed(3)

    def sample_chunk(known, ref, index):
        eps = torch.randn(2000, 1, T_chunk, 2, 2, generator=g, dtype=F64)
        if ref is None:
            return sample_video(gv.velocity, eps, method="heun", num_steps=20)
        return sample_video(gv.conditional_field(known), eps, method="heun", num_steps=20,
                            known=known, reference=ref)

    video = generate_long(sample_chunk, total, T_chunk, overlap)
    assert video.shape == (2000, 1, total, 2, 2)
    k = torch.arange(total, dtype=F64)
    target = 0.85 ** (k[:, None] - k[None, :]).abs()
    # 8000 series: SE of a covariance entry ≈ √(2/8000) ≈ 0.016
    assert float((torch.cov(_series(video).T) - target).abs().max()) < 0.08


def test_mask_training_objective_is_minimised_by_the_conditional_field():
    # With known frames clean at t = 1 and excluded from the loss, the masked flow-matching
    # loss is minimised by the exact conditional velocity: it beats the unconditional field
    # (the replacement model) and any perturbation of itself.
    T = 6
    gv = GaussianVideo(T, rho=0.9)
    known = first_frame_mask(T)
    g = torch.Generator().manual_seed(4)
    n = 20000
    x1 = gv.sample(n, generator=g)
    x0 = torch.randn(x1.shape, generator=g, dtype=F64)
    t = torch.rand(n, generator=g, dtype=F64) * 0.98 + 0.01
    x_t, target, t_frames = video_path_sample(x0, x1, t, known=known)
    torch.testing.assert_close(x_t[:, :, 0], x1[:, :, 0])  # known frame is clean
    assert bool((t_frames[:, 0] == 1).all()) and bool((t_frames[:, 1:] == t[:, None]).all())
    assert bool((target[:, :, 0] == 0).all())
    u_cond = gv.conditional_field(known)(x_t, t_frames)
    u_unc = gv.velocity(x_t, t)
    loss_cond = masked_mse(u_cond, target, known)
    loss_unc = masked_mse(u_unc, target, known)
    assert float(loss_cond) < float(loss_unc) - 0.05
    delta = 0.1 * torch.randn(x1.shape, generator=g, dtype=F64)
    assert float(masked_mse(u_cond + delta, target, known)) > float(loss_cond)


def test_masked_mse_ignores_known_frames_and_weights():
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(2, 3, 4, 2, 2, generator=g)
    target = torch.randn(2, 3, 4, 2, 2, generator=g)
    known = torch.tensor([[True, False, False, False], [True, True, False, False]])
    base = masked_mse(pred, target, known)
    changed = pred.clone()
    changed[0, :, 0] += 100.0
    changed[1, :, :2] -= 50.0
    torch.testing.assert_close(masked_mse(changed, target, known), base)
    manual = torch.cat([((pred - target) ** 2)[0, :, 1:].reshape(3, -1),
                        ((pred - target) ** 2)[1, :, 2:].reshape(3, -1)], 1)
    # average over the unknown frames' elements (3 + 2 frames of 3·2·2 values)
    torch.testing.assert_close(base, manual.mean())
    w = torch.tensor([2.0, 0.0])
    torch.testing.assert_close(masked_mse(pred, target, None, weight=w),
                               ((pred - target) ** 2)[0].mean())
    with pytest.raises(ValueError, match="nothing to train"):
        masked_mse(pred, target, torch.ones(4, dtype=torch.bool))


def test_concat_condition_and_per_frame_time():
    x = torch.randn(2, 3, 4, 2, 2)
    ref = torch.randn(2, 3, 4, 2, 2)
    known = first_last_mask(4)
    inp = concat_condition(x, known, ref)
    assert inp.shape == (2, 7, 4, 2, 2)
    torch.testing.assert_close(inp[:, :3], x)
    assert inp[:, 3, :, 0, 0].tolist() == [[1.0, 0.0, 0.0, 1.0]] * 2
    torch.testing.assert_close(inp[:, 4:, 0], ref[:, :, 0])
    assert bool((inp[:, 4:, 1:3] == 0).all())
    t = torch.tensor([0.2, 0.7])
    tf = per_frame_time(t, known)
    torch.testing.assert_close(tf, torch.tensor([[1.0, 0.2, 0.2, 1.0], [1.0, 0.7, 0.7, 1.0]]))


def test_conditioning_bad_input():
    x = torch.randn(2, 3, 4, 2, 2)
    with pytest.raises(ValueError, match="T = 4"):
        concat_condition(x, first_frame_mask(5), x)
    with pytest.raises(ValueError, match="boolean"):
        concat_condition(x, torch.ones(4), x)
    with pytest.raises(ValueError, match="5 dims"):
        video_path_sample(x[0], x[0], torch.rand(3))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        video_path_sample(x, x, torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="overlap"):
        generate_long(lambda k, r, i: x, 8, 4, 4)

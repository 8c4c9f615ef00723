"""Frame-mask conditioning for video flows: masks, per-frame paths, masked loss, long videos.

A frame mask is a boolean tensor [T] or [B, T]; True marks a *known* (conditioning) frame whose
clean value is given, False a frame to generate. Tasks are masks:

    image-to-video    first_frame_mask(T)          ■□□□□□□□
    last frame        last_frame_mask(T)           □□□□□□□■
    interpolation     first_last_mask(T)           ■□□□□□□■
    extend forwards   extension_mask(T, k)         ■■■□□□□□   (the previous clip's last k)
    extend backwards  extension_mask(T, k, "backward")  □□□□□■■■

Training with masks (Open-Sora 1.2 style): known frames stay clean, sit at t = 1 (data) in the
per-frame time [B, T], and are left out of the loss; the network also sees the mask as an input
channel (Open-Sora 2.0 / Wan i2v concatenate [mask, mask·reference]). The minimiser of that loss
is the exact conditional velocity field, which :class:`VideoSampler` samples with
``conditioning="per_frame"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor

from flowmatch._validation import check_finite
from flowmatch.paths import CondOTScheduler, Scheduler
from flowmatch.plugins.video.conventions import check_video, frame_time_like

__all__ = [
    "TASKS",
    "concat_condition",
    "extension_mask",
    "first_frame_mask",
    "first_last_mask",
    "generate_long",
    "last_frame_mask",
    "masked_mse",
    "per_frame_time",
    "random_training_mask",
    "video_path_sample",
]

TASKS = ("t2v", "i2v", "last", "interp", "extend_forward", "extend_backward", "random")


def _check_counts(num_frames: int, **ks: int) -> None:
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    for name, k in ks.items():
        if not 0 <= k <= num_frames:
            raise ValueError(f"{name} must lie in [0, num_frames={num_frames}], got {k}")


def first_frame_mask(num_frames: int, k: int = 1, *, device=None) -> Tensor:
    """[T] mask with the first ``k`` frames known (image-to-video for k = 1)."""
    _check_counts(num_frames, k=k)
    m = torch.zeros(num_frames, dtype=torch.bool, device=device)
    m[:k] = True
    return m


def last_frame_mask(num_frames: int, k: int = 1, *, device=None) -> Tensor:
    """[T] mask with the last ``k`` frames known (generate what led to an end frame)."""
    _check_counts(num_frames, k=k)
    m = torch.zeros(num_frames, dtype=torch.bool, device=device)
    if k:
        m[-k:] = True
    return m


def first_last_mask(num_frames: int, k_first: int = 1, k_last: int = 1, *, device=None) -> Tensor:
    """[T] mask with the first and last frames known (interpolation between two clips)."""
    _check_counts(num_frames, k_first=k_first, k_last=k_last)
    return first_frame_mask(num_frames, k_first, device=device) | last_frame_mask(
        num_frames, k_last, device=device)


def extension_mask(num_frames: int, k: int,
                   direction: Literal["forward", "backward"] = "forward", *, device=None) -> Tensor:
    """[T] mask for extending a clip by T − k frames: the k overlapping frames are known.

    Forward: the known frames are the first k (the end of the previous clip); backward: the last
    k (the start of the following clip).
    """
    if direction == "forward":
        return first_frame_mask(num_frames, k, device=device)
    if direction == "backward":
        return last_frame_mask(num_frames, k, device=device)
    raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")


def random_training_mask(
    batch_size: int,
    num_frames: int,
    *,
    task_probs: Mapping[str, float] | None = None,
    max_known: int | None = None,
    random_keep_prob: float = 0.2,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """[B, T] masks drawn from a mixture of tasks, for training one model for all of them.

    ``task_probs`` maps names in :data:`TASKS` to weights (normalised here); the default is
    t2v 0.4 and 0.1 for each other task. Extension tasks know 1..``max_known`` frames (default
    T // 2, drawn uniformly); ``random`` keeps each frame with ``random_keep_prob``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    _check_counts(num_frames)
    if task_probs is None:
        task_probs = {"t2v": 0.4, **{k: 0.1 for k in TASKS if k != "t2v"}}
    unknown = sorted(set(task_probs) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known tasks are {TASKS}")
    names = list(task_probs)
    w = torch.tensor([float(task_probs[n]) for n in names], dtype=torch.float64)
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"task_probs must be non-negative with a positive sum, got {task_probs}")
    max_known = max(1, num_frames // 2) if max_known is None else max_known
    _check_counts(num_frames, max_known=max_known)
    choice = torch.multinomial(w, batch_size, replacement=True, generator=generator)
    ks = torch.randint(1, max(max_known, 1) + 1, (batch_size,), generator=generator)
    keep = torch.rand(batch_size, num_frames, generator=generator) < random_keep_prob
    out = torch.zeros(batch_size, num_frames, dtype=torch.bool)
    for b in range(batch_size):
        task, k = names[int(choice[b])], int(ks[b])
        if task == "i2v":
            out[b] = first_frame_mask(num_frames)
        elif task == "last":
            out[b] = last_frame_mask(num_frames)
        elif task == "interp":
            out[b] = first_last_mask(num_frames)
        elif task == "extend_forward":
            out[b] = extension_mask(num_frames, k, "forward")
        elif task == "extend_backward":
            out[b] = extension_mask(num_frames, k, "backward")
        elif task == "random":
            out[b] = keep[b]
    return out.to(device)


def _frame_mask(known: Tensor, x: Tensor, name: str = "known") -> Tensor:
    if known.dtype != torch.bool:
        raise ValueError(f"{name} must be a boolean frame mask, got dtype {known.dtype}")
    if known.dim() == 1:
        known = known.unsqueeze(0)
    if known.dim() != 2 or known.shape[1] != x.shape[2]:
        raise ValueError(
            f"{name} must be [T] or [B, T] with T = {x.shape[2]} frames of the video "
            f"{tuple(x.shape)}, got shape {tuple(known.shape)}"
        )
    if known.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{name} has batch size {known.shape[0]} but the video has {x.shape[0]}")
    return known.expand(x.shape[0], x.shape[2])


def per_frame_time(t: Tensor, known: Tensor) -> Tensor:
    """Per-frame time [B, T]: the clip time t [B] on unknown frames, 1 (clean data) on known."""
    if t.dim() != 1:
        raise ValueError(f"t must have shape [B], got {tuple(t.shape)}")
    if known.dim() == 1:
        known = known.unsqueeze(0)
    return torch.where(known, torch.ones((), dtype=t.dtype, device=t.device), t[:, None])


def video_path_sample(x0: Tensor, x1: Tensor, t: Tensor, *, known: Tensor | None = None,
                      scheduler: Scheduler | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy video and velocity target on the affine path, with per-frame times.

    x_t = α_t·x1 + σ_t·x0 and target dx_t = α̇_t·x1 + σ̇_t·x0 frame by frame, with (α, σ) from a
    core scheduler (default CondOT: α = t, σ = 1 − t). ``t`` is [B] or [B, T]; with ``known``,
    known frames get t = 1, so they are clean (x_t = x1 for CondOT) and their target is zero for
    the loss to ignore. Returns (x_t, target, t_frames [B, T]).
    """
    check_video("x1", x1)
    check_video("x0", x0)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} "
                         f"and {tuple(x1.shape)}")
    scheduler = CondOTScheduler() if scheduler is None else scheduler
    B, _, T = x1.shape[:3]
    if t.dim() == 1:
        if t.shape[0] != B:
            raise ValueError(f"t has {t.shape[0]} entries but the batch has {B}")
        t = t[:, None].expand(B, T)
    check_finite("t", t)
    if float(t.min()) < 0 or float(t.max()) > 1:
        raise ValueError(f"t must lie in [0, 1], got [{float(t.min())}, {float(t.max())}]")
    if known is not None:
        mask = _frame_mask(known, x1)
        t = torch.where(mask, torch.ones_like(t), t)
    s = scheduler(frame_time_like(t, x1))
    x_t = s.alpha_t * x1 + s.sigma_t * x0
    target = s.d_alpha_t * x1 + s.d_sigma_t * x0
    if known is not None:
        target = target * (~mask)[:, None, :, None, None].to(target.dtype)
    return x_t, target, t


def concat_condition(x_t: Tensor, known: Tensor, reference: Tensor) -> Tensor:
    """Network input [x_t, mask, mask·reference] along channels: [B, 2C + 1, T, H, W].

    The model sees which frames are given and their clean values, so it can be trained for all
    mask tasks at once (Open-Sora 2.0, Wan i2v).
    """
    check_video("x_t", x_t)
    check_video("reference", reference)
    if reference.shape != x_t.shape:
        raise ValueError(f"reference must be shaped like x_t {tuple(x_t.shape)}, got "
                         f"{tuple(reference.shape)}")
    mask = _frame_mask(known, x_t)
    m = mask[:, None, :, None, None].to(x_t.dtype).expand(
        x_t.shape[0], 1, *x_t.shape[2:])
    return torch.cat([x_t, m, m * reference], dim=1)


def masked_mse(prediction: Tensor, target: Tensor, known: Tensor | None = None,
               weight: Tensor | None = None) -> Tensor:
    """Mean squared error over the frames to generate (known frames carry no loss).

    ``weight`` ([B] or [B, T], e.g. :func:`loss_weight`) multiplies each clip's / frame's error.
    Averaged over unknown elements, so clips with many known frames are not down-weighted.
    """
    check_video("prediction", prediction)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have the same shape, got "
                         f"{tuple(prediction.shape)} and {tuple(target.shape)}")
    err = (prediction - target).pow(2).mean(dim=(1, 3, 4))  # [B, T]
    if weight is not None:
        err = err * (weight[:, None] if weight.dim() == 1 else weight)
    if known is None:
        return err.mean()
    free = (~_frame_mask(known, prediction)).to(err.dtype)
    n = free.sum()
    if float(n) == 0:
        raise ValueError("every frame is known: there is nothing to train on")
    return (err * free).sum() / n


def generate_long(
    sample_chunk: Callable[[Tensor, Tensor | None, int], Tensor],
    num_frames: int,
    chunk_frames: int,
    overlap: int,
    *,
    direction: Literal["forward", "backward"] = "forward",
    initial: Tensor | None = None,
) -> Tensor:
    """A long video by chunked autoregression with overlapping frames, forwards or backwards.

    ``sample_chunk(known, reference, index)`` returns a chunk [B, C, chunk_frames, H, W]; it gets
    the [chunk_frames] mask of known frames (the overlap) and a reference video holding them
    (None for an unconditioned first chunk). Forwards, each chunk's first ``overlap`` frames are
    the last ``overlap`` frames generated so far; backwards, its last ``overlap`` frames are the
    first ones so far, and frames are prepended (FramePack-style generation towards a start).
    ``initial`` (a clip of ≥ overlap frames) seeds the video instead of an unconditioned chunk.
    Returns [B, C, num_frames, H, W].
    """
    if not 0 <= overlap < chunk_frames:
        raise ValueError(f"overlap must lie in [0, chunk_frames={chunk_frames}), got {overlap}")
    if num_frames < chunk_frames:
        raise ValueError(f"num_frames ({num_frames}) must be ≥ chunk_frames ({chunk_frames})")
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    fwd = direction == "forward"
    index = 0
    if initial is None:
        video = sample_chunk(torch.zeros(chunk_frames, dtype=torch.bool), None, index)
        index += 1
    else:
        check_video("initial", initial)
        if initial.shape[2] < overlap:
            raise ValueError(f"initial has {initial.shape[2]} frames, fewer than the overlap "
                             f"{overlap}")
        video = initial
    check_video("chunk", video)
    while video.shape[2] < num_frames:
        known = extension_mask(chunk_frames, overlap, "forward" if fwd else "backward",
                               device=video.device)
        ref = torch.zeros(*video.shape[:2], chunk_frames, *video.shape[3:],
                          dtype=video.dtype, device=video.device)
        if overlap:
            if fwd:
                ref[:, :, :overlap] = video[:, :, -overlap:]
            else:
                ref[:, :, -overlap:] = video[:, :, :overlap]
        chunk = sample_chunk(known, ref, index)
        index += 1
        if chunk.shape != ref.shape:
            raise ValueError(f"sample_chunk returned shape {tuple(chunk.shape)}, expected "
                             f"{tuple(ref.shape)}")
        if fwd:
            video = torch.cat([video, chunk[:, :, overlap:]], dim=2)
        else:
            video = torch.cat([chunk[:, :, : chunk_frames - overlap], video], dim=2)
    return video[:, :, :num_frames] if fwd else video[:, :, -num_frames:]

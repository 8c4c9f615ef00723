"""A compact, resumable flow-matching training loop."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from flowmatch._validation import check_finite, no_validation
from flowmatch.geometry.base import Geometry
from flowmatch.models.guidance import drop_condition
from flowmatch.paths.base import ProbPath
from flowmatch.paths.marginal import marginal_velocity, supports_marginal_velocity
from flowmatch.training.checkpoint import load_checkpoint, save_checkpoint
from flowmatch.training.ema import EMA
from flowmatch.training.loss import cfm_loss
from flowmatch.training.time_sampling import UniformTime

_SCHEDULES = ("constant", "cosine", "linear")
_FORMAT = "flowmatch.fit/1"
# training settings a resumed run must share with the checkpoint, or the continuation would not
# be the run the user asked for
_RESUME_KEYS = ("steps", "batch_size", "lr", "weight_decay", "ema_decay", "ema_warmup",
                "lr_schedule", "warmup_steps", "seed", "cond_dropout", "marginal_target")


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``losses[k]`` is the training loss of update k (0-based, the whole run including the steps
    done before a resume); ``ema_model`` is the averaged model (None when ``ema_decay=None``) —
    usually the one to sample from; ``resumed_from`` is the step a checkpoint was resumed at.
    """

    model: nn.Module
    ema_model: nn.Module | None
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from: int | None = None
    seconds: float = 0.0


def lr_at(step: int, *, lr: float, steps: int, schedule: str, warmup_steps: int) -> float:
    """Learning rate of update ``step`` (0-based): linear warm-up, then constant/cosine/linear."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * (1.0 - progress)


def _check_marginal_target(marginal_target: Any, path: ProbPath, geometry: Geometry | None,
                           coupling: Any) -> None:
    if torch.is_tensor(marginal_target):
        if marginal_target.dim() < 1 or marginal_target.shape[0] == 0:
            raise ValueError("marginal_target as a Tensor must hold reference points "
                             f"[M, *point_shape], got shape {tuple(marginal_target.shape)}")
        check_finite("marginal_target", marginal_target)
        if geometry is not None:
            geometry.check_point(marginal_target, "marginal_target")
    elif not isinstance(marginal_target, int) or isinstance(marginal_target, bool) \
            or marginal_target < 0:
        raise ValueError("marginal_target must be None, an int ≥ 0 (extra reference draws) or a "
                         f"Tensor of reference points, got {marginal_target!r}")
    if not supports_marginal_velocity(path):
        raise ValueError(f"marginal_target needs a path with a closed-form conditional density; "
                         f"{path!r} has none")
    if coupling is not None:
        raise ValueError("marginal_target assumes independent coupling (the conditional "
                         "density of x_t given x1 is the contracted source); drop coupling")
    base_scale = getattr(geometry, "base_scale", 1.0)
    if not hasattr(path, "geometry") and (geometry is not None and (
            type(geometry).__name__ != "Euclidean" or base_scale != 1.0)):
        raise ValueError("marginal_target with an affine path assumes the N(0, I) source; "
                         f"fit draws the source from {geometry}")


def _describe_marginal_target(marginal_target: Any) -> Any:
    if torch.is_tensor(marginal_target):
        return f"tensor{list(marginal_target.shape)}"
    return marginal_target


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    if torch.is_tensor(batch):
        return batch, None
    if isinstance(batch, tuple) and len(batch) == 2 and torch.is_tensor(batch[0]):
        return batch[0], batch[1]
    raise TypeError(
        "sample_data(batch_size, generator) must return a Tensor x1 or a tuple (x1, cond), "
        f"got {type(batch).__name__}"
    )


def fit(
    model: nn.Module,
    sample_data: Callable[[int, torch.Generator], Any],
    path: ProbPath,
    geometry: Geometry | None = None,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    ema_decay: float | None = 0.999,
    ema_warmup: bool = True,
    grad_clip: float | None = None,
    lr_schedule: str = "cosine",
    warmup_steps: int = 0,
    coupling: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    time_sampler: Callable[..., Tensor] | None = None,
    marginal_target: int | Tensor | None = None,
    cond_dropout: float = 0.0,
    null_cond: Tensor | int | float | None = None,
    seed: int = 0,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    log_every: int = 100,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> FitResult:
    """Train a velocity field by conditional flow matching; return a :class:`FitResult`.

    Each update draws data x1 = ``sample_data(batch_size, generator)`` ([B, *point_shape], or a
    tuple (x1, cond) for conditional models), source x0 from ``geometry.sample_base`` (standard
    normal when ``geometry`` is None), pairs them with ``coupling`` (default: as drawn), draws
    t from ``time_sampler`` (default U(0, 1)), samples (x_t, u_t) = ``path.sample(x0, x1, t)``
    and minimises ``cfm_loss(model(x_t, t[, cond=c]), u_t, geometry, x_t)`` with AdamW.

    Randomness: every draw the loop makes (data, noise, times, condition dropout) comes from one
    ``torch.Generator`` seeded with ``seed`` on ``device``; its state, the model, the optimizer,
    the EMA and torch's global RNG state are checkpointed, so a run resumed from a checkpoint
    reproduces the uninterrupted run's losses exactly (on the same device and software).

    Args:
        steps, batch_size: number of optimiser updates and samples per update.
        lr, weight_decay: AdamW settings. ``lr_schedule`` is "constant", "cosine" (to 0) or
            "linear" (to 0), after ``warmup_steps`` of linear warm-up.
        ema_decay, ema_warmup: decay of the parameter EMA (None: no EMA); with warm-up the k-th
            update uses min(ema_decay, (1 + k) / (10 + k)) so that short runs do not keep a
            large weight on the random initialisation (0.999^1000 ≈ 0.37 without it).
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        marginal_target: regress on a marginal velocity instead of the conditional one
            (:func:`flowmatch.paths.marginal.marginal_velocity`): the posterior-weighted mean
            of u_t(x_t | y) over reference points y — same minimiser, far less target
            variance. An int n: the batch's own x1 plus n more draws of ``sample_data`` each
            update (Xu et al. 2023's stable target field); a Tensor [M, *point_shape]: that
            fixed set (e.g. the whole training set, for the exact empirical marginal). Needs a
            path with ``conditional_log_prob`` (geodesic on Sphere/FlatTorus/Euclidean, or
            affine with the N(0, I) source), unconditional data and no ``coupling``.
        cond_dropout, null_cond: for conditional data, replace cond by ``null_cond`` (default
            ``model.null_cond``) with this probability, for classifier-free guidance.
        checkpoint_path, checkpoint_every: save atomically every ``checkpoint_every`` updates
            (None: only at the end); with ``resume=True`` an existing checkpoint is continued.
        progress, log_every: tqdm progress bar, whose loss readout (and the non-finite-loss
            check) happens every ``log_every`` updates so the loop does not synchronise per step.
        device, dtype: move the model there first (default: where the model already is).

    The model is trained in place and left in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(sample_data):
        raise TypeError(f"sample_data must be callable, got {type(sample_data).__name__}")
    if not isinstance(path, ProbPath):
        raise TypeError(f"path must be a ProbPath, got {type(path).__name__}")
    if geometry is not None and not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a flowmatch Geometry, got {type(geometry).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= steps:
        raise ValueError(f"warmup_steps must be an integer in [0, steps={steps}], got "
                         f"{warmup_steps!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer or None, got "
                         f"{checkpoint_every!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay!r}")
    if ema_decay is not None and not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1] or be None, got {ema_decay!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
    if lr_schedule not in _SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, got {lr_schedule!r}")
    if not 0.0 <= cond_dropout <= 1.0:
        raise ValueError(f"cond_dropout must lie in [0, 1], got {cond_dropout!r}")
    if marginal_target is not None:
        _check_marginal_target(marginal_target, path, geometry, coupling)

    started = time.perf_counter()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    first = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (
        first.device if first is not None else torch.device("cpu"))
    dtype = dtype or (first.dtype if first is not None else torch.get_default_dtype())
    if cond_dropout > 0 and null_cond is None:
        null_cond = getattr(model, "null_cond", None)
        if null_cond is None:
            raise ValueError("cond_dropout > 0 needs null_cond (or a model with .null_cond)")
    time_sampler = time_sampler or UniformTime()

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = EMA(model, ema_decay, warmup=ema_warmup) if ema_decay is not None else None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    config = {"steps": steps, "batch_size": batch_size, "lr": float(lr),
              "weight_decay": float(weight_decay), "ema_decay": ema_decay,
              "ema_warmup": bool(ema_warmup),
              "lr_schedule": lr_schedule, "warmup_steps": warmup_steps, "seed": seed,
              "cond_dropout": float(cond_dropout),
              "marginal_target": _describe_marginal_target(marginal_target)}

    losses: list[float] = []
    start = 0
    resumed_from = None
    if checkpoint_path is not None and resume and os.path.exists(checkpoint_path):
        state = load_checkpoint(checkpoint_path, map_location=device)
        if state.get("format") != _FORMAT:
            raise ValueError(f"checkpoint {str(checkpoint_path)!r} was not written by fit() "
                             f"(format {state.get('format')!r}, expected {_FORMAT!r})")
        saved = state["config"]
        differ = [f"{k}: checkpoint {saved.get(k)!r} vs now {config[k]!r}"
                  for k in _RESUME_KEYS if saved.get(k) != config[k]]
        if differ:
            raise ValueError(
                f"cannot resume from {str(checkpoint_path)!r}: training settings differ ("
                + "; ".join(differ) + "); pass resume=False or another checkpoint_path"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"].cpu())  # RNG states are CPU byte tensors
        torch.set_rng_state(state["torch_rng"].cpu())
        losses = state["losses"].tolist()
        start = resumed_from = int(state["step"])

    def save(step: int) -> None:
        save_checkpoint(checkpoint_path, {
            "format": _FORMAT, "step": step, "config": config,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "losses": torch.tensor(losses, dtype=torch.float64),
        })

    def draw_batch(validate: bool) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        x1, cond = _split_batch(sample_data(batch_size, generator))
        if validate:
            if x1.shape[0] != batch_size:
                raise ValueError(f"sample_data returned {x1.shape[0]} samples, expected "
                                 f"batch_size={batch_size}")
            check_finite("sample_data(...) output", x1)
            if geometry is not None:
                geometry.check_point(x1, "sample_data(...) output")
        x1 = x1.to(device=device, dtype=dtype)
        if geometry is not None:
            x0 = geometry.sample_base(batch_size, generator=generator, dtype=dtype, device=device)
        else:
            x0 = torch.randn(x1.shape, generator=generator, dtype=dtype, device=device)
        if coupling is not None:
            x0, x1 = coupling(x0, x1)
        t = time_sampler(batch_size, generator=generator, device=device, dtype=dtype)
        kwargs: dict[str, Tensor] = {}
        if cond is not None:
            cond = cond.to(device)
            if cond_dropout > 0:
                cond = drop_condition(cond, cond_dropout, null_cond, generator=generator)
            kwargs["cond"] = cond
        if marginal_target is not None and cond is not None:
            raise ValueError("marginal_target needs unconditional data, but sample_data "
                             "returned (x1, cond)")
        return x0, x1, t, kwargs

    fixed_reference = None
    if torch.is_tensor(marginal_target):
        fixed_reference = marginal_target.to(device=device, dtype=dtype)

    def target_of(sample) -> Tensor:
        if marginal_target is None:
            return sample.dx_t
        if fixed_reference is not None:
            reference = fixed_reference
        elif marginal_target > 0:
            extra, _ = _split_batch(sample_data(marginal_target, generator))
            reference = torch.cat([sample.x1, extra.to(device=device, dtype=dtype)])
        else:
            reference = sample.x1
        with torch.no_grad():
            u, supported = marginal_velocity(path, sample.x_t, sample.t, reference)
        # a row no reference point explains (rounding at a bounded support's edge, or a fixed
        # set that misses the drawn x1) keeps its conditional target
        keep = supported.reshape(-1, *([1] * (u.dim() - 1)))
        return torch.where(keep, u, sample.dx_t)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    pending: list[Tensor] = []

    def flush(step: int) -> None:
        if not pending:
            return
        values = torch.stack(pending).tolist()
        pending.clear()
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"the training loss became non-finite at step {step - len(values) + bad[0]} "
                f"(value {values[bad[0]]}); lower lr or set grad_clip"
            )
        losses.extend(values)

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start, disable=not progress, desc="fit", leave=False)
    try:
        for step in range(start, steps):
            # the first update validates its inputs; later ones skip the per-step checks (each
            # is a device synchronisation) since the data source and shapes are now known
            with no_validation() if step > start else contextlib.nullcontext():
                x0, x1, t, kwargs = draw_batch(validate=step == start)
                sample = path.sample(x0, x1, t)
                if sample.dx_t is None:
                    raise TypeError(
                        f"fit regresses velocities, but {type(path).__name__}.sample returns no "
                        "velocity target (a discrete path); train it with the discrete losses"
                    )
                prediction = model(sample.x_t, sample.t, **kwargs)
                loss = cfm_loss(prediction, target_of(sample), geometry, sample.x_t)
            lr_now = lr_at(step, lr=lr, steps=steps, schedule=lr_schedule,
                           warmup_steps=warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            pending.append(loss.detach())
            done = step + 1
            if done % log_every == 0 or done == steps:
                flush(done)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr_now:.2e}")
            bar.update(1)
            if checkpoint_path is not None and checkpoint_every is not None \
                    and done % checkpoint_every == 0 and done != steps:
                flush(done)
                save(done)
        flush(steps)
        if checkpoint_path is not None and start < steps:
            save(steps)
    finally:
        bar.close()
    model.eval()
    return FitResult(model=model, ema_model=ema.module if ema is not None else None,
                     losses=losses, steps=steps, resumed_from=resumed_from,
                     seconds=time.perf_counter() - started)


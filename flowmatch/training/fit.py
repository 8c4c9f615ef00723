"""A compact, resumable flow-matching training loop for any path on any geometry.

One loop trains tensors on a manifold, products of named factors (with ragged batches: one
lattice row per crystal, one coordinate row per atom), discrete token sequences, and joint
continuous + discrete products. What varies is what ``sample_data`` returns, what the path's
``sample`` returns, and which loss compares the model's output with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from flowmatch._validation import check_finite, no_validation
from flowmatch.geometry.base import Geometry
from flowmatch.geometry.discrete import Discrete
from flowmatch.geometry.product import Product, ProductPoint
from flowmatch.models.guidance import drop_condition
from flowmatch.paths.base import ProbPath
from flowmatch.paths.marginal import marginal_velocity, supports_marginal_velocity
from flowmatch.paths.mixture import MixtureDiscretePath
from flowmatch.paths.product import ProductPath
from flowmatch.training import distributed as _distributed
from flowmatch.training.checkpoint import load_checkpoint, save_checkpoint
from flowmatch.training.discrete_loss import discrete_cross_entropy
from flowmatch.training.ema import EMA
from flowmatch.training.loss import cfm_loss
from flowmatch.training.product_loss import product_loss
from flowmatch.training.time_sampling import UniformTime

_SCHEDULES = ("constant", "cosine", "linear")
_ROWS = ("mean", "sum")
_FORMAT = "flowmatch.fit/1"
# training settings a resumed run must share with the checkpoint, or the continuation would not
# be the run the user asked for
_RESUME_KEYS = ("steps", "batch_size", "lr", "weight_decay", "ema_decay", "ema_warmup",
                "lr_schedule", "warmup_steps", "seed", "cond_dropout", "marginal_target",
                "loss", "loss_weights", "rows")
# the value a checkpoint written before the key existed was trained with
_RESUME_DEFAULTS = {"loss": None, "loss_weights": None, "rows": "mean"}

Batch = Tensor | Mapping[str, Tensor]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``losses[k]`` is the training loss of update k (0-based, the whole run including the steps
    done before a resume); ``ema_model`` is the averaged model (None when ``ema_decay=None``) —
    usually the one to sample from; ``steps`` is the number of updates done (the run's
    ``steps``, or as many as fitted in ``budget_s``); ``resumed_from`` is the step a
    checkpoint was resumed at.
    """

    model: nn.Module
    ema_model: nn.Module | None
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from: int | None = None
    seconds: float = 0.0


def lr_at(step: int, *, lr: float, steps: int | None, schedule: str | Callable[[int, float], float],
          warmup_steps: int, progress: float | None = None) -> float:
    """Learning rate of update ``step`` (0-based).

    A named ``schedule`` ("constant", "cosine" or "linear", to 0) follows ``warmup_steps`` of
    linear warm-up and spans the remaining steps. A callable ``schedule(step, progress)``
    returns a factor of the run's ``progress`` ∈ [0, 1) (default step / steps), and the rate is
    lr · min(1, (step + 1) / warmup_steps) · factor: the warm-up multiplies a schedule that
    spans the whole run. Giving ``progress`` (the wall-clock mode of :func:`fit`, elapsed /
    budget) evaluates a named schedule that way too.
    """
    if progress is None and not callable(schedule):
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        if schedule == "constant":
            return lr
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        if schedule == "cosine":
            return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr * (1.0 - progress)
    if progress is None:
        progress = step / steps
    if callable(schedule):
        factor = schedule(step, progress)
    elif schedule == "constant":
        factor = 1.0
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    if not (factor >= 0 and math.isfinite(factor)):
        raise ValueError(f"lr_schedule({step}, {progress:.4g}) must be a finite factor ≥ 0, "
                         f"got {factor!r}")
    # (lr · warm-up) · factor, in this order: a schedule written as one expression
    # lr · warm-up · f gets exactly the same rate from its factor f
    if warmup_steps:
        return float(lr * min(1.0, (step + 1) / warmup_steps) * factor)
    return float(lr * factor)


def _rank_seed(seed: int, rank: int) -> int:
    """A seed for torch's global RNG on ``rank``: distinct per rank and unrelated to the
    stream ``seed`` gives fit's own generator (random.Random hashes the string with SHA-512)."""
    import random

    return random.Random(f"flowmatch.fit/{seed}/rank {rank}").getrandbits(63)


def _describe(value: Any) -> Any:
    """A plain, stable stand-in for a setting in the checkpoint's config (no memory addresses)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if torch.is_tensor(value):
        return f"tensor{list(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return f"{value.__module__}.{value.__qualname__}"
    if type(value).__repr__ is not object.__repr__:
        return repr(value)
    return type(value).__qualname__


def _check_marginal_target(marginal_target: Any, path: Any, geometry: Geometry | None,
                           coupling: Any) -> None:
    if isinstance(path, ProductPath) or isinstance(geometry, Product) \
            or isinstance(path, MixtureDiscretePath) or getattr(geometry, "is_discrete", False):
        raise ValueError("marginal_target is for tensor data on a continuous path; got "
                         f"path {path!r} on {geometry!r} (drop marginal_target)")
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
    if not hasattr(path, "geometry") and geometry is not None and not (
            type(geometry).__name__ == "Euclidean" and geometry.standard_base):
        raise ValueError("marginal_target with an affine path assumes the N(0, I) source; "
                         f"fit draws the source from {geometry}")


def _check_product(path: Any, geometry: Geometry | None, *, coupling: Any,
                   loss_weights: Mapping[str, float] | None) -> None:
    if not isinstance(geometry, Product):
        raise ValueError(f"a ProductPath trains on a Product geometry (it draws each factor's "
                         f"source and measures its loss there); got geometry={geometry!r}")
    if set(path.factors) != set(geometry.factors):
        raise ValueError(f"path and geometry must have the same factors, got path "
                         f"{sorted(path.factors)} and geometry {sorted(geometry.factors)}")
    if coupling is not None:
        raise ValueError("coupling pairs tensor batches; it is not defined for product points "
                         "(drop coupling)")
    for name, weight in (loss_weights or {}).items():
        if name not in geometry.factors:
            raise ValueError(f"loss_weights names {name!r}, which is not a factor of "
                             f"{sorted(geometry.factors)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"loss_weights[{name!r}] must be a finite number ≥ 0, got "
                             f"{weight!r}")


def _split_batch(batch: Any) -> tuple[Batch, Tensor | None]:
    if torch.is_tensor(batch) or isinstance(batch, Mapping):
        return batch, None
    if isinstance(batch, tuple) and len(batch) == 2 and (
            torch.is_tensor(batch[0]) or isinstance(batch[0], Mapping)):
        return batch[0], batch[1]
    raise TypeError(
        "sample_data(batch_size, generator) must return a Tensor x1, a mapping factor → tensor "
        "(a ProductPoint for ragged batches) or a tuple (x1, cond), "
        f"got {type(batch).__name__}"
    )


def _num_samples(x1: Batch) -> int:
    """Samples in a batch: rows of a tensor, crystals (not atoms) of a ragged ProductPoint."""
    if torch.is_tensor(x1):
        return int(x1.shape[0])
    if isinstance(x1, ProductPoint):
        return x1.num_samples
    rows = {k: int(v.shape[0]) if torch.is_tensor(v) and v.dim() else None
            for k, v in x1.items()}
    if len(set(rows.values())) != 1 or None in rows.values():
        raise ValueError(f"the factors of sample_data's mapping must all lead with the sample "
                         f"dimension, got rows {rows}; give a ProductPoint whose segments say "
                         "which sample each row of a ragged factor belongs to")
    return next(iter(rows.values()))


def _move(x1: Batch, device: torch.device, dtype: torch.dtype, *, cast: bool) -> Batch:
    """To ``device``; floating tensors (all tensors, with ``cast``) to ``dtype``."""
    if torch.is_tensor(x1):
        return x1.to(device=device, dtype=dtype if cast or x1.is_floating_point() else None)
    if isinstance(x1, ProductPoint):
        return x1.to(device=device, dtype=dtype)
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
            for k, v in x1.items()}


def _check_sampler_signature(sample_data: Callable[..., Any]) -> None:
    """Raise unless ``sample_data`` can be called as ``sample_data(n, generator)``.

    A one-argument sampler used to fail deep in the loop with Python's own "takes 1 positional
    argument"; the generator argument is what makes a run reproducible, so it is required.
    """
    import inspect

    try:
        sig = inspect.signature(sample_data)
    except (TypeError, ValueError):  # builtins and C callables: nothing to check
        return
    try:
        sig.bind(0, None)
    except TypeError:
        raise TypeError(
            f"sample_data must accept (n, generator) — the batch size and the torch.Generator "
            f"fit seeds — but its signature is {sig}; e.g. lambda n, generator: "
            f"data[torch.randint(len(data), (n,), generator=generator)]") from None


def fit(
    model: nn.Module,
    sample_data: Callable[[int, torch.Generator], Any],
    path: ProbPath | ProductPath,
    geometry: Geometry | None = None,
    *,
    steps: int | None = None,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    ema_decay: float | Callable[[int], float] | None = 0.999,
    ema_warmup: bool = True,
    grad_clip: float | None = None,
    lr_schedule: str | Callable[[int, float], float] = "cosine",
    warmup_steps: int = 0,
    coupling: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    time_sampler: Callable[..., Tensor] | None = None,
    marginal_target: int | Tensor | None = None,
    loss: Callable[[Any, Any, Geometry | None], Tensor] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    rows: str = "mean",
    cond_dropout: float = 0.0,
    null_cond: Tensor | int | float | None = None,
    seed: int = 0,
    budget_s: float | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    log_every: int = 100,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    grad_accum_steps: int = 1,
    distributed: bool | None = None,
    ddp_options: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train a velocity field (or a posterior over tokens) by flow matching; return a
    :class:`FitResult`.

    Each update draws data x1 = ``sample_data(batch_size, generator)``, source x0 =
    ``geometry.sample_base_like(x1)`` (standard normal when ``geometry`` is None), pairs them
    with ``coupling`` (default: as drawn), draws one time per sample from ``time_sampler``
    (default U(0, 1)), samples the path ``path.sample(x0, x1, t)``, calls
    ``model(x_t, t[, cond=c])`` and minimises the loss below with AdamW.

    What x1 may be, and what is trained:

    * a Tensor [B, *point_shape] on a continuous :class:`~flowmatch.paths.ProbPath`: the
      (Riemannian) regression :func:`~flowmatch.training.cfm_loss` on the velocity target;
    * a Tensor of tokens on a discrete path (``dx_t`` None, e.g.
      :class:`~flowmatch.paths.MixtureDiscretePath` with ``geometry`` a
      :class:`~flowmatch.geometry.Discrete`): the model returns posterior logits
      [*x1.shape, K] and the loss is :func:`~flowmatch.training.discrete_cross_entropy`;
    * a mapping factor → tensor — a :class:`~flowmatch.geometry.ProductPoint` of B *samples*
      (B crystals, whatever their atom counts) for ragged batches — on a
      :class:`~flowmatch.paths.ProductPath` with ``geometry`` a
      :class:`~flowmatch.geometry.Product`: the model gets x_t (a ProductPoint with x1's
      layout) and t of shape [B], returns a dict of per-factor tangent vectors / logits (fixed
      factors may be omitted), and the loss is :func:`~flowmatch.training.product_loss`:
      per-factor losses reduced per sample (a ragged factor by the mean over the sample's rows,
      ``rows="mean"``, or their sum, ``"sum"``), weighted by ``loss_weights`` (1 for a factor
      not named), summed over factors and averaged over samples;
    * any of these as a tuple (x1, cond) for conditional models (``model(x_t, t, cond=c)``).

    The first update validates the batch (sample count, finite values,
    ``geometry.check_point``); later ones skip those checks.

    Randomness: every draw the loop makes (data, noise, times, token jumps of discrete paths,
    condition dropout) comes from one ``torch.Generator`` seeded with ``seed`` on ``device``;
    its state, the model, the optimizer, the EMA and torch's global RNG state are
    checkpointed, so a run resumed from a checkpoint reproduces the uninterrupted run's losses
    exactly (on the same device and software).

    Data parallel (``torchrun --nproc_per_node N``, or a process group the caller initialised;
    see :mod:`flowmatch.training.distributed`): the model is wrapped in
    ``DistributedDataParallel`` and ``batch_size`` is the *global* batch. Every rank draws
    the whole batch's randomness from the same seeded stream — data, noise, times, path
    jumps, condition dropout, coupling and marginal targets over the global batch — and
    trains on its contiguous ``batch_size / N`` samples, so the union of the ranks' shards is
    exactly what one process draws and the run is the one-process run up to the rounding
    of float sums (the drawing, not the network, costs N×). Gradients are averaged by DDP,
    so the update is that of the global mean loss; parameters and the EMA stay identical on
    every rank. Rank 0 alone shows the progress bar and writes checkpoints (the others wait);
    a resume reads the checkpoint on rank 0 and broadcasts it, and may use another number of
    ranks. ``budget_s`` is measured on rank 0 and broadcast each step, so every rank takes
    the same steps with the same learning rates. ``losses`` are the global means on every
    rank. torch's global RNG (dropout inside the model) is seeded per rank from ``seed`` and
    the rank, and checkpointed per rank.

    Args:
        steps, batch_size: number of optimiser updates and samples per update.
        lr, weight_decay: AdamW settings.
        lr_schedule, warmup_steps: "constant", "cosine" (to 0) or "linear" (to 0) after
            ``warmup_steps`` of linear warm-up (:func:`lr_at`); or a callable
            ``f(step, progress) → factor`` of the run's progress = step / steps (elapsed /
            ``budget_s`` in the wall-clock mode), with the rate
            lr · min(1, (step + 1) / warmup_steps) · f(step, progress): the warm-up multiplies
            a schedule that spans the whole run (so does a named schedule under ``budget_s``).
        ema_decay, ema_warmup: decay of the parameter EMA (None: no EMA); with warm-up the k-th
            update (k = 1, 2, …) uses min(ema_decay, (1 + k) / (10 + k)) so that short runs do
            not keep a large weight on the random initialisation (0.999^1000 ≈ 0.37 without
            it). A callable ``ema_decay(n)`` gives the decay of update n (0-based) itself
            (``ema_warmup`` is then ignored).
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        loss: replace the default loss: called as ``loss(prediction, sample, geometry)`` with
            the model's output, the path sample (a :class:`~flowmatch.paths.PathSample`, or
            for a ProductPath a :class:`~flowmatch.paths.ProductPathSample`: a dict of
            per-factor PathSamples with ``.x_t``, ``.t``, ``.dx_t``, ``.x1``, ``.fixed``) and
            ``geometry``; it returns a scalar or one loss per sample ([B]), which fit averages.
        loss_weights, rows: settings of the default product loss (ProductPath only).
        marginal_target: regress on a marginal velocity instead of the conditional one
            (:func:`flowmatch.paths.marginal.marginal_velocity`): the posterior-weighted mean
            of u_t(x_t | y) over reference points y — same minimiser, far less target
            variance. An int n: the batch's own x1 plus n more draws of ``sample_data`` each
            update (Xu et al. 2023's stable target field); a Tensor [M, *point_shape]: that
            fixed set (e.g. the whole training set, for the exact empirical marginal). Needs
            tensor data on a path with ``conditional_log_prob`` (geodesic on
            Sphere/FlatTorus/Euclidean, or affine with the N(0, I) source), unconditional data
            and no ``coupling``.
        coupling: re-pairs (x0, x1) of a tensor batch (e.g. minibatch OT).
        cond_dropout, null_cond: for conditional data, replace cond by ``null_cond`` (default
            ``model.null_cond``) with this probability, for classifier-free guidance.
        budget_s: train until this many wall-clock seconds have passed (at most ``steps``
            updates when ``steps`` is also given); the learning-rate schedule then spans the
            time. The result depends on machine load, so such a run is not checkpointed.
        checkpoint_path, checkpoint_every: save atomically every ``checkpoint_every`` updates
            (None: only at the end); with ``resume=True`` an existing checkpoint is continued.
        progress, log_every: tqdm progress bar, whose loss readout (and the non-finite-loss
            check) happens every ``log_every`` updates so the loop does not synchronise per step.
        device, dtype: move the model there first (default: where the model already is); the
            data's floating tensors follow. Data-parallel, "cuda" means ``cuda:LOCAL_RANK``.
        grad_accum_steps: split each update's batch into this many micro-batches whose
            gradients add up (each rank's share, when data-parallel; DDP synchronises on the
            last only); the update equals one batch of ``batch_size`` up to float rounding,
            with the activations of ``batch_size / grad_accum_steps`` samples (per rank).
            ``batch_size`` must be divisible by ``grad_accum_steps`` × the number of ranks.
        distributed: None (default) trains data-parallel when a process group of more than
            one rank is initialised or torchrun's environment (``WORLD_SIZE`` > 1) asks for
            one, which fit then initialises (:func:`flowmatch.training.distributed.setup`);
            False trains alone in each process; True requires a process group.
        ddp_options: keyword arguments for ``DistributedDataParallel`` (e.g.
            ``find_unused_parameters=True`` for a model some of whose parameters get no
            gradient); ignored in a single process.

    The model is trained in place and left in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(sample_data):
        raise TypeError(f"sample_data must be callable, got {type(sample_data).__name__}")
    _check_sampler_signature(sample_data)
    if not callable(getattr(path, "sample", None)):
        raise TypeError("path must be a ProbPath or a ProductPath (anything with "
                        f"sample(x0, x1, t)), got {type(path).__name__}")
    if geometry is not None and not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a flowmatch Geometry, got {type(geometry).__name__}")
    if steps is None and budget_s is None:
        raise ValueError("steps must be a positive integer (or give budget_s), got None")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every)):
        if name == "steps" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(
            budget_s, (int, float)) or not (math.isfinite(budget_s) and budget_s > 0)):
        raise ValueError(f"budget_s must be a positive number of seconds or None, got "
                         f"{budget_s!r}")
    if budget_s is not None and checkpoint_path is not None:
        raise ValueError("a budget_s run depends on machine load and cannot be resumed "
                         "exactly; drop checkpoint_path or train for a number of steps")
    multiplied_warmup = callable(lr_schedule) or budget_s is not None
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0 \
            or (not multiplied_warmup and warmup_steps > steps):
        bound = "≥ 0" if multiplied_warmup else f"in [0, steps={steps}]"
        raise ValueError(f"warmup_steps must be an integer {bound}, got {warmup_steps!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer or None, got "
                         f"{checkpoint_every!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay!r}")
    if ema_decay is not None and not callable(ema_decay) and not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1], be a callable or None, got "
                         f"{ema_decay!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
    if not callable(lr_schedule) and lr_schedule not in _SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {_SCHEDULES} or a callable "
                         f"(step, progress) → factor, got {lr_schedule!r}")
    if not 0.0 <= cond_dropout <= 1.0:
        raise ValueError(f"cond_dropout must lie in [0, 1], got {cond_dropout!r}")
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be callable (prediction, sample, geometry) → loss or None, "
                        f"got {type(loss).__name__}")
    if rows not in _ROWS:
        raise ValueError(f"rows must be one of {_ROWS}, got {rows!r}")
    is_product = isinstance(path, ProductPath)
    if is_product:
        _check_product(path, geometry, coupling=coupling, loss_weights=loss_weights)
    elif isinstance(geometry, Product) and isinstance(path, ProbPath):
        raise ValueError(f"geometry is a Product, so path must be a ProductPath of its factors "
                         f"{sorted(geometry.factors)}; got {type(path).__name__}")
    if (loss_weights is not None or rows != "mean") and (not is_product or loss is not None):
        raise ValueError("loss_weights and rows set the default loss of a ProductPath; "
                         + ("a custom loss weighs and reduces factors itself" if is_product
                            else f"path is a {type(path).__name__}"))
    if isinstance(path, MixtureDiscretePath) and not isinstance(geometry, Discrete):
        raise ValueError(f"a MixtureDiscretePath trains on geometry=Discrete(...) (its source "
                         f"tokens and the cross-entropy's vocabulary); got {geometry!r}")
    if marginal_target is not None:
        _check_marginal_target(marginal_target, path, geometry, coupling)
    if isinstance(grad_accum_steps, bool) or not isinstance(grad_accum_steps, int) \
            or grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be a positive integer, got "
                         f"{grad_accum_steps!r}")
    if distributed not in (None, True, False):
        raise ValueError(f"distributed must be None (automatic), True or False, got "
                         f"{distributed!r}")
    if ddp_options is not None and not isinstance(ddp_options, Mapping):
        raise TypeError(f"ddp_options must be a mapping of DistributedDataParallel keyword "
                        f"arguments or None, got {type(ddp_options).__name__}")

    started = time.perf_counter()
    run = None
    if distributed is not False:
        if device is None:
            first = next(model.parameters(), None)
            where = first.device if first is not None else None
        else:
            where = torch.device(device)
        run = _distributed.setup(where, required=distributed is True)
        if run is not None:
            device = run.device
    world, rank = (run.world_size, run.rank) if run is not None else (1, 0)
    shards = world * grad_accum_steps
    if batch_size % shards:
        raise ValueError(
            f"batch_size={batch_size} (the global batch) must be divisible by "
            f"{'the number of ranks × ' if world > 1 else ''}grad_accum_steps = "
            + (f"{world} × " if world > 1 else "") + f"{grad_accum_steps}, the number of "
            "micro-batches it is split into")
    shard_size = batch_size // shards
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
    # discrete paths (alone or as factors) draw which tokens have jumped from the generator
    random_path = "generator" in inspect.signature(path.sample).parameters
    # tokens stay integers; for a continuous geometry any tensor data is cast as before
    cast_data = not getattr(geometry, "is_discrete", False)

    net: nn.Module = model  # what the loop calls: DDP around the model when data-parallel
    if run is not None:
        from torch.nn.parallel import DistributedDataParallel

        # device_ids stays None: DDP would otherwise rebuild mapping inputs as plain dicts on
        # the way in (losing a ProductPoint's segments); fit's inputs are on the device already.
        # Wrapping broadcasts rank 0's parameters, so the EMA below starts from them everywhere.
        net = DistributedDataParallel(model, **dict(ddp_options or {}))
        # model-internal randomness (dropout) must differ between ranks, reproducibly
        torch.manual_seed(_rank_seed(seed, rank))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = EMA(model, ema_decay, warmup=bool(ema_warmup) and not callable(ema_decay)) \
        if ema_decay is not None else None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    config = {"steps": steps, "batch_size": batch_size, "lr": float(lr),
              "weight_decay": float(weight_decay), "ema_decay": _describe(ema_decay),
              "ema_warmup": bool(ema_warmup),
              "lr_schedule": _describe(lr_schedule), "warmup_steps": warmup_steps, "seed": seed,
              "cond_dropout": float(cond_dropout),
              "marginal_target": _describe(marginal_target), "loss": _describe(loss),
              "loss_weights": _describe(dict(loss_weights)) if loss_weights is not None
              else None, "rows": rows,
              # how the batch was split; a resume may split it differently (same run)
              "grad_accum_steps": grad_accum_steps, "world_size": world}

    losses: list[float] = []
    start = 0
    resumed_from = None
    state = None
    if checkpoint_path is not None and resume:
        if run is None:
            if os.path.exists(checkpoint_path):
                state = load_checkpoint(checkpoint_path, map_location=device)
        else:
            # rank 0 reads it (no shared file system needed) and sends it to the others; on
            # the CPU, so no rank allocates on another rank's GPU
            loaded: Any = None
            if rank == 0 and os.path.exists(checkpoint_path):
                try:
                    loaded = load_checkpoint(checkpoint_path, map_location="cpu")
                except (OSError, ValueError) as err:
                    loaded = err
            loaded = _distributed.broadcast_object(loaded)
            if isinstance(loaded, Exception):
                raise loaded
            state = loaded
    if state is not None:
        if state.get("format") != _FORMAT:
            raise ValueError(f"checkpoint {str(checkpoint_path)!r} was not written by fit() "
                             f"(format {state.get('format')!r}, expected {_FORMAT!r})")
        saved = state["config"]
        differ = [f"{k}: checkpoint {saved.get(k, _RESUME_DEFAULTS.get(k))!r} vs now "
                  f"{config[k]!r}" for k in _RESUME_KEYS
                  if saved.get(k, _RESUME_DEFAULTS.get(k)) != config[k]]
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
        per_rank = state.get("torch_rng_per_rank")
        if per_rank is not None and rank < len(per_rank):
            torch.set_rng_state(per_rank[rank].cpu())
        elif rank == 0:  # another number of ranks: the others keep their fresh per-rank seeds
            torch.set_rng_state(state["torch_rng"].cpu())
        losses = state["losses"].tolist()
        start = resumed_from = int(state["step"])
        del state

    def save(step: int) -> None:
        if run is None:
            per_rank = None
        else:  # a collective: every rank reaches each save at the same step
            per_rank = _distributed.gather_objects([torch.get_rng_state()])
        if rank == 0:
            save_checkpoint(checkpoint_path, {
                "format": _FORMAT, "step": step, "config": config,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                "losses": torch.tensor(losses, dtype=torch.float64),
                **({"torch_rng_per_rank": per_rank} if per_rank is not None else {}),
            })
        if run is not None:
            _distributed.barrier()  # nobody runs ahead of (or exits before) the write

    def validate_batch(x1: Batch) -> None:
        what = "sample_data(...) output"
        if isinstance(x1, Mapping):
            if not isinstance(geometry, Product):
                raise ValueError(f"{what} is a mapping (a product batch), which needs "
                                 f"geometry=Product(...) and a ProductPath; got {geometry!r}")
            if not is_product and isinstance(path, ProbPath):
                raise ValueError(f"{what} is a mapping (a product batch), which needs a "
                                 f"ProductPath; got {type(path).__name__}")
            if coupling is not None:
                raise ValueError("coupling pairs tensor batches; sample_data returned a "
                                 "product batch (drop coupling)")
            for k, v in x1.items():
                if not torch.is_tensor(v):
                    raise TypeError(f"{what}[{k!r}] must be a Tensor, got {type(v).__name__}")
                check_finite(f"{what}[{k!r}]", v)
        else:
            if is_product or isinstance(geometry, Product):
                raise ValueError(f"{what} is a Tensor, but a product needs a mapping factor → "
                                 "tensor (a ProductPoint for ragged batches)")
            check_finite(what, x1)
        n = _num_samples(x1)
        if n != batch_size:
            raise ValueError(f"sample_data returned {n} samples, expected "
                             f"batch_size={batch_size}")
        if geometry is not None:
            geometry.check_point(x1, what)

    def draw_batch(validate: bool) -> tuple[Batch, Batch, Tensor, dict[str, Tensor]]:
        x1, cond = _split_batch(sample_data(batch_size, generator))
        if validate:
            validate_batch(x1)
        x1 = _move(x1, device, dtype, cast=cast_data)
        if geometry is not None:
            x0 = geometry.sample_base_like(x1, generator=generator, dtype=dtype, device=device)
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

    def loss_of(prediction: Any, sample: Any) -> Tensor:
        # with marginal_target, sample.dx_t is already the marginal target (see `targeted`)
        if loss is not None:
            value = loss(prediction, sample, geometry)
            if not torch.is_tensor(value) or value.shape not in ((), (shard_size,)):
                got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise ValueError(f"loss must return a scalar tensor or one loss per sample "
                                 f"[{shard_size}], got {got}")
            return value.mean() if value.dim() else value
        if isinstance(sample, Mapping):  # a ProductPathSample: one loss over the factors
            if not isinstance(geometry, Product):
                raise ValueError(f"{type(path).__name__}.sample returned a product sample, "
                                 f"which needs geometry=Product(...); got {geometry!r}")
            return product_loss(prediction, sample, geometry, loss_weights, rows=rows)[0]
        if sample.dx_t is None:
            if isinstance(geometry, Discrete):
                return discrete_cross_entropy(prediction, sample.x1, sample.x_t, geometry)
            raise TypeError(
                f"fit regresses velocities, but {type(path).__name__}.sample returns no "
                "velocity target (a discrete path): give geometry=Discrete(...) for the "
                "cross-entropy on its tokens, or a loss="
            )
        return cfm_loss(prediction, sample.dx_t, geometry, sample.x_t)

    def targeted(sample: Any) -> Any:
        """The path sample with its regression target: the marginal one, over the global
        batch (the reference set is the whole batch's x1), with ``marginal_target``."""
        if marginal_target is None:
            return sample
        return dataclasses.replace(sample, dx_t=target_of(sample))

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    pending: list[Tensor] = []

    def flush(step: int) -> None:
        if not pending:
            return
        stacked = torch.stack(pending)
        pending.clear()
        if run is not None:  # a collective: every rank flushes at the same steps
            import torch.distributed as dist

            dist.all_reduce(stacked)
            stacked = stacked / world
        values = stacked.tolist()
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"the training loss became non-finite at step {step - len(values) + bad[0]} "
                f"(value {values[bad[0]]}); lower lr or set grad_clip"
            )
        losses.extend(values)

    from tqdm.auto import tqdm

    def micro_step(sample: Any, kwargs: dict[str, Tensor], j: int, last: bool) -> Tensor:
        """Forward and backward of micro-batch j of the global batch (samples
        [j · shard_size, (j + 1) · shard_size)); the loss, detached."""
        lo = j * shard_size
        part = _distributed.take_samples(sample, lo, lo + shard_size)
        part_kwargs = {k: _distributed.take_samples(v, lo, lo + shard_size)
                       for k, v in kwargs.items()}
        # DDP all-reduces the gradients in the backward of the last micro-batch only
        sync = contextlib.nullcontext() if last or run is None else net.no_sync()
        with sync:
            value = loss_of(net(part.x_t, part.t, **part_kwargs), part)
            (value / grad_accum_steps).backward()
        return value.detach()

    def stop_progress(step: int) -> tuple[bool, float | None]:
        """Whether to stop before update ``step``, and the run's progress for the schedule."""
        if budget_s is None:
            return step >= steps, None  # lr_at: step / steps (a named schedule: its own form)
        run_progress = (time.perf_counter() - clock) / budget_s
        if run is not None:  # rank 0's clock decides for everyone
            import torch.distributed as dist

            box = torch.tensor([run_progress], dtype=torch.float64)
            dist.broadcast(box, src=0, group=run.cpu_group)
            run_progress = float(box)
        return run_progress >= 1 or (steps is not None and step >= steps), run_progress

    bar = tqdm(total=steps, initial=start, disable=not progress or rank != 0, desc="fit",
               leave=False)
    clock = time.perf_counter()
    step = start
    try:
        while True:
            stop, run_progress = stop_progress(step)
            if stop:
                break
            lr_now = lr_at(step, lr=lr, steps=steps, schedule=lr_schedule,
                           warmup_steps=warmup_steps, progress=run_progress)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            optimizer.zero_grad(set_to_none=True)
            # the first update validates its inputs; later ones skip the per-step checks (each
            # is a device synchronisation) since the data source and shapes are now known
            with no_validation() if step > start else contextlib.nullcontext():
                x0, x1, t, kwargs = draw_batch(validate=step == start)
                sample = path.sample(x0, x1, t, generator=generator) if random_path \
                    else path.sample(x0, x1, t)
                sample = targeted(sample)
                if shards == 1:  # the whole batch at once, as before micro-batches existed
                    value = loss_of(model(sample.x_t, sample.t, **kwargs), sample)
                    value.backward()
                    value = value.detach()
                else:  # this rank's micro-batches: rank-major, contiguous
                    parts = [micro_step(sample, kwargs, rank * grad_accum_steps + m,
                                        m == grad_accum_steps - 1)
                             for m in range(grad_accum_steps)]
                    value = parts[0] if len(parts) == 1 else torch.stack(parts).mean()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            pending.append(value)
            done = step + 1
            if done % log_every == 0 or done == steps:
                flush(done)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr_now:.2e}")
            bar.update(1)
            if checkpoint_path is not None and checkpoint_every is not None \
                    and done % checkpoint_every == 0 and done != steps:
                flush(done)
                save(done)
            step = done
        flush(step)
        if checkpoint_path is not None and start < steps:
            save(steps)
    finally:
        bar.close()
    model.eval()
    return FitResult(model=model, ema_model=ema.module if ema is not None else None,
                     losses=losses, steps=step, resumed_from=resumed_from,
                     seconds=time.perf_counter() - started)

"""Validation helpers used at the public edges of the library.

Checks raise ``ValueError`` naming the argument, the rule and the offending value. They can be
switched off globally (``flowmatch.set_validation(False)``) for hot loops whose inputs are
already known to be valid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

_ENABLED = True
# Depth of library loops whose geometry points were checked at their entry (or come from the
# library's own maps): geometry maps skip their point-membership checks inside them.
_TRUSTED = 0


def set_validation(enabled: bool) -> None:
    """Turn argument validation on or off for the whole library."""
    global _ENABLED
    _ENABLED = bool(enabled)


def validation_enabled() -> bool:
    return _ENABLED


@contextlib.contextmanager
def no_validation() -> Iterator[None]:
    """Context manager that disables validation inside its block."""
    global _ENABLED
    previous = _ENABLED
    _ENABLED = False
    try:
        yield
    finally:
        _ENABLED = previous


def points_checked() -> bool:
    """True where geometry maps check their point arguments: validation on, outside the
    library's own loops (:func:`trusted_points`)."""
    return _ENABLED and not _TRUSTED


@contextlib.contextmanager
def trusted_points() -> Iterator[None]:
    """Skip the point-membership checks of geometry maps inside this block (nothing else).

    For library loops whose points were validated once at their entry or are produced by the
    library's own maps: a solver's steps, the maps a geodesic path composes. Result checks
    (non-finite outputs, overflow) and ``validation_enabled()`` are unaffected. States inside
    such loops may sit a rounding error off the manifold (``project_every_step=False``,
    SO(3)'s unnormalised expmap), which a per-step check would reject.
    """
    global _TRUSTED
    _TRUSTED += 1
    try:
        yield
    finally:
        _TRUSTED -= 1


def check_finite(name: str, x: Tensor) -> None:
    """Raise if ``x`` holds NaN or infinite values."""
    if not _ENABLED:
        return
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(bad.sum()) - n_nan
            raise ValueError(
                f"{name} must be finite, but it holds {n_nan} NaN and {n_inf} infinite values "
                f"(shape {tuple(x.shape)})"
            )


def check_time(name: str, t: Tensor, batch_size: int | None = None) -> None:
    """Raise unless ``t`` is a finite time in [0, 1], scalar or of shape [B]."""
    if not _ENABLED:
        return
    check_finite(name, t)
    if t.dim() > 1:
        raise ValueError(f"{name} must be a scalar or of shape [B], got shape {tuple(t.shape)}")
    if batch_size is not None and t.dim() == 1 and t.shape[0] not in (1, batch_size):
        raise ValueError(
            f"{name} has {t.shape[0]} entries but the batch has {batch_size} samples"
        )
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], but ranges over [{lo:g}, {hi:g}]")


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if not _ENABLED:
        return
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )


def expand_time_like(t: Tensor | float, x: Tensor) -> Tensor:
    """Reshape a time of shape [], [1] or [B] to broadcast against ``x`` of shape [B, ...].

    Time is always aligned with the *leading* (batch) dimension. Right-aligned broadcasting
    of a [B] tensor against [B, D] silently pairs t with the feature axis when B == D; this
    helper never does.
    """
    if not torch.is_tensor(t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if x.is_floating_point():
        t = t.to(dtype=x.dtype)
    if t.dim() == 0:
        return t
    if t.dim() != 1:
        raise ValueError(f"time must be a scalar or of shape [B], got shape {tuple(t.shape)}")
    if t.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"time has {t.shape[0]} entries but the data has batch size {x.shape[0]}"
        )
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))

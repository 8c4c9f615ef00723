"""Crash-safe checkpoints: atomic save, safe (weights-only) load with clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; return the path.

    The state is serialised with ``torch.save`` into a temporary file in the same directory,
    flushed and fsync'ed, then renamed over ``path`` with ``os.replace`` (atomic on POSIX and
    Windows within one file system). A crash at any moment leaves either the previous checkpoint
    or the new one, never a truncated file. ``state`` must hold only what
    :func:`load_checkpoint`'s ``weights_only=True`` accepts: tensors, numbers, strings, None and
    nested dicts / lists / tuples of them (optimizer and module ``state_dict()``s qualify).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"checkpoint directory {str(directory)!r} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # covers KeyboardInterrupt too: never leave the half-written temporary behind
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory: Path) -> None:
    # makes the rename itself durable; not possible on every platform (e.g. Windows)
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises ``FileNotFoundError`` if ``path`` does not exist and ``ValueError`` (naming the file)
    if it is corrupt, truncated or holds objects that a weights-only load refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        # one line of our own: torch's message runs over many lines and advises retrying with
        # weights_only=False, which would execute whatever the file holds
        text = str(err)
        if "WeightsUnpickler error:" in text:
            text = text.split("WeightsUnpickler error:", 1)[1]
        elif "Weights only load failed" in text:
            text = "not a weights-only checkpoint"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        first = lines[0][:160] if lines else ""
        raise ValueError(
            f"checkpoint {str(path)!r} could not be read (corrupt, truncated, not a flowmatch "
            f"checkpoint, or holding objects a weights-only load refuses): "
            f"{type(err).__name__}: {first}"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint {str(path)!r} must hold a dict, got {type(state).__name__}"
        )
    return state

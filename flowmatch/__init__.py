"""flowmatch: flow matching on general manifolds.

Four abstractions: a *geometry* (the space), a *probability path* (how noise moves to data),
a *velocity field* (any ``torch.nn.Module`` called as ``field(x, t, **cond)``) and a *solver*
(which replays the learned motion). See ``flowmatch.geometry``, ``flowmatch.paths``,
``flowmatch.models``, ``flowmatch.solvers`` and ``flowmatch.training``.

Importing the top-level package is cheap (torch is loaded on first use), so ``flowmatch --help``
stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "set_validation": "flowmatch._validation",
    "no_validation": "flowmatch._validation",
    "validation_enabled": "flowmatch._validation",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flowmatch' has no attribute {name!r}")

"""flowmatch: flow matching on general manifolds.

Four abstractions: a *geometry* (the space), a *probability path* (how noise moves to data),
a *velocity field* (any ``torch.nn.Module`` called as ``field(x, t, **cond)``) and a *solver*
(which replays the learned motion). See ``flowmatch.geometry``, ``flowmatch.paths``,
``flowmatch.models``, ``flowmatch.solvers`` and ``flowmatch.training``.
"""

from flowmatch._validation import no_validation, set_validation

__version__ = "0.1.0"

__all__ = ["__version__", "no_validation", "set_validation"]

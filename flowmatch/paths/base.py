"""The probability-path contract shared by affine, geodesic, mixture and product paths."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class PathSample:
    """One draw from a conditional probability path.

    ``x_t`` is the point at time ``t`` between source ``x0`` (noise, t = 0) and target ``x1``
    (data, t = 1); ``dx_t`` is the conditional velocity d/dt x_t (a tangent vector at ``x_t``),
    which is the regression target of flow matching. Discrete paths set ``dx_t`` to None: their
    target is ``x1`` itself. ``t`` has shape [B].
    """

    x0: Tensor
    x1: Tensor
    t: Tensor
    x_t: Tensor
    dx_t: Tensor | None = None


class ProbPath:
    """Base class: ``sample(x0, x1, t)`` returns a :class:`PathSample`."""

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        raise NotImplementedError

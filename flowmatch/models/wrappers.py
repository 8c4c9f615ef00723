"""Wrappers that turn a network's output into a velocity field of the right kind."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowmatch.geometry.base import Geometry
from flowmatch.paths.affine import AffinePath


class TangentProjected(nn.Module):
    """u(x, t) = P_x f(x, t): the ambient output of ``field`` projected onto T_x M.

    A network on an embedded manifold (sphere, SO(3), …) outputs a vector of the ambient space;
    the flow must move along the manifold, so the output is passed through
    ``geometry.proju(x, ·)``. Conditioning keywords are forwarded to ``field`` unchanged (an
    unknown keyword raises there).
    """

    def __init__(self, field: Callable[..., Tensor], geometry: Geometry) -> None:
        super().__init__()
        if not callable(field):
            raise TypeError(f"field must be callable, got {type(field).__name__}")
        if not isinstance(geometry, Geometry):
            raise TypeError(
                f"geometry must be a flowmatch Geometry, got {type(geometry).__name__} "
                "(wrap geoopt manifolds with flowmatch.geometry.as_geometry)"
            )
        self.field = field
        self.geometry = geometry

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        return self.geometry.proju(x, self.field(x, t, **cond))

    def extra_repr(self) -> str:
        return f"geometry={self.geometry!r}"


_PREDICTIONS = ("velocity", "x1", "x0", "epsilon")


class PredictionConverter(nn.Module):
    """Velocity field from a network that predicts x1 (data), x0 or ε (noise) on an affine path.

    On x_t = α_t x1 + σ_t x0 the conversions are exact algebra (see :class:`AffinePath`):

        x1-prediction:      u = (σ̇/σ) x_t + (α̇ − σ̇ α/σ) x̂1
        x0/ε-prediction:    u = (α̇/α) x_t + (σ̇ − α̇ σ/α) x̂0

    (ε is x0 when the source is N(0, I)). They divide by σ_t (x1) or α_t (x0), which vanish at
    the ends of most schedules — CondOT has σ_1 = 0 and α_0 = 0 — so a solver step that
    evaluates the field exactly at such an end returns inf/NaN. ``time_eps > 0`` evaluates the
    conversion coefficients at t clamped into [time_eps, 1 − time_eps] (the network still sees
    the true t); the default 0 leaves t untouched so the conversion is exact.
    """

    def __init__(
        self,
        field: Callable[..., Tensor],
        path: AffinePath,
        prediction: str = "x1",
        *,
        time_eps: float = 0.0,
    ) -> None:
        super().__init__()
        if not callable(field):
            raise TypeError(f"field must be callable, got {type(field).__name__}")
        if not isinstance(path, AffinePath):
            raise TypeError(
                f"path must be an AffinePath (conversions need α_t, σ_t), got "
                f"{type(path).__name__}"
            )
        if prediction not in _PREDICTIONS:
            raise ValueError(f"prediction must be one of {_PREDICTIONS}, got {prediction!r}")
        if not 0.0 <= time_eps < 0.5:
            raise ValueError(f"time_eps must lie in [0, 0.5), got {time_eps!r}")
        self.field = field
        self.path = path
        self.prediction = prediction
        self.time_eps = float(time_eps)

    def forward(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        out = self.field(x, t, **cond)
        if self.prediction == "velocity":
            return out
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0 or t.shape[0] != x.shape[0]:
            t = t.reshape(-1).expand(x.shape[0])
        if self.time_eps:
            t = t.clamp(self.time_eps, 1.0 - self.time_eps)
        if self.prediction == "x1":
            return self.path.x1_to_velocity(out, x, t)
        return self.path.x0_to_velocity(out, x, t)

    def extra_repr(self) -> str:
        eps = f", time_eps={self.time_eps:g}" if self.time_eps else ""
        return f"prediction={self.prediction!r}, path={self.path!r}{eps}"

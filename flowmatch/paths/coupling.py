"""Couplings: how source samples x0 are paired with data samples x1 inside a batch.

Flow matching needs a coupling π(x0, x1) whose marginals are the source and the data. The
independent coupling pairs the batch as drawn. A minibatch optimal-transport coupling
(Tong et al. 2023, Pooladian et al. 2023) reorders x0 so that the pairs solve the assignment
problem for a cost c(x0, x1) — straighter conditional paths, lower-variance targets and fewer
solver steps.

Here the OT coupling always returns a *permutation* of the batch: every x0 is used exactly once,
so the empirical x0 marginal is exactly the one drawn. (Sampling pairs from the transport plan
with replacement, as some implementations do, repeats some x0 and drops others.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from flowmatch._validation import check_finite
from flowmatch.geometry.base import Geometry


def independent_coupling(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """The product coupling: return the pairs (x0[i], x1[i]) as drawn."""
    if x0.shape[0] != x1.shape[0]:
        raise ValueError(
            f"x0 and x1 must have the same batch size, got {x0.shape[0]} and {x1.shape[0]}"
        )
    return x0, x1


_COSTS = ("sqeuclidean", "euclidean")
_METHODS = ("exact", "sinkhorn")


class OTCoupling:
    """Minibatch optimal-transport coupling that permutes x0 to match x1.

    For a batch of B pairs the cost matrix is C[i, j] = c(x0_i, x1_j) with

    * ``cost="sqeuclidean"`` (default): ‖x0_i − x1_j‖² over the flattened point (any data shape),
      or, when ``geometry`` is given, the squared geodesic distance ``geometry.dist(x0_i, x1_j)²``;
    * ``cost="euclidean"``: the unsquared distance;
    * a callable ``cost(x0, x1) -> Tensor [B, B]``.

    ``method="exact"`` solves the assignment problem min_σ Σ_j C[σ(j), j] exactly
    (Hungarian-type algorithm, ``scipy.optimize.linear_sum_assignment``, O(B³)).
    ``method="sinkhorn"`` computes the entropic plan P (POT ``ot.sinkhorn``, log-stabilised, on
    the cost divided by its maximum, regularisation ``reg`` relative to that scale) and rounds it
    to the permutation carrying the most plan mass (an assignment on −P). The rounding keeps the
    result close to the exact optimum for every ``reg`` (measured on Gaussian batches of
    64–1024 points with reg from 0.01 to 10: within 0.1 % of the optimal cost); it is not faster
    than ``"exact"``, since the rounding is itself an assignment.

    ``coupling(x0, x1)`` returns ``(x0[perm], x1)``; ``coupling.permutation(x0, x1)`` returns the
    LongTensor ``perm`` itself.
    """

    def __init__(
        self,
        method: str = "exact",
        *,
        reg: float = 0.05,
        cost: str | Callable[[Tensor, Tensor], Tensor] = "sqeuclidean",
        geometry: Geometry | None = None,
        num_iter_max: int = 1000,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if not (isinstance(cost, str) and cost in _COSTS) and not callable(cost):
            raise ValueError(f"cost must be one of {_COSTS} or a callable, got {cost!r}")
        if callable(cost) and geometry is not None:
            raise ValueError("give either a cost callable or a geometry, not both")
        if not reg > 0:
            raise ValueError(f"reg must be positive, got {reg!r}")
        if geometry is not None and not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be a flowmatch Geometry, got {type(geometry).__name__}")
        if not isinstance(num_iter_max, int) or num_iter_max < 1:
            raise ValueError(f"num_iter_max must be a positive integer, got {num_iter_max!r}")
        self.method = method
        self.reg = float(reg)
        self.cost = cost
        self.geometry = geometry
        self.num_iter_max = num_iter_max

    # -- cost -----------------------------------------------------------------------------
    def cost_matrix(self, x0: Tensor, x1: Tensor) -> Tensor:
        """C[i, j] = c(x0_i, x1_j), shape [B, B]."""
        if callable(self.cost):
            c = self.cost(x0, x1)
            if c.shape != (x0.shape[0], x1.shape[0]):
                raise ValueError(
                    f"cost must return a [{x0.shape[0]}, {x1.shape[0]}] matrix, got shape "
                    f"{tuple(c.shape)}"
                )
            return c
        if self.geometry is not None:
            # a geoopt adapter may not know its point shape, only how many trailing dims it has
            k = len(self.geometry.point_shape) or getattr(self.geometry, "event_ndim", 0)
            if x0.dim() - k != 1 or x1.dim() - k != 1:
                raise ValueError(
                    f"x0 and x1 must have shape [B, *{self.geometry.point_shape}] for "
                    f"{self.geometry}, got {tuple(x0.shape)} and {tuple(x1.shape)}"
                )
            # batch dims [B, 1] and [1, B] broadcast to the [B, B] grid of pairs
            a, b = torch.broadcast_tensors(x0.unsqueeze(1), x1.unsqueeze(0))
            d = self.geometry.dist(a, b)
            return d.pow(2) if self.cost == "sqeuclidean" else d
        # float64: cdist's matrix-product formula cancels badly in float32 for close points
        d = torch.cdist(x0.reshape(x0.shape[0], -1).double(), x1.reshape(x1.shape[0], -1).double())
        return d.pow(2) if self.cost == "sqeuclidean" else d

    # -- coupling -------------------------------------------------------------------------
    def permutation(self, x0: Tensor, x1: Tensor) -> Tensor:
        """The LongTensor perm [B] such that (x0[perm[j]], x1[j]) are the coupled pairs."""
        if isinstance(x0, dict) or isinstance(x1, dict):
            raise TypeError("OTCoupling works on tensors; couple Product points factor by factor")
        if x0.shape[0] != x1.shape[0]:
            raise ValueError(
                f"x0 and x1 must have the same batch size, got {x0.shape[0]} and {x1.shape[0]}"
            )
        if self.geometry is None and x0.shape[1:] != x1.shape[1:]:
            raise ValueError(
                f"x0 and x1 must have the same point shape, got {tuple(x0.shape)} and "
                f"{tuple(x1.shape)}"
            )
        check_finite("x0", x0)
        check_finite("x1", x1)
        from scipy.optimize import linear_sum_assignment  # lazy: keeps `import flowmatch` light

        with torch.no_grad():
            c = self.cost_matrix(x0.detach(), x1.detach())
        cost = c.to(torch.float64).cpu().numpy()
        if not np.isfinite(cost).all():
            raise ValueError("the cost matrix has non-finite entries; check the cost function")
        if self.method == "exact":
            rows, cols = linear_sum_assignment(cost)
        else:
            rows, cols = linear_sum_assignment(-self._sinkhorn_plan(cost))
        perm = np.empty(len(cols), dtype=np.int64)
        perm[cols] = rows
        return torch.from_numpy(perm).to(x0.device)

    def _sinkhorn_plan(self, cost: np.ndarray) -> np.ndarray:
        try:
            import ot
        except ImportError as err:  # POT is an optional dependency
            raise ImportError(
                "OTCoupling(method='sinkhorn') needs POT: pip install pot (or flowmatch[bench])"
            ) from err
        n = cost.shape[0]
        scale = cost.max()
        scaled = cost / scale if scale > 0 else cost
        w = np.full(n, 1.0 / n)
        return ot.sinkhorn(w, w, scaled, self.reg, method="sinkhorn_stabilized",
                           numItermax=self.num_iter_max)

    def __call__(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        return x0[self.permutation(x0, x1)], x1

    def __repr__(self) -> str:
        cost = self.cost if isinstance(self.cost, str) else getattr(self.cost, "__name__", "fn")
        geo = f", geometry={self.geometry!r}" if self.geometry is not None else ""
        reg = f", reg={self.reg:g}" if self.method == "sinkhorn" else ""
        return f"OTCoupling({self.method!r}{reg}, cost={cost!r}{geo})"

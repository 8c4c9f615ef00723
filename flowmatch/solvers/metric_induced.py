"""τ-leaping sampler for metric-induced discrete paths (kinetic-optimal rates).

See :mod:`flowmatch.paths.metric_induced` for the path and its rates. One step freezes the
posterior and p_t at the left end of [t, t + h] and integrates β̇ exactly; a step that ends at
t = 1 (β = ∞) draws every token from the posterior.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from flowmatch._jumps import sample_weights
from flowmatch._validation import validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.solvers.ctmc import filter_logits
from flowmatch.solvers.discrete_step import (
    METRIC_INDUCED_STEP_OPTIONS,
    _TokenChainSolver,
    check_space,
    check_step_options,
    discrete_step_for,
)
from flowmatch.solvers.engine import Solution

__all__ = ["MetricInducedSolver", "MetricInducedJump", "metric_induced_step", "STEP_METHODS"]

MetricInducedPath = Any
"""A metric-induced path: ``scheduler.beta``, ``marginal_intensity``, ``conditional_intensity``
and ``check_space`` (see :class:`flowmatch.paths.metric_induced.MetricInducedPath`)."""


STEP_METHODS = ("marginal", "sample_x1")


def metric_induced_step(
    x_t: Tensor,
    logits: Tensor,
    t: float,
    h: float,
    path: MetricInducedPath,
    space: Discrete,
    *,
    method: str = "marginal",
    temperature: float | Tensor = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Advance tokens ``x_t`` (int64, any shape) from t to t + h under the marginal rates.

    ``logits``: the posterior logits [*x_t.shape, K] at (x_t, t); t, h floats with h > 0 and
    t + h ≤ 1. Each token jumps with probability 1 − exp(−(β_{t+h} − β_t) λ), its intensity λ
    frozen at t, to a target drawn ∝ its intensity. ``method``:

    * ``"marginal"``: λ from the posterior-averaged intensity Σ_{x₁} p_{1|t}(x₁) r(·, x_t | x₁)
      (the τ-leap of the marginal CTMC; O(K²) per token);
    * ``"sample_x1"``: draw x̂₁ ~ p_{1|t} per token and use r(·, x_t | x̂₁) (O(K) per token; the
      same expected rate, so the same CTMC to first order in h).

    A step that ends at t = 1 (β = ∞) draws x̂₁ ~ p_{1|t} for every token. ``temperature``,
    ``top_k`` and ``top_p`` filter the posterior first
    (:func:`~flowmatch.solvers.ctmc.filter_logits`).
    """
    t, h = float(t), float(h)
    if validation_enabled():
        if not (0.0 <= t < 1.0 and h > 0.0 and t + h <= 1.0 + 1e-6):
            raise ValueError(f"need 0 ≤ t < 1, h > 0 and t + h ≤ 1, got t={t}, h={h}")
        path.check_space(space)
        space.check_point(x_t, "x_t")
        space.check_logits(logits, x_t)
    if method not in STEP_METHODS:
        raise ValueError(f"method must be one of {STEP_METHODS}, got {method!r}")
    return _step(x_t, logits, t, h, path, method, temperature, top_k, top_p, generator)


def _step(x_t, logits, t, h, path, method, temperature, top_k, top_p, generator):
    if torch.is_tensor(temperature) or temperature != 1.0 or top_k is not None or (
            top_p is not None):
        logits = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    tt = torch.tensor([t, min(t + h, 1.0)], dtype=torch.float64)
    beta0, beta1 = (float(b) for b in path.scheduler.beta(tt))
    probs = torch.softmax(logits.float() if logits.dtype != torch.float64 else logits, -1)
    if not math.isfinite(beta1):
        return sample_weights(probs, generator)  # the last step: x̂₁ ~ p_{1|t}
    if method == "marginal":
        r = path.marginal_intensity(probs, x_t, beta0)
    else:
        x1_hat = sample_weights(probs, generator)
        r = path.conditional_intensity(x_t, x1_hat, beta0).to(probs.dtype)
    lam = r.sum(-1)
    p_jump = -torch.expm1(-(beta1 - beta0) * lam)
    jumps = torch.rand(x_t.shape, generator=generator, device=x_t.device,
                       dtype=p_jump.dtype) < p_jump
    where = jumps.reshape(-1).nonzero().squeeze(1)
    x_next = x_t.reshape(-1).long().clone()
    if where.numel():
        rows = r.reshape(-1, r.shape[-1]).index_select(0, where)
        x_next[where] = sample_weights(rows, generator)
    return x_next.view(x_t.shape)


class MetricInducedJump:
    """The τ-leaping step of a metric-induced path: ``step(x_t, logits, t, h) -> x_{t+h}``.

    :func:`metric_induced_step` with the ``path``, the ``space`` (``Discrete(K, "uniform")``)
    and keyword ``options`` of that function bound (others are a ValueError naming ``factor``
    and the allowed keys); ``generator`` drives every draw, and ``checked=False`` skips the
    per-call checks. This is what ``MetricInducedPath.jump_step`` returns.
    """

    __slots__ = ("path", "space", "options", "generator", "checked", "_kwargs")

    def __init__(self, path: MetricInducedPath, space: Discrete,
                 options: Mapping[str, Any] | None = None, *,
                 generator: torch.Generator | None = None, checked: bool = True,
                 factor: str | None = None) -> None:
        check_space(space, factor)
        self.options = check_step_options(options, METRIC_INDUCED_STEP_OPTIONS,
                                          "MetricInducedPath", factor)
        path.check_space(space)
        method = self.options.get("method", "marginal")
        if method not in STEP_METHODS:
            raise ValueError(f"method must be one of {STEP_METHODS}, got {method!r}")
        self.path, self.space = path, space
        self.generator, self.checked = generator, bool(checked)
        self._kwargs = self.options if checked else {
            "method": "marginal", "temperature": 1.0, "top_k": None, "top_p": None,
            **self.options}

    def __call__(self, x_t: Tensor, logits: Tensor, t: float, h: float) -> Tensor:
        if self.checked:
            return metric_induced_step(x_t, logits, t, h, self.path, self.space,
                                       generator=self.generator, **self._kwargs)
        return _step(x_t, logits, t, h, path=self.path, generator=self.generator,
                     **self._kwargs)

    def __repr__(self) -> str:
        return f"MetricInducedJump({self.path!r}, {self.space!r}, {self.options})"


class MetricInducedSolver(_TokenChainSolver):
    """Sample a metric-induced discrete flow: :func:`metric_induced_step` over a time grid.

    ``field(x_t, t, **cond)`` maps tokens int64 [B, ...] and times [B] to posterior logits
    [B, ..., K] (the same networks as for mixture paths). ``solver.nfe`` counts the network
    evaluations of the last call.
    """

    def __init__(self, field: Callable[..., Tensor], space: Discrete,
                 path: MetricInducedPath) -> None:
        rule = getattr(path, "jump_step", None)
        step = rule(space, checked=False) if callable(rule) else None  # checks the space
        if not isinstance(step, MetricInducedJump):
            raise TypeError(f"path must be a MetricInducedPath, got {type(path).__name__}")
        self.field, self.space, self.path = field, space, path
        self.nfe = 0

    @torch.no_grad()
    def sample(
        self,
        x0: Tensor,
        *,
        time_grid: Sequence[float] | Tensor | None = None,
        num_steps: int | None = None,
        step_size: float | None = None,
        method: str = "marginal",
        temperature: float | Tensor = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        return_intermediates: bool = False,
        generator: torch.Generator | None = None,
        return_solution: bool = False,
        **cond,
    ) -> Tensor | Solution:
        """Run the chain from ``x0`` (tokens at ``time_grid[0]``; uniform draws at t = 0).

        Grid options as for :class:`~flowmatch.solvers.ctmc.DiscreteSolver`: the grid defaults
        to [0, 1] and ``num_steps`` / ``step_size`` subdivide it uniformly. With
        ``return_intermediates`` the result is stacked at the ``time_grid`` points;
        ``return_solution`` wraps it in a :class:`~flowmatch.solvers.engine.Solution` with this
        call's ``nfe`` and step times.
        """
        options = {"method": method, "temperature": temperature, "top_k": top_k,
                   "top_p": top_p}
        step = discrete_step_for(self.path, self.space, options, generator=generator,
                                 checked=False)
        return self._run_chain(x0, step, time_grid=time_grid, num_steps=num_steps,
                               step_size=step_size, return_intermediates=return_intermediates,
                               return_solution=return_solution, cond=cond)

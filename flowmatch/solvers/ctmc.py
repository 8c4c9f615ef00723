"""Sampling discrete flows: τ-leaping steps of the factorised CTMC of a mixture path.

One step from t to t + h (a shared time for the whole batch) holds the network's posterior
p_{1|t}(· | x_t) fixed over the step, draws x̂₁ⁱ ~ p_{1|t}ⁱ for every token, and then lets each
token jump independently:

* **forward jump** to x̂₁ⁱ. Given x̂₁ the forward rate κ̇_s/(1 − κ_s) integrates in closed form,
  ∫_t^{t+h} κ̇_s/(1 − κ_s) ds = log[(1 − κ_t)/(1 − κ_{t+h})], so the jump probability is exactly
  1 − exp(−Λ) = (κ_{t+h} − κ_t)/(1 − κ_t). It reaches 1 on a step that ends at t = 1: every
  masked token is unmasked by then, whatever the grid, and the sampler never evaluates the
  singular rate at t = 1.
* **source jump** (only with ``eta``/``corrector``; see :mod:`flowmatch.paths.mixture`) to a
  fresh draw of p₀ (the mask token for the mask source) at rate b_t, together with the
  compensating extra forward rate b_t κ_t/(1 − κ_t); both are frozen at the left end of the step
  (first order). The two exponential clocks race: at most one jump per token and step.

A jump to the token a token already holds changes nothing, so no per-token rate tensor is ever
built, and x̂₁ is drawn only for the tokens whose forward clock rang (it is independent of the
clock): a step costs a few element-wise ops on all tokens plus one softmax, cumulative sum and
binary search on the jumping ones, on top of the network (``torch.multinomial`` is ≈ 10–20×
slower here; see ``../shared/notes/machine-gotchas.md`` and ``benchmarks/discrete_2d.py``).

:func:`ctmc_step` is the pure step; :class:`MixtureJump` binds it to a scheduler and options, and
is what a mixture path hands out as its step rule (``MixtureDiscretePath.jump_step``; see
:mod:`flowmatch.solvers.discrete_step`), for product solvers that advance several factors on one
time grid and for :class:`DiscreteSolver`, which runs it over a grid with a network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from flowmatch._jumps import (
    Corrector,
    jump_probabilities,
    kappa_at,
    sample_weights,
    source_jump_rate,
)
from flowmatch._validation import validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.solvers.discrete_step import (
    CTMC_STEP_OPTIONS,
    _TokenChainSolver,
    check_space,
    check_step_options,
    discrete_step_for,
)
from flowmatch.solvers.engine import Solution

__all__ = ["DiscreteSolver", "MixtureJump", "ctmc_step", "filter_logits", "sample_categorical",
           "jump_probabilities"]

ConvexScheduler = Any
"""A convex scheduler: anything with ``kappa(t)`` and ``d_kappa(t)`` (κ₀ = 0, κ₁ = 1)."""


def filter_logits(
    logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Temperature, top-k and nucleus (top-p) filtering of logits [..., K].

    ``temperature`` is a positive float or a tensor broadcastable to ``logits.shape[:-1]`` (one
    temperature per token). Tokens outside the top-k, or outside the smallest set whose
    probability reaches ``top_p``, get logit −inf (the most likely token is always kept). These
    are heuristics: they change the sampled distribution on purpose.
    """
    if torch.is_tensor(temperature):
        if validation_enabled() and bool((temperature <= 0).any()):
            raise ValueError("temperature must be positive everywhere, got minimum "
                             f"{float(temperature.min())}")
        logits = logits / temperature.to(logits.dtype).unsqueeze(-1)
    elif temperature != 1.0:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        logits = logits / temperature
    K = logits.shape[-1]
    if top_k is not None:
        if not (isinstance(top_k, int) and 1 <= top_k):
            raise ValueError(f"top_k must be an integer ≥ 1, got {top_k!r}")
        if top_k < K:
            kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        if top_p < 1:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # drop a token when the tokens ranked above it already reach top_p
            drop = (probs.cumsum(-1) - probs) >= top_p
            drop[..., 0] = False
            logits = logits.masked_fill(
                torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


def sample_categorical(logits: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of ``softmax(logits)`` [..., K] → int64 [...] (cumsum + searchsorted)."""
    # right=True in the search skips zero-probability tokens (filtered ones) even on a tie
    return sample_weights(torch.softmax(logits, dim=-1), generator)


def ctmc_step(
    x_t: Tensor,
    logits: Tensor,
    t: float,
    h: float,
    scheduler: ConvexScheduler,
    space: Discrete,
    *,
    eta: float = 0.0,
    corrector: Corrector | None = None,
    temperature: float | Tensor = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    keep_unmasked: bool = True,
    unmasking: str = "random",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Advance tokens ``x_t`` (int64, any shape) from time t to t + h; returns x_{t+h}.

    ``logits``: the network's posterior logits [*x_t.shape, K] at (x_t, t). ``t`` and ``h`` are
    floats (one time for all tokens; h > 0, t + h ≤ 1). ``eta`` / ``corrector`` add the
    marginal-preserving source jumps of :mod:`flowmatch.paths.mixture`. ``temperature``,
    ``top_k`` and ``top_p`` filter the posterior before x̂₁ is drawn (see :func:`filter_logits`).
    For the mask source with ``keep_unmasked``, unmasked tokens keep their value (their exact
    posterior) unless a source jump re-masks them.

    ``unmasking`` (mask source only): ``"random"`` is the CTMC above — each masked token unmasks
    independently with probability p = (κ_{t+h} − κ_t)/(1 − κ_t). ``"confidence"`` is the
    MaskGIT-style schedule: in each sequence (leading dimension) exactly ⌊p·n + u⌋ of the n
    masked tokens unmask (stochastic rounding, u ~ U[0, 1), so the expected count matches the
    CTMC), chosen as those whose drawn x̂₁ has the highest (unfiltered) posterior probability.
    It is a heuristic (it no longer simulates the path's CTMC) and excludes the corrector.
    """
    t, h = float(t), float(h)
    if validation_enabled():
        if not (0.0 <= t < 1.0 and h > 0.0 and t + h <= 1.0 + 1e-6):
            raise ValueError(f"need 0 ≤ t < 1, h > 0 and t + h ≤ 1, got t={t}, h={h}")
        space.check_point(x_t, "x_t")
        space.check_logits(logits, x_t)
    return _step(x_t, logits, t, h, scheduler, space, eta=eta, corrector=corrector,
                 temperature=temperature, top_k=top_k, top_p=top_p,
                 keep_unmasked=keep_unmasked, unmasking=unmasking, generator=generator)


def _step(x_t, logits, t, h, scheduler, space, *, eta, corrector, temperature, top_k, top_p,
          keep_unmasked, generator, unmasking="random"):
    k0, dk0 = kappa_at(scheduler, t)
    b = source_jump_rate(k0, dk0, t, eta=eta, corrector=corrector)
    p_fwd, p_src = jump_probabilities(scheduler, t, h, b)
    if unmasking != "random":
        filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        x1_hat = sample_categorical(filtered, generator=generator)
        # confidence is the network's own posterior probability, before any filtering
        return _confidence_unmask(x_t, logits, x1_hat, p_fwd, space, b, unmasking, generator)
    u = torch.rand(x_t.shape, generator=generator, device=x_t.device)
    jumps = u < p_fwd
    if keep_unmasked and space.source == "mask":
        jumps &= x_t == space.mask_token  # an unmasked token's x̂₁ is itself: nothing to draw
    # x̂₁ is independent of u, so drawing it only where the forward clock rang gives the same
    # law as drawing it everywhere — and with many steps few tokens ring in any one step
    where = jumps.reshape(-1).nonzero().squeeze(1)
    x_next = x_t.reshape(-1).clone()
    if where.numel():
        rows = logits.reshape(-1, logits.shape[-1]).index_select(0, where)
        if torch.is_tensor(temperature):
            temperature = temperature.expand(x_t.shape).reshape(-1).index_select(0, where)
        rows = filter_logits(rows, temperature=temperature, top_k=top_k, top_p=top_p)
        x_next[where] = sample_categorical(rows, generator=generator)
    x_next = x_next.view_as(x_t)
    if p_src > 0.0:
        to_source = (u >= p_fwd) & (u < p_fwd + p_src)
        x_next = torch.where(to_source, _source_draw(space, x_t, generator), x_next)
    return x_next


def _confidence_unmask(x_t, logits, x1_hat, p_fwd, space, b, unmasking, generator):
    if unmasking != "confidence":
        raise ValueError(f"unmasking must be 'random' or 'confidence', got {unmasking!r}")
    if space.source != "mask":
        raise ValueError("confidence unmasking needs the mask source, got "
                         f"source={space.source!r}")
    if b:
        raise ValueError("confidence unmasking does not combine with eta/corrector")
    if x_t.dim() < 2:
        raise ValueError("confidence unmasking needs tokens [B, L, ...] (it counts per "
                         f"sequence), got shape {tuple(x_t.shape)}")
    flat, flat_hat = x_t.flatten(1), x1_hat.flatten(1)
    masked = flat == space.mask_token
    n_masked = masked.sum(1)
    u = torch.rand(n_masked.shape, generator=generator, device=x_t.device)
    n_unmask = torch.minimum(torch.floor(p_fwd * n_masked + u), n_masked.to(u.dtype))
    logp = torch.log_softmax(logits, -1).flatten(1, -2)
    score = logp.gather(-1, flat_hat.unsqueeze(-1)).squeeze(-1).masked_fill(~masked,
                                                                             float("-inf"))
    rank = torch.argsort(torch.argsort(score, dim=1, descending=True), dim=1)
    chosen = masked & (rank < n_unmask.unsqueeze(1))
    return torch.where(chosen, flat_hat, flat).view_as(x_t)


def _source_draw(space: Discrete, like: Tensor, generator: torch.Generator | None) -> Tensor:
    if space.source == "mask":
        return torch.full_like(like, space.vocab_size)
    return space.sample_base(like.shape, generator=generator, device=like.device).to(like.dtype)


_STEP_DEFAULTS = {"eta": 0.0, "corrector": None, "temperature": 1.0, "top_k": None,
                  "top_p": None, "keep_unmasked": True, "unmasking": "random"}


class MixtureJump:
    """The τ-leaping step of a factorised mixture path: ``step(x_t, logits, t, h) -> x_{t+h}``.

    :func:`ctmc_step` with the ``scheduler`` (κ), the ``space`` and keyword ``options`` of
    :func:`ctmc_step` bound (others are a ValueError naming ``factor`` and the allowed keys);
    ``generator`` drives every draw. ``checked=False`` skips the per-call checks of t, h, the
    tokens and the logits (the draws are the same). This is what
    ``MixtureDiscretePath.jump_step`` returns; :meth:`jump_probabilities` gives the exact
    per-token jump probabilities of a step, which
    :func:`~flowmatch.solvers.exact.sampler_distribution` propagates.
    """

    __slots__ = ("scheduler", "space", "options", "generator", "checked", "_kwargs")

    def __init__(self, scheduler: ConvexScheduler, space: Discrete,
                 options: Mapping[str, Any] | None = None, *,
                 generator: torch.Generator | None = None, checked: bool = True,
                 factor: str | None = None) -> None:
        check_space(space, factor)
        self.options = check_step_options(options, CTMC_STEP_OPTIONS, "mixture path", factor)
        self.scheduler, self.space = scheduler, space
        self.generator, self.checked = generator, bool(checked)
        self._kwargs = self.options if checked else {**_STEP_DEFAULTS, **self.options}

    def __call__(self, x_t: Tensor, logits: Tensor, t: float, h: float) -> Tensor:
        if self.checked:
            return ctmc_step(x_t, logits, t, h, self.scheduler, self.space,
                             generator=self.generator, **self._kwargs)
        return _step(x_t, logits, t, h, self.scheduler, self.space, generator=self.generator,
                     **self._kwargs)

    def jump_probabilities(self, t: float, h: float) -> tuple[float, float]:
        """(P(forward jump), P(source jump)) of one token over [t, t + h] under these options."""
        k0, dk0 = kappa_at(self.scheduler, t)
        b = source_jump_rate(k0, dk0, t, eta=self.options.get("eta", 0.0),
                             corrector=self.options.get("corrector"))
        return jump_probabilities(self.scheduler, t, h, b)

    def __repr__(self) -> str:
        return f"MixtureJump({self.scheduler!r}, {self.space!r}, {self.options})"


class DiscreteSolver(_TokenChainSolver):
    """Sample a discrete flow: run :func:`ctmc_step` over a time grid with a posterior network.

    ``field(x_t, t, **cond)`` takes tokens x_t (int64 [B, ...], mask token included) and times
    t [B], and returns posterior logits [B, ..., K] over the data vocabulary. ``path`` is the
    :class:`MixtureDiscretePath` (or its convex scheduler) the network was trained with.
    ``solver.nfe`` counts the network evaluations of the last call.
    """

    def __init__(self, field: Callable[..., Tensor], space: Discrete, path: Any) -> None:
        if not isinstance(space, Discrete):
            raise TypeError(f"space must be a Discrete geometry, got {type(space).__name__}")
        rule = getattr(path, "jump_step", None)
        step = rule(space, checked=False) if callable(rule) else None
        if not isinstance(step, MixtureJump):
            raise TypeError("path must be a MixtureDiscretePath or a ConvexScheduler (whose "
                            f"jump_step is the mixture path's), got {type(path).__name__}")
        self.field = field
        self.space = space
        self.path = path
        self.scheduler = step.scheduler
        self.nfe = 0

    @torch.no_grad()
    def sample(
        self,
        x0: Tensor,
        *,
        time_grid: Sequence[float] | Tensor | None = None,
        num_steps: int | None = None,
        step_size: float | None = None,
        eta: float = 0.0,
        corrector: Corrector | None = None,
        temperature: float | Tensor = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        keep_unmasked: bool = True,
        unmasking: str = "random",
        return_intermediates: bool = False,
        generator: torch.Generator | None = None,
        return_solution: bool = False,
        **cond,
    ) -> Tensor | Solution:
        """Run the chain from x0 (tokens at ``time_grid[0]``, default the source at t = 0).

        The grid defaults to [0, 1]; ``num_steps`` (over the whole span) or ``step_size``
        subdivide each interval of ``time_grid`` uniformly. With ``return_intermediates`` the
        result is stacked at the ``time_grid`` points, shape [len(time_grid), *x0.shape];
        otherwise it is x at the last grid time. ``eta``, ``corrector``, ``temperature``,
        ``top_k``, ``top_p``, ``keep_unmasked`` and ``unmasking`` are those of
        :func:`ctmc_step`. ``cond`` goes to the network verbatim. ``return_solution`` returns a
        :class:`~flowmatch.solvers.engine.Solution` with the result, ``nfe`` and step times.
        """
        options = {"eta": eta, "corrector": corrector, "temperature": temperature,
                   "top_k": top_k, "top_p": top_p, "keep_unmasked": keep_unmasked,
                   "unmasking": unmasking}
        step = discrete_step_for(self.path, self.space, options, generator=generator,
                                 checked=False)
        return self._run_chain(x0, step, time_grid=time_grid, num_steps=num_steps,
                               step_size=step_size, return_intermediates=return_intermediates,
                               return_solution=return_solution, cond=cond)

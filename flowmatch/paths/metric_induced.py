"""Metric-induced discrete paths with kinetic-optimal rates (Shaul et al. 2024).

Each token moves on a vocabulary {0, …, K − 1} that carries a distance d(x, x₁) ≥ 0 with
d(x, x₁) = 0 exactly when x = x₁ (a user matrix [K, K], or |i − j| for ordinal tokens such as
pixel intensities or coordinate bins). The conditional path is a Boltzmann distribution around
the data token,

    p_t(x | x₁) = softmax_x(−β_t d(x, x₁)),                                              (1)

with an inverse temperature β_t that rises from β₀ = 0 (p₀ uniform: the source is the uniform
distribution over the vocabulary) to β_t → ∞ as t → 1 (p₁ = δ_{x₁}). Unlike the mixture path,
a token does not jump straight to x₁: it drifts through tokens that are ever closer to x₁.

**Kinetic-optimal rates.** The rate of a jump z → x (x ≠ z) given x₁,

    u_t(x, z | x₁) = β̇_t p_t(x | x₁) [d(z, x₁) − d(x, x₁)]₊,                            (2)

only moves probability towards x₁ and generates (1): Σ_z [u(x, z) p_t(z) − u(z, x) p_t(x)] =
β̇_t p_t(x) (E_{p_t}[d] − d(x, x₁)) = ∂_t p_t(x | x₁) (the Kolmogorov forward equation; tested
in tests/test_metric_induced_path.py). A network that predicts the posterior p_{1|t}(x₁ⁱ | x_t)
(logits over the K data tokens, as for :class:`~flowmatch.paths.mixture.MixtureDiscretePath`)
gives the marginal rates by linearity, u_tⁱ(x, z) = Σ_{x₁} p_{1|t}ⁱ(x₁ | x_t) u_t(x, z | x₁), so
the same networks, the cross-entropy loss
(:func:`~flowmatch.training.discrete_loss.discrete_cross_entropy` with a ``"uniform"``
:class:`~flowmatch.geometry.discrete.Discrete` space) and a CTMC sampler carry over. All rates
are β̇_t times a function of β_t; we call that function the *jump intensity* r = u/β̇.

**Scheduler.** :class:`PowerBetaScheduler` uses β_t = c (t/(1 − t))^a (a power of the odds).
The path is close to uniform while β_t · d ≪ 1 for the typical distance d and close to δ_{x₁}
once β_t · d_min ≫ 1, so c sets *when* the path moves on the scale of the metric, and a how
spread out in t that transition is: log β_t = log c + a logit(t). For d = |i − j| on 128 bins
the data-dependent part runs from β ≈ 1/128 (the width of the vocabulary) to β ≈ 3 (one bin);
c = 0.1, a = 1.5 puts that window at t ≈ 0.15 … 0.9 (used for the 2D checkerboard), where
c = a = 1 would spend t < 0.1 on it and t > 0.75 on a path already within a bin of x₁. The
negative ELBO does not depend on the scheduler at all (every rate is β̇_t × a function of β_t,
see :func:`metric_induced_kl_loss`); the scheduler only places the training times and the
sampler's grid.

**Sampler** (:mod:`flowmatch.solvers.metric_induced`). :func:`metric_induced_step` freezes the
posterior and p_t at the left end of a step
[t, t + h] and integrates β̇ exactly: token i jumps with probability 1 − exp(−(β_{t+h} − β_t) λ)
for its total intensity λ = Σ_{x ≠ x_t} r(x, x_t), to a target drawn ∝ r(·, x_t). A step that ends
at t = 1 (β = ∞) draws every token from the posterior instead: if x_t ~ p_t, then x̂₁ ~
p_{1|t}(· | x_t) has exactly the data law, whatever t.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from flowmatch._jumps import sample_weights as _sample_weights
from flowmatch._validation import check_time, expand_time_like, validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.paths.base import PathSample, ProbPath

# bound on the elements of one [n, K, K] temporary of the per-token intensity (≈ 32 MB in float64)
_CHUNK_ELEMENTS = 1 << 22


# -- scheduler -----------------------------------------------------------------------------------
class BetaScheduler(ABC):
    """Inverse temperature β_t of a metric-induced path: β₀ = 0, increasing, β_t → ∞ at t = 1.

    ``beta(t)`` and ``d_beta(t)`` act element-wise on a tensor t in [0, 1] (any shape).
    """

    @abstractmethod
    def beta(self, t: Tensor) -> Tensor:
        """β_t, element-wise."""

    @abstractmethod
    def d_beta(self, t: Tensor) -> Tensor:
        """dβ_t/dt, element-wise."""


class PowerBetaScheduler(BetaScheduler):
    """β_t = c (t/(1 − t))^a, β̇_t = c a t^{a−1}/(1 − t)^{a+1} (β₁ = ∞; β̇₀ = ∞ when a < 1).

    ``c`` > 0 scales β against the distances of the metric; ``a`` > 0 sets how long the path
    takes to concentrate (log β_t = log c + a logit t). See the module docstring for a choice.
    """

    def __init__(self, c: float = 1.0, a: float = 1.0) -> None:
        for name, v in (("c", c), ("a", a)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        self.c, self.a = float(c), float(a)

    def beta(self, t: Tensor) -> Tensor:
        return self.c * (t / (1 - t)).pow(self.a)  # 1/0 = inf at t = 1: p₁ = δ_{x₁}

    def d_beta(self, t: Tensor) -> Tensor:
        return self.c * self.a * t.pow(self.a - 1) / (1 - t).pow(self.a + 1)

    def __repr__(self) -> str:
        return f"PowerBetaScheduler(c={self.c:g}, a={self.a:g})"


def ordinal_distance(vocab_size: int, power: float = 1.0) -> Tensor:
    """d(i, j) = |i − j|^power on ordinal tokens {0, …, K − 1}: float64 [K, K]."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer ≥ 2, got {vocab_size!r}")
    if not (math.isfinite(power) and power > 0):
        raise ValueError(f"power must be positive and finite, got {power!r}")
    i = torch.arange(vocab_size, dtype=torch.float64)
    return (i[:, None] - i[None, :]).abs().pow(power)


def _neg_beta_d(beta: Tensor | float, d: Tensor) -> Tensor:
    """−β d with −∞ · 0 read as 0 (β = ∞ at t = 1 leaves only the zero-distance entry)."""
    return torch.where(d == 0, torch.zeros((), dtype=d.dtype, device=d.device), -beta * d)


# -- the path ------------------------------------------------------------------------------------
class MetricInducedPath(ProbPath):
    """The path p_t(x | x₁) = softmax_x(−β_t d(x, x₁)) of (1), applied to every token.

    ``distance`` is the matrix d[x, x₁] of shape [K, K] (state first, data token second): finite,
    zero on the diagonal, positive off it (symmetry is not needed). ``sample(x0, x1, t)`` ignores
    x0 — the conditional path depends on x₁ only, its source is uniform — so pair it with
    ``Discrete(K, "uniform")``. ``dx_t`` is None: the training target is x₁ itself, and the
    network outputs posterior logits [*x.shape, K] exactly as for the mixture path.
    """

    def __init__(self, distance: Tensor, scheduler: BetaScheduler | None = None) -> None:
        if not torch.is_tensor(distance):
            raise TypeError(f"distance must be a tensor [K, K], got {type(distance).__name__}")
        if distance.dim() != 2 or distance.shape[0] != distance.shape[1] or (
                distance.shape[0] < 2):
            raise ValueError("distance must be a square tensor [K, K] with K ≥ 2, got shape "
                             f"{tuple(distance.shape)}")
        d = distance.detach().to(torch.float64).cpu()
        if not bool(torch.isfinite(d).all()):
            raise ValueError("distance must be finite, but it holds "
                             f"{int((~torch.isfinite(d)).sum())} NaN/inf entries")
        diag = d.diagonal()
        if bool((diag != 0).any()):
            raise ValueError(f"distance must be zero on the diagonal (d(x, x) = 0), got "
                             f"max |d(x, x)| = {float(diag.abs().max()):g}")
        off = d[~torch.eye(d.shape[0], dtype=torch.bool)]
        if bool((off <= 0).any()):
            raise ValueError("distance must be positive off the diagonal (d(x, x₁) > 0 for "
                             f"x ≠ x₁, so p₁ = δ_{{x₁}}), got minimum {float(off.min()):g}")
        if scheduler is None:
            scheduler = PowerBetaScheduler()
        if not isinstance(scheduler, BetaScheduler):
            raise TypeError("scheduler must be a BetaScheduler (β₀ = 0, β₁ = ∞), got "
                            f"{type(scheduler).__name__}")
        self.distance = d
        self.scheduler = scheduler
        self._cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    @classmethod
    def ordinal(cls, vocab_size: int, scheduler: BetaScheduler | None = None, *,
                power: float = 1.0) -> MetricInducedPath:
        """The path for ordinal tokens, d(i, j) = |i − j|^power (see :func:`ordinal_distance`)."""
        return cls(ordinal_distance(vocab_size, power), scheduler)

    @property
    def vocab_size(self) -> int:
        return self.distance.shape[0]

    def __repr__(self) -> str:
        return f"MetricInducedPath(K={self.vocab_size}, {self.scheduler!r})"

    # -- helpers ---------------------------------------------------------------------------
    def _d(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (dtype, torch.device(device))
        if key not in self._cache:
            self._cache[key] = self.distance.to(device=device, dtype=dtype)
        return self._cache[key]

    def _beta_like(self, t: Tensor | float, x: Tensor, *, derivative: bool = False) -> Tensor:
        """β_t (or β̇_t) in float64, shaped to broadcast against tokens x [B, ...]."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        t = expand_time_like(t, x)
        return self.scheduler.d_beta(t) if derivative else self.scheduler.beta(t)

    def _check_tokens(self, x: Tensor, name: str) -> None:
        if not validation_enabled():
            return
        if not torch.is_tensor(x) or x.is_floating_point() or x.is_complex() or (
                x.dtype == torch.bool):
            raise ValueError(f"{name} must be an integer tensor of token ids, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(f"{name} must hold tokens in [0, {self.vocab_size - 1}], but its "
                             f"values range over [{int(x.min())}, {int(x.max())}]")

    def jump_step(
        self,
        space: Discrete,
        options: Mapping[str, Any] | None = None,
        *,
        generator: torch.Generator | None = None,
        checked: bool = True,
        factor: str | None = None,
    ) -> Any:
        """The τ-leaping step ``step(x_t, logits, t, h) -> x_{t+h}`` of this path's marginal CTMC.

        The step rule samplers ask the path for (``MetricInducedSolver``, ``ProductSolver``):
        :class:`~flowmatch.solvers.metric_induced.MetricInducedJump`, which freezes the
        intensities at t and integrates β̇ exactly. ``options`` are keywords of
        :func:`~flowmatch.solvers.metric_induced.metric_induced_step` (``method``,
        ``temperature``, ``top_k``, ``top_p``); anything else is a ``ValueError`` naming
        ``factor`` and the allowed keys. ``space`` must be ``Discrete(K, "uniform")``.
        ``checked=False`` skips the per-call checks of t, h, tokens and logits.
        """
        from flowmatch.solvers.metric_induced import MetricInducedJump  # loaded on use

        return MetricInducedJump(self, space, options, generator=generator, checked=checked,
                                 factor=factor)

    def check_space(self, space: Discrete) -> None:
        """Raise unless ``space`` is ``Discrete(K, "uniform")`` (β₀ = 0 means p₀ is uniform)."""
        if not isinstance(space, Discrete):
            raise TypeError(f"space must be a Discrete geometry, got {type(space).__name__}")
        if space.source != "uniform" or space.vocab_size != self.vocab_size:
            raise ValueError(f"a metric-induced path over K={self.vocab_size} tokens starts at "
                             f"the uniform distribution: space must be Discrete("
                             f"{self.vocab_size}, 'uniform'), got {space}")

    # -- the conditional path --------------------------------------------------------------
    def log_probs(self, x1: Tensor, t: Tensor | float) -> Tensor:
        """log p_t(· | x₁ⁱ) for every token: float64 [*x1.shape, K]. ``t``: scalar or [B]."""
        self._check_tokens(x1, "x1")
        beta = self._beta_like(t, x1).unsqueeze(-1)
        d_to_x1 = self._d(torch.float64, x1.device).t()[x1.long()]  # d(·, x₁ⁱ)
        return torch.log_softmax(_neg_beta_d(beta, d_to_x1), dim=-1)

    def sample(self, x0: Tensor | None, x1: Tensor, t: Tensor, *,
               generator: torch.Generator | None = None) -> PathSample:
        """x_tⁱ ~ softmax(−β_t d(·, x₁ⁱ)) independently per token; ``t`` has shape [B].

        ``x0`` is accepted for the :class:`ProbPath` contract and ignored (None is allowed);
        when given it must have x1's shape. At t = 1, x_t = x1.
        """
        if validation_enabled():
            if x1.dim() == 0:
                raise ValueError("x1 must have a leading batch dimension, got a scalar")
            if x0 is not None and x0.shape != x1.shape:
                raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} "
                                 f"and {tuple(x1.shape)}")
            check_time("t", t, x1.shape[0])
        probs = self.log_probs(x1, t).exp()
        x_t = _sample_weights(probs, generator)
        return PathSample(x0=x0, x1=x1, t=t, x_t=x_t, dx_t=None)

    def log_likelihood(self, x_t: Tensor, t: Tensor | float, *, normalised: bool = True
                       ) -> Tensor:
        """log p_t(x_tⁱ | x₁ⁱ = y) for every data token y: float64 [*x_t.shape, K].

        ``normalised=False`` drops the normaliser −log Z_t(y) = −log Σ_x exp(−β_t d(x, y)),
        which depends on (t, y) only (a network that sees t can absorb it, see
        :class:`LikelihoodOffset`) and costs K² per time.
        """
        self._check_tokens(x_t, "x_t")
        d = self._d(torch.float64, x_t.device)
        beta = self._beta_like(t, x_t).unsqueeze(-1)
        out = _neg_beta_d(beta, d[x_t.long()])  # −β d(x_t, y)
        if normalised:
            # one β per batch row (or a single one); a sampler's batch shares one time
            b_unique, inverse = torch.unique(beta.reshape(-1), return_inverse=True)
            log_z = torch.logsumexp(_neg_beta_d(b_unique.reshape(-1, 1, 1), d), dim=1)
            out = out - log_z[inverse].reshape(*beta.shape[:-1], d.shape[0])
        return out

    # -- jump intensities (rates / β̇) ------------------------------------------------------
    def conditional_intensity(self, x_t: Tensor, x1: Tensor, beta: Tensor | float) -> Tensor:
        """r(y, x_t | x₁) = p_β(y | x₁) [d(x_t, x₁) − d(y, x₁)]₊: [*x_t.shape, K], zero at y = x_t.

        ``beta``: a float or a tensor broadcastable to x_t's shape (per-token β_t).
        """
        d = self._d(torch.float64, x_t.device)
        beta = torch.as_tensor(beta, dtype=torch.float64, device=x_t.device).unsqueeze(-1)
        x, x1 = x_t.long(), x1.long()
        d_to_x1 = d.t()[x1]  # d(y, x₁) over y
        p = torch.softmax(_neg_beta_d(beta, d_to_x1), dim=-1)
        return p * (d[x, x1].unsqueeze(-1) - d_to_x1).clamp_min(0)

    def marginal_intensity(self, probs: Tensor, x_t: Tensor, beta: Tensor | float) -> Tensor:
        """Σ_{x₁} p_{1|t}(x₁) r(y, x_t | x₁) for posterior ``probs`` [*x_t.shape, K].

        Costs O(K²) per token. With one β for all tokens (a float, or a tensor of one value)
        the tokens are grouped by state and each group is one matrix product; per-token β
        builds [n, K, K] temporaries in chunks. Differentiable in ``probs``.
        """
        K = self.vocab_size
        dtype = probs.dtype if probs.dtype == torch.float64 else torch.float32
        probs = probs.to(dtype)
        beta = torch.as_tensor(beta, dtype=torch.float64, device=x_t.device)
        q = probs.reshape(-1, K)
        x = x_t.reshape(-1).long()
        if beta.numel() == 1 or bool((beta == beta.reshape(-1)[0]).all()):
            out = self._intensity_shared(q, x, float(beta.reshape(-1)[0]))
        else:
            b = beta.expand(x_t.shape).reshape(-1)
            out = self._intensity_per_token(q, x, b)
        return out.reshape(*x_t.shape, K)

    def _intensity_shared(self, q: Tensor, x: Tensor, beta: float) -> Tensor:
        d = self._d(torch.float64, q.device)
        # P[y, x₁] = p_β(y | x₁): each column is a softmax over the states y
        p = torch.softmax(_neg_beta_d(beta, d), dim=0)
        dq = d.to(q.dtype)
        p = p.to(q.dtype)
        order = torch.argsort(x)
        values, counts = torch.unique_consecutive(x[order], return_counts=True)
        pieces = []
        for v, rows in zip(values.tolist(), q[order].split(counts.tolist()), strict=True):
            # A[y, x₁] = P[y, x₁] [d(v, x₁) − d(y, x₁)]₊ for the tokens sitting at state v
            a = p * (dq[v].unsqueeze(0) - dq).clamp_min(0)
            pieces.append(rows @ a.t())
        out = torch.cat(pieces) if pieces else q.new_zeros(q.shape)
        return out.index_select(0, torch.argsort(order))

    def _intensity_per_token(self, q: Tensor, x: Tensor, beta: Tensor) -> Tensor:
        K = self.vocab_size
        d64 = self._d(torch.float64, q.device)
        dq = d64.to(q.dtype)
        step = max(1, _CHUNK_ELEMENTS // (K * K))
        pieces = []
        for s in range(0, x.shape[0], step):
            b = beta[s:s + step].reshape(-1, 1, 1)
            p = torch.softmax(_neg_beta_d(b, d64), dim=1).to(q.dtype)  # [n, y, x₁]
            gap = (dq[x[s:s + step]].unsqueeze(1) - dq.unsqueeze(0)).clamp_min(0)
            pieces.append(torch.einsum("nyk,nk->ny", p * gap, q[s:s + step]))
        return torch.cat(pieces) if pieces else q.new_zeros(q.shape)

    # -- rates -----------------------------------------------------------------------------
    def _rates_from_intensity(self, r: Tensor, x_t: Tensor, d_beta: Tensor) -> Tensor:
        u = d_beta.to(r.dtype).unsqueeze(-1) * r
        diag = -u.sum(-1, keepdim=True)
        return u.scatter(-1, x_t.long().unsqueeze(-1), diag)

    def _finite_d_beta(self, t: Tensor | float, x: Tensor) -> Tensor:
        db = self._beta_like(t, x, derivative=True)
        if validation_enabled() and not bool(torch.isfinite(db).all()):
            raise ValueError(f"rates need a finite β̇_t: t must lie in [0, 1) (and in (0, 1) "
                             f"for {self.scheduler!r} when a < 1), got t={t}")
        return db

    def conditional_rates(self, x_t: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
        """u_t(y, x_t | x₁) of (2) over y: [*x_t.shape, K]; rows sum to zero.

        ``t``: a float or [B] (aligned with the leading dimension) with finite β̇_t.
        """
        self._check_tokens(x_t, "x_t")
        self._check_tokens(x1, "x1")
        if validation_enabled() and x_t.shape != x1.shape:
            raise ValueError(f"x_t and x1 must have the same shape, got {tuple(x_t.shape)} and "
                             f"{tuple(x1.shape)}")
        d_beta = self._finite_d_beta(t, x_t)
        r = self.conditional_intensity(x_t, x1, self._beta_like(t, x_t))
        return self._rates_from_intensity(r, x_t, d_beta)

    def rates(self, logits: Tensor, x_t: Tensor, t: float | Tensor, space: Discrete) -> Tensor:
        """Marginal jump rates u_t(y | x_t) = Σ_{x₁} p_{1|t}(x₁ | x_t) u_t(y, x_t | x₁).

        ``logits``: posterior logits [*x_t.shape, K]; ``t``: a shared time in [0, 1). Returns
        rates [*x_t.shape, K]: off-diagonal ≥ 0, each row sums to zero (the diagonal holds minus
        the total jump rate) — the same contract as ``MixtureDiscretePath.rates``.
        """
        t = float(t)
        self.check_space(space)
        space.validate(x_t, "x_t")
        space.check_logits(logits, x_t)
        if not 0.0 <= t < 1.0:
            raise ValueError(f"rates need a time t in [0, 1), got {t}")
        d_beta = self._finite_d_beta(t, x_t)
        beta = float(self.scheduler.beta(torch.tensor(t, dtype=torch.float64)))
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        r = self.marginal_intensity(probs, x_t, beta)
        return self._rates_from_intensity(r, x_t, d_beta.expand(x_t.shape))


# -- posterior networks --------------------------------------------------------------------------
class LikelihoodOffset(nn.Module):
    """A posterior network with the path's likelihood built in: net(x_t, t) − β_t d(x_t, ·).

    The exact posterior of token i is p_t(x_tⁱ | x₁ⁱ) times a factor that does not depend on x_tⁱ
    (for any target), so adding log p_t(x_tⁱ | y) = −β_t d(x_tⁱ, y) − log Z_t(y) loses nothing; the
    y-only normaliser is left to the network, which sees t. As β_t → ∞ the posterior then puts
    mass e^{−β d} off x_tⁱ by construction, which keeps the negative ELBO finite (a plain network
    whose posterior keeps a fixed error ε off x_t has intensity ∝ β̇_t ε, not integrable at t = 1).
    """

    def __init__(self, net: nn.Module | Callable[..., Tensor], path: MetricInducedPath) -> None:
        super().__init__()
        if not isinstance(path, MetricInducedPath):
            raise TypeError(f"path must be a MetricInducedPath, got {type(path).__name__}")
        self.net, self.path = net, path

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        logits = self.net(x, t, **cond)
        return logits + self.path.log_likelihood(x, t, normalised=False).to(logits.dtype)


class MetricExactPosterior(nn.Module):
    """The exact posterior p_{1|t}(x₁ⁱ | x_t) of a metric-induced path for a tabulated target.

    ``target``: the joint law q(x₁) of L tokens as a table [K] * L (normalised). Then
    p(x₁ | x_t) ∝ q(x₁) Π_i p_t(x_tⁱ | x₁ⁱ), and token i's posterior is its marginal. The cost is
    K^L per sample: a reference for tests and for sampler studies without a network.
    """

    def __init__(self, target: Tensor, path: MetricInducedPath) -> None:
        super().__init__()
        K = path.vocab_size
        if target.dim() < 1 or any(s != K for s in target.shape):
            raise ValueError(f"target must have shape [{K}] * L, got {tuple(target.shape)}")
        if bool((target < 0).any()) or abs(float(target.sum()) - 1) > 1e-6:
            raise ValueError("target must be a normalised non-negative probability table, got "
                             f"sum {float(target.sum()):.6g}, min {float(target.min()):.3g}")
        self.length, self.K, self.path = target.dim(), K, path
        self.register_buffer("log_q", target.double().log())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        B, L, K = x.shape[0], self.length, self.K
        if x.shape != (B, L) or t.shape != (B,):
            raise ValueError(f"x must be [B, {L}] and t [B], got {tuple(x.shape)}, "
                             f"{tuple(t.shape)}")
        loglik = self.path.log_likelihood(x, t)  # [B, L, K]
        step = max(1, _CHUNK_ELEMENTS // K ** L)
        out = []
        for s in range(0, B, step):
            ll = loglik[s:s + step]
            joint = self.log_q.unsqueeze(0).expand(ll.shape[0], *([K] * L)).clone()
            for i in range(L):
                shape = [ll.shape[0]] + [1] * L
                shape[1 + i] = K
                joint = joint + ll[:, i].reshape(shape)
            marg = [torch.logsumexp(joint, dim=[1 + j for j in range(L) if j != i])
                    if L > 1 else joint for i in range(L)]
            out.append(torch.stack(marg, dim=1))
        logits = torch.cat(out)
        return logits - torch.logsumexp(logits, -1, keepdim=True)

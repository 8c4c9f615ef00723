"""Factorised mixture paths for discrete flow matching (Gat et al. 2024; Campbell et al. 2024).

Every token i moves independently from its source value x₀ⁱ to its data value x₁ⁱ:

    p_t(xⁱ | x₀, x₁) = κ_t δ(xⁱ, x₁ⁱ) + (1 − κ_t) δ(xⁱ, x₀ⁱ),

with κ from any :class:`~flowmatch.paths.schedulers.ConvexScheduler` (κ₀ = 0, κ₁ = 1). The
conditional jump rate that generates this path is u_t(y | x, x₁) = κ̇_t/(1 − κ_t)
[δ(y, x₁) − δ(y, x)], so a network that predicts the posterior p_{1|t}(x₁ⁱ | x_t) (logits over
the K data tokens) gives the marginal rates by linearity:

    u_tⁱ(y | x_t) = κ̇_t/(1 − κ_t) [p_{1|t}ⁱ(y | x_t) − δ(y, x_tⁱ)].                     (1)

**Stochasticity that leaves the marginals unchanged.** Add b_t R_t with

    R_t(y | x) = κ_t/(1 − κ_t) [p_{1|t}(y | x) − δ(y, x)] + [p₀(y) − δ(y, x)],             (2)

i.e. jumps back to a fresh source draw at rate b_t plus extra forward jumps that compensate
them. Conditionally on x₁, (2) is in detailed balance with p_t(· | x₀-marginalised, x₁) —
p_t(x) R(x → y) = p_t(y) R(y → x) — so it carries no probability flux and the marginals p_t are
those of (1) for any b_t ≥ 0. Two common parametrisations of b_t:

* Campbell et al.'s η: b_t = η (for the mask source and κ_t = t, the unmask rate becomes
  (1 + η t)/(1 − t) and the re-mask rate η, as in their paper);
* Gat et al.'s corrector coefficient c_t on the divergence-free term c_t (û_t − ǔ_t), with the
  backward rate ǔ_t(y | x) = κ̇_t/κ_t [δ(y, x) − p₀(y)]: this is (2) with b_t = c_t κ̇_t/κ_t.

**Mask source.** On the mask path an unmasked token already equals x₁ⁱ, so the exact posterior
there is δ(·, x_tⁱ). With ``keep_unmasked=True`` (the default) the library uses that known
posterior for unmasked tokens instead of the network's output (the carry-over / "SUBS"
parametrisation of masked diffusion): unmasked tokens never change under (1), and the losses
only see masked tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from flowmatch._jumps import Corrector, kappa_at, source_jump_rate
from flowmatch._validation import check_time, validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.paths.base import PathSample, ProbPath
from flowmatch.paths.schedulers import ConvexScheduler

# κ_t, κ̇_t at one time (the shared helper; the old private name stays for callers)
_kappa = kappa_at


class MixtureDiscretePath(ProbPath):
    """The factorised mixture path p_t = κ_t δ_{x₁} + (1 − κ_t) δ_{x₀} on a :class:`Discrete` space.

    ``sample(x0, x1, t)`` keeps each token of x₁ with probability κ_t and the source token
    otherwise; ``dx_t`` is None (the training target of discrete flow matching is x₁ itself).
    """

    def __init__(self, scheduler: ConvexScheduler) -> None:
        if not isinstance(scheduler, ConvexScheduler):
            raise TypeError(
                "a mixture path needs a ConvexScheduler (κ_t with κ_0 = 0, κ_1 = 1), got "
                f"{type(scheduler).__name__}"
            )
        self.scheduler = scheduler

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, *,
               generator: torch.Generator | None = None) -> PathSample:
        """x_tⁱ = x₁ⁱ with probability κ_t, else x₀ⁱ (independently per token).

        ``x0`` and ``x1`` are integer tensors of the same shape [B, ...]; ``t`` has shape [B].
        """
        if validation_enabled():
            if x0.shape != x1.shape:
                raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} "
                                 f"and {tuple(x1.shape)}")
            if x0.is_floating_point() or x1.is_floating_point():
                raise ValueError("x0 and x1 must be integer token tensors, got dtypes "
                                 f"{x0.dtype} and {x1.dtype}")
            if x1.dim() == 0:
                raise ValueError("x1 must have a leading batch dimension, got a scalar")
            check_time("t", t, x1.shape[0])
        kappa = self.scheduler.kappa(t.to(torch.float32))
        kappa = kappa.reshape(-1, *([1] * (x1.dim() - 1))) if kappa.dim() else kappa
        keep_data = torch.rand(x1.shape, generator=generator, device=x1.device) < kappa
        x_t = torch.where(keep_data, x1, x0)
        return PathSample(x0=x0, x1=x1, t=t, x_t=x_t, dx_t=None)

    # -- posterior and rates -----------------------------------------------------------------
    def rates(
        self,
        logits: Tensor,
        x_t: Tensor,
        t: float | Tensor,
        space: Discrete,
        *,
        eta: float = 0.0,
        corrector: Corrector | None = None,
        keep_unmasked: bool = True,
    ) -> Tensor:
        """Marginal jump rates u_t(y | x_t) over the ``space.num_states`` states, (1) + b_t (2).

        ``logits``: posterior logits [*x_t.shape, K]; ``t``: a shared time in [0, 1).
        Returns rates of shape [*x_t.shape, num_states]: off-diagonal entries are ≥ 0 and each
        row sums to zero (the diagonal holds minus the total jump rate). This dense form is for
        analysis and tests; the sampler never materialises it.
        """
        t = float(t)
        space.check_logits(logits, x_t)
        space.validate(x_t, "x_t")
        if not 0.0 <= t < 1.0:
            raise ValueError(f"rates need a time t in [0, 1), got {t}")
        k, dk = _kappa(self.scheduler, t)
        b = source_jump_rate(k, dk, t, eta=eta, corrector=corrector)
        probs = posterior_probs(logits, x_t, space, keep_unmasked=keep_unmasked)
        probs = _pad_states(probs, space.num_states)
        delta = F.one_hot(x_t.long(), space.num_states).to(probs.dtype)
        forward = dk / (1.0 - k) + (b * k / (1.0 - k) if b else 0.0)
        u = forward * (probs - delta)
        if b:
            p0 = space.source_probs.to(device=probs.device, dtype=probs.dtype)
            u = u + b * (p0 - delta)
        return u

    # -- sampling ------------------------------------------------------------------------------
    def jump_step(
        self,
        space: Discrete,
        options: Mapping[str, Any] | None = None,
        *,
        generator: torch.Generator | None = None,
        checked: bool = True,
        factor: str | None = None,
    ) -> Any:
        """The τ-leaping step ``step(x_t, logits, t, h) -> x_{t+h}`` of this path's CTMC.

        This is the step rule every sampler asks the path for (``DiscreteSolver``,
        ``ProductSolver``, ``sampler_distribution``): the exact jump probabilities of (1) and
        (2) over [t, t + h], with the network's posterior frozen at t —
        :class:`~flowmatch.solvers.ctmc.MixtureJump`. ``options`` are keywords of
        :func:`~flowmatch.solvers.ctmc.ctmc_step` (``eta``, ``corrector``, ``temperature``,
        ``top_k``, ``top_p``, ``keep_unmasked``, ``unmasking``); anything else is a
        ``ValueError`` naming ``factor`` and the allowed keys. ``checked=False`` skips the
        per-call checks of t, h, tokens and logits (for grid loops that check them once).
        """
        from flowmatch.solvers.ctmc import MixtureJump  # the sampler's kernel, loaded on use

        return MixtureJump(self.scheduler, space, options, generator=generator, checked=checked,
                           factor=factor)


def posterior_log_probs(logits: Tensor, x_t: Tensor, space: Discrete, *,
                        keep_unmasked: bool = True) -> Tensor:
    """log p_{1|t}(· | x_t) over the K data tokens, shape [*x_t.shape, K].

    For the mask source with ``keep_unmasked``, unmasked tokens get the exact posterior
    δ(·, x_tⁱ) (log-probability 0 on x_tⁱ, −inf elsewhere) whatever the network says.
    """
    logp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16)
                             else logits, dim=-1)
    if keep_unmasked and space.source == "mask":
        unmasked = x_t != space.mask_token
        known = torch.full_like(logp, float("-inf"))
        known.scatter_(-1, x_t.clamp_max(space.vocab_size - 1).long().unsqueeze(-1), 0.0)
        logp = torch.where(unmasked.unsqueeze(-1), known, logp)
    return logp


def posterior_probs(logits: Tensor, x_t: Tensor, space: Discrete, *,
                    keep_unmasked: bool = True) -> Tensor:
    """p_{1|t}(· | x_t) over the K data tokens (see :func:`posterior_log_probs`)."""
    return posterior_log_probs(logits, x_t, space, keep_unmasked=keep_unmasked).exp()


def _pad_states(probs: Tensor, num_states: int) -> Tensor:
    """Extend a distribution over the K data tokens by zeros for the mask state."""
    extra = num_states - probs.shape[-1]
    return F.pad(probs, (0, extra)) if extra else probs

"""Losses and likelihood bounds for discrete flow matching on mixture paths.

The network predicts the posterior p_{1|t}(x₁ⁱ | x_t) as logits [*x.shape, K]. Two training
losses are offered:

* cross-entropy −log p_{1|t}(x₁ⁱ | x_t), averaged over tokens (and times t ~ U[0, 1]);
* the generalised KL of mixture paths (Gat et al. 2024; Shaul et al. 2024), per token

      ℓ_t = −κ̇_t/(1 − κ_t) [p_{1|t}(x_tⁱ) − δ(x₁ⁱ, x_tⁱ) + (1 − δ(x₁ⁱ, x_tⁱ)) log p_{1|t}(x₁ⁱ)],

  which is the KL rate between the conditional CTMC given x₁ and the model's CTMC (1) of
  :mod:`flowmatch.paths.mixture`. Summed over tokens and integrated over t ∈ [0, 1] it is an
  upper bound on −log p_θ(x₁) (a negative ELBO; for the mask source it is the MD4/MDLM bound):
  :func:`discrete_nelbo` estimates it in nats.

Both use the ``keep_unmasked`` parametrisation of :mod:`flowmatch.paths.mixture` for the mask
source (unmasked tokens have the exact posterior δ(·, x_tⁱ) and contribute zero), so the bound
matches what :class:`~flowmatch.solvers.ctmc.DiscreteSolver` samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowmatch._validation import validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.paths.mixture import MixtureDiscretePath


def _check(logits: Tensor, x1: Tensor, x_t: Tensor, space: Discrete) -> None:
    if not validation_enabled():
        return
    space.check_point(x1, "x1", allow_mask=False)
    space.check_point(x_t, "x_t")
    if x1.shape != x_t.shape:
        raise ValueError(f"x1 and x_t must have the same shape, got {tuple(x1.shape)} and "
                         f"{tuple(x_t.shape)}")
    space.check_logits(logits, x_t)


def _reduce(per_token: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_token.mean()
    if reduction == "sum":
        return per_token.sum()
    if reduction == "none":
        return per_token
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def discrete_cross_entropy(logits: Tensor, x1: Tensor, x_t: Tensor, space: Discrete, *,
                           keep_unmasked: bool = True, reduction: str = "mean") -> Tensor:
    """−log p_{1|t}(x₁ⁱ | x_t) per token (nats), reduced over all tokens.

    ``logits`` [*x1.shape, K]; ``x1`` data tokens; ``x_t`` the path sample (mask allowed).
    """
    _check(logits, x1, x_t, space)
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, x1.long().unsqueeze(-1)).squeeze(-1)
    if keep_unmasked and space.source == "mask":
        # the exact posterior δ(·, x_t) on unmasked tokens: 0 nats when x1 = x_t (always, on
        # the mask path), +inf otherwise — gathered without building the [.., K] posterior
        unmasked = x_t != space.mask_token
        nll = torch.where(unmasked, torch.where(x1 == x_t, 0.0, float("inf")).to(nll.dtype), nll)
    return _reduce(nll, reduction)


def generalized_kl_loss(logits: Tensor, x1: Tensor, x_t: Tensor, t: Tensor,
                        path: MixtureDiscretePath, space: Discrete, *, keep_unmasked: bool = True,
                        reduction: str = "mean") -> Tensor:
    """The per-token generalised KL ℓ_t above (nats per unit time), reduced over tokens.

    ``t`` has shape [B] (one time per sample, aligned with the leading dimension of x1), with
    t < 1 (the weight κ̇/(1 − κ) diverges at t = 1).
    """
    _check(logits, x1, x_t, space)
    if validation_enabled() and (t.dim() != 1 or t.shape[0] != x1.shape[0]):
        raise ValueError(f"t must have shape [B] = [{x1.shape[0]}], got {tuple(t.shape)}")
    if validation_enabled() and bool((t >= 1).any() | (t < 0).any()):
        raise ValueError(f"t must lie in [0, 1) for the generalised KL, got range "
                         f"[{float(t.min()):g}, {float(t.max()):g}]")
    logp = torch.log_softmax(logits, dim=-1)
    t_ = t.to(logp.dtype).reshape(-1, *([1] * (x1.dim() - 1)))
    weight = path.scheduler.d_kappa(t_) / (1 - path.scheduler.kappa(t_))
    same = x1 == x_t
    log_p_x1 = logp.gather(-1, x1.long().unsqueeze(-1)).squeeze(-1)
    # p_{1|t}(x_t): zero for the mask state, which lies outside the data vocabulary
    in_vocab = x_t < space.vocab_size
    p_xt = logp.gather(-1, x_t.clamp_max(space.vocab_size - 1).long().unsqueeze(-1)
                       ).squeeze(-1).exp() * in_vocab
    if keep_unmasked and space.source == "mask":
        # exact posterior δ(·, x_t) on unmasked tokens: p(x_t) = 1 and log p(x1) = 0 if x1 = x_t
        unmasked = x_t != space.mask_token
        p_xt = torch.where(unmasked, torch.ones_like(p_xt), p_xt)
        log_p_x1 = torch.where(unmasked, torch.where(same, 0.0, float("-inf")).to(logp.dtype),
                               log_p_x1)
    # where x1 == x_t the log term is absent; select it out so −inf·0 never appears
    log_term = torch.where(same, torch.zeros_like(log_p_x1), log_p_x1)
    per_token = -weight * (p_xt - same.to(logp.dtype) + log_term)
    return _reduce(per_token, reduction)


@torch.no_grad()
def discrete_nelbo(
    field: Callable[..., Tensor],
    x1: Tensor,
    path: MixtureDiscretePath,
    space: Discrete,
    *,
    num_times: int = 64,
    keep_unmasked: bool = True,
    generator: torch.Generator | None = None,
    **cond,
) -> Tensor:
    """Monte-Carlo negative ELBO of each sample, in nats: shape [B] (≥ −log p_θ(x1) in mean).

    NELBO(x₁) = ∫₀¹ E_{x₀ ~ p₀, x_t ~ p_t(·|x₀, x₁)} Σ_i ℓ_tⁱ dt, with ``num_times`` stratified
    times t_j = (j + u_j)/n (one fresh x₀, x_t per time). Divide by the number of tokens for
    nats per token. The estimate is unbiased for the integral; its spread shrinks as
    1/√num_times.
    """
    space.check_point(x1, "x1", allow_mask=False)
    if not (isinstance(num_times, int) and num_times >= 1):
        raise ValueError(f"num_times must be a positive integer, got {num_times!r}")
    batch = x1.shape[0]
    total = torch.zeros(batch, dtype=torch.float64, device=x1.device)
    for j in range(num_times):
        u = torch.rand(batch, generator=generator, device=x1.device)
        t = (j + u) / num_times
        x0 = space.sample_base(x1.shape, generator=generator, device=x1.device)
        x_t = path.sample(x0, x1, t, generator=generator).x_t
        logits = field(x_t, t, **cond)
        ell = generalized_kl_loss(logits, x1, x_t, t, path, space, keep_unmasked=keep_unmasked,
                                  reduction="none")
        total += ell.reshape(batch, -1).sum(-1).double()
    return (total / num_times).to(torch.float32)

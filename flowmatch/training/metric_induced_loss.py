"""The negative ELBO of metric-induced discrete paths (kinetic-optimal rates).

See :mod:`flowmatch.paths.metric_induced`. Networks are trained with the plain cross-entropy
(:func:`~flowmatch.training.discrete_loss.discrete_cross_entropy`); the KL rate here bounds the
likelihood and can be trained on as well.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowmatch._validation import validation_enabled
from flowmatch.geometry.discrete import Discrete
from flowmatch.paths.metric_induced import MetricInducedPath

__all__ = ["metric_induced_kl_loss", "metric_induced_nelbo"]


def metric_induced_kl_loss(logits: Tensor, x1: Tensor, x_t: Tensor, t: Tensor,
                           path: MetricInducedPath, space: Discrete, *,
                           reduction: str = "mean") -> Tensor:
    """KL rate between the conditional CTMC (2) given x₁ and the model's CTMC, per token.

        ℓ_t = Σ_{y ≠ x_t} [u^θ(y) − u(y | x₁) + u(y | x₁) log(u(y | x₁)/u^θ(y))] ≥ 0,

    with u^θ the marginal rate of the posterior ``logits``. Integrated over t ∈ [0, 1] with
    x_t ~ p_t(· | x₁) and summed over tokens it bounds −log p_θ(x₁) (both chains start at the
    uniform source and the conditional one ends at δ_{x₁}): see :func:`metric_induced_nelbo`.
    Every rate is β̇_t times a function of β_t, so ∫ ℓ_t dt = ∫₀^∞ g(β) dβ is the same for every
    scheduler. ``t`` [B] in [0, 1) (finite β̇). Costs O(K²) per token. ``reduction``: "mean",
    "sum" or "none" (shape of x1).
    """
    if validation_enabled():
        path.check_space(space)
        space.check_point(x1, "x1")
        space.check_point(x_t, "x_t")
        if x1.shape != x_t.shape:
            raise ValueError(f"x1 and x_t must have the same shape, got {tuple(x1.shape)} and "
                             f"{tuple(x_t.shape)}")
        space.check_logits(logits, x_t)
        if t.dim() != 1 or t.shape[0] != x1.shape[0]:
            raise ValueError(f"t must have shape [B] = [{x1.shape[0]}], got {tuple(t.shape)}")
        if bool((t >= 1).any() | (t < 0).any()):
            raise ValueError(f"t must lie in [0, 1) for the KL rate, got range "
                             f"[{float(t.min()):g}, {float(t.max()):g}]")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    d_beta = path._finite_d_beta(t, x_t).expand(x_t.shape)
    beta = path._beta_like(t, x_t).expand(x_t.shape)
    probs = torch.softmax(logits.float() if logits.dtype != torch.float64 else logits, -1)
    r_model = path.marginal_intensity(probs, x_t, beta)
    r_cond = path.conditional_intensity(x_t, x1, beta).to(r_model.dtype)
    pos = r_cond > 0
    # the log term only where the conditional chain can jump; elsewhere its limit 0 (no −inf·0).
    # r_model ≥ p_{1|t}(x₁) r_cond > 0 there, so 0 is an underflow (a state of probability
    # ~e^{−β d} at large β): floor it at the smallest normal number instead of returning inf
    tiny = torch.finfo(r_model.dtype).tiny
    log_ratio = (torch.where(pos, r_cond, 1.0).log()
                 - torch.where(pos, r_model, 1.0).clamp_min(tiny).log())
    per_y = r_model - r_cond + torch.where(pos, r_cond * log_ratio, 0.0)
    per_token = d_beta.to(per_y.dtype) * per_y.sum(-1)
    if reduction == "mean":
        return per_token.mean()
    if reduction == "sum":
        return per_token.sum()
    return per_token


@torch.no_grad()
def metric_induced_nelbo(
    field: Callable[..., Tensor],
    x1: Tensor,
    path: MetricInducedPath,
    space: Discrete,
    *,
    num_times: int = 64,
    shared_time: bool = False,
    generator: torch.Generator | None = None,
    **cond,
) -> Tensor:
    """Monte-Carlo negative ELBO of each sample in nats, shape [B] (≥ −log p_θ(x₁) in mean).

    NELBO(x₁) = ∫₀¹ E_{x_t ~ p_t(·|x₁)} Σ_i ℓ_tⁱ dt with ``num_times`` stratified times
    t_j = (j + u_j)/n (one fresh x_t per time), computed in float64; unbiased for the integral.
    Each sample draws its own u_j, so the samples' estimates are independent (their standard
    error is that of the batch mean). ``shared_time=True`` uses one u_j for the whole batch:
    the O(K²) intensity is then one matrix product per state (several times faster at K = 128),
    but the samples share their time noise.
    """
    path.check_space(space)
    space.check_point(x1, "x1")
    if x1.dim() == 0:
        raise ValueError("x1 must have a leading batch dimension, got a scalar")
    if isinstance(num_times, bool) or not isinstance(num_times, int) or num_times < 1:
        raise ValueError(f"num_times must be a positive integer, got {num_times!r}")
    batch = x1.shape[0]
    total = torch.zeros(batch, dtype=torch.float64, device=x1.device)
    for j in range(num_times):
        u = torch.rand(1 if shared_time else batch, generator=generator, dtype=torch.float64)
        t = ((j + u) / num_times).to(x1.device).expand(batch)
        x_t = path.sample(None, x1, t, generator=generator).x_t
        logits = field(x_t, t.float(), **cond).double()
        ell = metric_induced_kl_loss(logits, x1, x_t, t, path, space, reduction="none")
        total += ell.reshape(batch, -1).sum(-1)
    return total / num_times

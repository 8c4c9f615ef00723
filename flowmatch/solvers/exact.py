"""The exact output distribution of the CTMC sampler on a small, enumerable state space.

A discrete flow's likelihood is intractable in general, and the NELBO of a mixture path is only a
bound — for the uniform source a loose one even for the *exact* posterior (its conditional paths
jump once, the generative chain may jump several times). When the sequence is short enough to
enumerate all S = num_states^L states, the law of :class:`~flowmatch.solvers.ctmc.DiscreteSolver`
itself can be propagated exactly instead: one τ-leaping step from state x moves the tokens
independently,

    P(x → y) = Π_i P_i(yⁱ | x),
    P_i(a | x) = (1 − p_fwd − p_src) δ(a, xⁱ) + p_fwd p̂_{1|t}ⁱ(a | x) + p_src p₀(a),

with p_fwd, p_src the step's jump probabilities
(:meth:`~flowmatch.solvers.ctmc.MixtureJump.jump_probabilities`) and p̂ the network's (filtered)
posterior. The next distribution is q'(y) = Σ_x q(x) Π_i P_i(yⁱ | x), a product of
S × num_states factor tables contracted over x: O(S² ) work per step, with one network call on
all S states. The result is the exact probability of every sequence under the sampler (same
grid, same options), so −log q_1(x) of held-out data is an exact NLL and
KL(data ‖ sampler) is exact when the data law is known.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from flowmatch._jumps import Corrector
from flowmatch.geometry.discrete import Discrete
from flowmatch.solvers._grid import forward_step_times
from flowmatch.solvers.ctmc import MixtureJump, filter_logits

__all__ = ["all_states", "sampler_distribution"]


def all_states(space: Discrete, length: int, *, include_mask: bool = True) -> Tensor:
    """Every sequence of ``length`` states as int64 [S, length], in row-major (C) order.

    Row r is the sequence whose base-``n`` digits are r (first token most significant), so a
    distribution over them reshapes to a table of shape [n] * length. ``n`` is
    ``space.num_states`` (mask token included) or, with ``include_mask=False``, the vocabulary.
    """
    n = space.num_states if include_mask else space.vocab_size
    grids = torch.meshgrid(*[torch.arange(n)] * length, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


@torch.no_grad()
def sampler_distribution(
    field: Callable[..., Tensor],
    space: Discrete,
    path: Any,
    length: int,
    *,
    time_grid: Sequence[float] | Tensor | None = None,
    num_steps: int | None = None,
    step_size: float | None = None,
    eta: float = 0.0,
    corrector: Corrector | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    keep_unmasked: bool = True,
    initial: Tensor | None = None,
    chunk: int = 4096,
    max_states: int = 40_000,
    **cond,
) -> Tensor:
    """The law of ``DiscreteSolver(field, space, path).sample(x0, ...)`` on ``length`` tokens.

    Returns float64 probabilities of shape [num_states] * length (the mask token is the last
    index of each axis for the mask source). ``initial`` is the law of x0 with that shape
    (default: the source p₀ on every token, independently). The time-grid and sampling options
    are those of :meth:`DiscreteSolver.sample` with ``unmasking="random"``; ``field`` is called
    on all states in batches of ``chunk``. ``path`` is a mixture path (or its convex scheduler):
    its step rule (``path.jump_step``, a :class:`~flowmatch.solvers.ctmc.MixtureJump`) gives
    every step's jump probabilities.
    """
    if not isinstance(space, Discrete):
        raise TypeError(f"space must be a Discrete geometry, got {type(space).__name__}")
    rule = getattr(path, "jump_step", None)
    step = rule(space, {"eta": eta, "corrector": corrector}, checked=False) \
        if callable(rule) else None
    if not isinstance(step, MixtureJump):
        raise TypeError("path must be a MixtureDiscretePath or a ConvexScheduler, got "
                        f"{type(path).__name__}")
    if not (isinstance(length, int) and 1 <= length <= len(string.ascii_letters) - 1):
        raise ValueError(f"length must be an integer in [1, 51], got {length!r}")
    n, K = space.num_states, space.vocab_size
    S = n**length
    if S > max_states:
        raise ValueError(f"{n}^{length} = {S} states exceed max_states={max_states}: the exact "
                         "law costs O(S²) per step (raise max_states if you mean it)")
    states = all_states(space, length)
    p0 = space.source_probs  # [n] float64
    if initial is None:
        q = p0
        for _ in range(length - 1):
            q = torch.outer(q, p0).reshape(-1)
        q = q.reshape(-1)
    else:
        if tuple(initial.shape) != (n,) * length:
            raise ValueError(f"initial must have shape {(n,) * length}, got "
                             f"{tuple(initial.shape)}")
        if bool((initial < 0).any()) or abs(float(initial.sum()) - 1) > 1e-6:
            raise ValueError("initial must be a normalised non-negative probability table")
        q = initial.double().reshape(-1)
    times, _ = forward_step_times(time_grid, num_steps, step_size)
    letters = string.ascii_letters
    # q'[y_1 … y_L] = Σ_x q[x] Π_i P_i[x, y_i]: one einsum over the state index
    spec = ("Z," + ",".join(f"Z{letters[i]}" for i in range(length)) + "->"
            + letters[:length])
    mask = space.mask_token
    for i in range(len(times) - 1):
        t, h = times[i], times[i + 1] - times[i]
        p_fwd, p_src = step.jump_probabilities(t, h)
        live = (q > 0).nonzero().squeeze(1)
        post = torch.zeros(live.numel(), length, K, dtype=torch.float64)
        for start in range(0, live.numel(), chunk):
            idx = live[start:start + chunk]
            x = states[idx]
            logits = field(x, torch.full((x.shape[0],), t), **cond)
            space.check_logits(logits, x, f"the field's logits at t={t:.4g}")
            logits = filter_logits(logits.double(), temperature=temperature, top_k=top_k,
                                   top_p=top_p)
            post[start:start + chunk] = torch.softmax(logits, -1)
        x = states[live]  # [S', L]
        kernel = torch.zeros(live.numel(), length, n, dtype=torch.float64)
        kernel[..., :K] = p_fwd * post
        kernel += p_src * p0
        stay = torch.full(x.shape, 1.0 - p_fwd - p_src, dtype=torch.float64)
        if keep_unmasked and mask is not None:
            # an unmasked token's posterior is itself: its forward jump changes nothing
            unmasked = x != mask
            kernel[..., :K] = torch.where(unmasked.unsqueeze(-1), 0.0, kernel[..., :K])
            stay = torch.where(unmasked, 1.0 - p_src, stay)
        kernel.scatter_add_(-1, x.unsqueeze(-1), stay.unsqueeze(-1))
        q = torch.einsum(spec, q[live], *kernel.unbind(1)).reshape(-1)
    return q.reshape((n,) * length)

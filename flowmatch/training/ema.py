"""Exponential moving average of a model's parameters."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A shadow copy of ``model`` whose parameters track an exponential moving average.

    After each optimiser step, ``update()`` sets, for every parameter θ and its shadow θ̄,

        θ̄ ← d θ̄ + (1 − d) θ,

    so after n updates from θ̄₀ with a constant θ: θ̄ₙ = θ + dⁿ (θ̄₀ − θ). With ``warmup=True``
    the decay of the k-th update (k = 1, 2, …) is min(d, (1 + k) / (10 + k)), which lets the
    average forget the random initialisation quickly early in training. Buffers (e.g. batch-norm
    statistics) are copied, not averaged. ``ema.module`` is the averaged model (in eval mode,
    no gradients) and ``ema(x, t, ...)`` calls it.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = False) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next ``update()`` will use."""
        if not self.warmup:
            return self.decay
        k = int(self.num_updates) + 1
        return min(self.decay, (1.0 + k) / (10.0 + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow parameters towards ``model``'s current ones."""
        d = self.current_decay()
        shadow = list(self.module.parameters())
        live = list(model.parameters())
        if len(shadow) != len(live):
            raise ValueError(
                f"model has {len(live)} parameters but the EMA tracks {len(shadow)}; "
                "is it the model the EMA was built from?"
            )
        if shadow:
            # lerp(θ̄, θ, 1 − d) = θ̄ + (1 − d)(θ − θ̄) = d θ̄ + (1 − d) θ, one fused kernel
            torch._foreach_lerp_(shadow, [p.detach() for p in live], 1.0 - d)
        for b_shadow, b_live in zip(self.module.buffers(), model.buffers(), strict=True):
            b_shadow.copy_(b_live)
        self.num_updates += 1

    def forward(self, *args, **kwargs):  # noqa: D401 - delegates to the averaged model
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"decay={self.decay:g}, warmup={self.warmup}"

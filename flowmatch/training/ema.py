"""Exponential moving average of a model's parameters."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


class EMA(nn.Module):
    """A shadow copy of ``model`` whose parameters track an exponential moving average.

    After each optimiser step, ``update()`` sets, for every parameter θ and its shadow θ̄,

        θ̄ ← d θ̄ + (1 − d) θ,

    so after n updates from θ̄₀ with a constant θ: θ̄ₙ = θ + dⁿ (θ̄₀ − θ). With ``warmup=True``
    the decay of the k-th update (k = 1, 2, …) is min(d, (1 + k) / (10 + k)), which lets the
    average forget the random initialisation quickly early in training. ``decay`` may instead
    be a callable n ↦ d_n giving the decay of update n (0-based) itself, e.g. another
    warm-up convention; it must return values in [0, 1]. Buffers (e.g. batch-norm
    statistics) are copied, not averaged. ``ema.module`` is the averaged model (in eval mode,
    no gradients) and ``ema(x, t, ...)`` calls it.
    """

    def __init__(self, model: nn.Module, decay: float | Callable[[int], float] = 0.999, *,
                 warmup: bool = False) -> None:
        super().__init__()
        if callable(decay):
            if warmup:
                raise ValueError("warmup applies to a constant decay; a callable decay gives "
                                 "every update's decay itself")
        elif not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
        self.decay = decay if callable(decay) else float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # a Python mirror of num_updates, so the warm-up decay needs no device synchronisation
        self._count = 0
        self.register_load_state_dict_post_hook(_sync_count)

    def current_decay(self) -> float:
        """The decay the next ``update()`` will use."""
        if callable(self.decay):
            d = self.decay(self._count)
            if not 0.0 <= d <= 1.0:
                raise ValueError(f"decay({self._count}) must lie in [0, 1], got {d!r}")
            return float(d)
        if not self.warmup:
            return self.decay
        k = self._count + 1
        return min(self.decay, (1.0 + k) / (10.0 + k))

    def _tensors(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # walking the module tree costs more than the update itself for small models, so the
        # live tensor lists are cached for the model seen last (training updates one model)
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] is not model:
            # the Parameter objects themselves, not detached views: .to() swaps their storage
            live_p = list(model.parameters())
            live_b = list(model.buffers())
            shadow_p, shadow_b = list(self.module.parameters()), list(self.module.buffers())
            if len(shadow_p) != len(live_p) or len(shadow_b) != len(live_b):
                raise ValueError(
                    f"model has {len(live_p)} parameters and {len(live_b)} buffers but the EMA "
                    f"tracks {len(shadow_p)} and {len(shadow_b)}; is it the model the EMA was "
                    "built from?"
                )
            self._cache = cached = (model, live_p, live_b, shadow_p, shadow_b)
        return cached[1:]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow parameters towards ``model``'s current ones."""
        d = self.current_decay()
        live_p, live_b, shadow_p, shadow_b = self._tensors(model)
        if shadow_p:
            # lerp(θ̄, θ, 1 − d) = θ̄ + (1 − d)(θ − θ̄) = d θ̄ + (1 − d) θ, one fused kernel
            torch._foreach_lerp_(shadow_p, live_p, 1.0 - d)
        for b_shadow, b_live in zip(shadow_b, live_b, strict=True):
            b_shadow.copy_(b_live)
        self._count += 1
        self.num_updates.fill_(self._count)

    def forward(self, *args, **kwargs):  # noqa: D401 - delegates to the averaged model
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        decay = getattr(self.decay, "__qualname__", repr(self.decay)) if callable(self.decay) \
            else f"{self.decay:g}"
        return f"decay={decay}, warmup={self.warmup}"


def _sync_count(module: EMA, incompatible_keys: object) -> None:
    module._count = int(module.num_updates)

"""A vocabulary of K tokens as a (discrete) geometry: the state space of discrete flow matching.

A discrete factor has no exponential map or tangent space: probability moves between tokens
by jumps of a continuous-time Markov chain (see :mod:`flowmatch.paths.mixture` and
:mod:`flowmatch.solvers.ctmc`). For the purpose of products it still is a :class:`Geometry`:
it has points (tokens), a base (source) distribution and a point check.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowmatch._validation import validation_enabled
from flowmatch.geometry.base import Geometry, _as_shape

_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class Discrete(Geometry):
    """Tokens from a vocabulary {0, …, K − 1} with a source distribution for t = 0.

    Points are integer tensors of any shape (one token per entry, ``point_shape == ()``): a
    batch of sequences is ``[B, L]``, a flat list of atom types is ``[N]``. Tokens are always
    ``torch.int64`` when the library creates them.

    ``source`` chooses the distribution p₀ of x₀:

    * ``"mask"``: every token starts as an extra *mask* token, ``mask_token = K``. States then
      range over K + 1 values (``num_states = K + 1``): a network reading x_t needs an input
      vocabulary of K + 1, while its output (posterior logits over the data x₁) has K entries.
    * ``"uniform"``: p₀(y) = 1/K; ``num_states = K``.
    * a probability vector of shape [K] (non-negative, sums to 1): any user distribution over
      the data vocabulary; ``num_states = K``.

    ``source_probs`` is p₀ as a vector over the ``num_states`` states (one-hot on the mask
    token for the mask source); the corrector of the CTMC sampler jumps towards it.
    """

    is_discrete = True
    point_shape: tuple[int, ...] = ()
    dim = 0

    def __init__(self, vocab_size: int, source: str | Tensor | Sequence[float] = "mask") -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        self.vocab_size = vocab_size
        if isinstance(source, str):
            if source not in ("mask", "uniform"):
                raise ValueError(
                    f"source must be 'mask', 'uniform' or a probability vector of shape "
                    f"[{vocab_size}], got {source!r}"
                )
            self.source = source
            if source == "mask":
                probs = torch.zeros(vocab_size + 1, dtype=torch.float64)
                probs[vocab_size] = 1.0
            else:
                probs = torch.full((vocab_size,), 1.0 / vocab_size, dtype=torch.float64)
        else:
            probs = torch.as_tensor(source, dtype=torch.float64).detach().cpu()
            if probs.shape != (vocab_size,):
                raise ValueError(
                    f"a source probability vector must have shape [{vocab_size}] (the data "
                    f"vocabulary), got shape {tuple(probs.shape)}"
                )
            if not bool(torch.isfinite(probs).all()) or float(probs.min()) < 0:
                raise ValueError("source probabilities must be finite and non-negative, "
                                 f"got minimum {float(probs.min())}")
            total = float(probs.sum())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"source probabilities must sum to 1 (± 1e-6), got {total:.8g}")
            self.source = "custom"
            probs = probs / total
        self._source_probs = probs
        self._source_cdf = torch.cumsum(probs, 0)

    # -- vocabulary ------------------------------------------------------------------------
    @property
    def mask_token(self) -> int | None:
        """Index of the mask token (= ``vocab_size``) for the mask source, else None."""
        return self.vocab_size if self.source == "mask" else None

    @property
    def num_states(self) -> int:
        """Number of values a token of x_t can take: K + 1 with a mask token, else K."""
        return self.vocab_size + 1 if self.source == "mask" else self.vocab_size

    @property
    def source_probs(self) -> Tensor:
        """p₀ over the ``num_states`` states, float64 of shape [num_states]."""
        return self._source_probs.clone()

    # -- base distribution -----------------------------------------------------------------
    def sample_base(
        self,
        shape: int | Sequence[int],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw x₀ ~ p₀ independently per token: int64 tensor of shape ``shape``.

        ``dtype`` is accepted for the :class:`Product` contract (which passes one dtype to every
        factor); tokens are integers whatever floating dtype is asked for.
        """
        shape = _as_shape(shape)
        if dtype is not None and not dtype.is_floating_point and dtype not in _INTEGER_DTYPES:
            raise ValueError(f"dtype must be an integer or floating dtype, got {dtype}")
        if self.source == "mask":
            return torch.full(shape, self.vocab_size, dtype=torch.int64, device=device)
        if self.source == "uniform":
            return torch.randint(self.vocab_size, shape, generator=generator, device=device)
        # inverse-CDF sampling: one uniform per token, a binary search in the cumulative sum
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
        cdf = self._source_cdf.to(device)
        idx = torch.searchsorted(cdf, u.reshape(-1), right=True).reshape(shape)
        return idx.clamp_max(self.vocab_size - 1)  # u ≥ cdf[-1] only by rounding of the sum

    def base_log_prob(self, x: Tensor) -> Tensor:
        """log p₀(x) per token (shape of ``x``, float32); −inf for tokens p₀ never draws."""
        self.validate(x, "x")
        logp = self._source_probs.to(x.device).log().float()
        return logp[x.long()]

    # -- validation -------------------------------------------------------------------------
    def point_error(self, x: Tensor) -> Tensor:
        """1.0 where an entry is not a valid state (< 0 or ≥ ``num_states``), 0.0 elsewhere."""
        return ((x < 0) | (x >= self.num_states)).to(torch.float32)

    def check_point(self, x: Tensor, name: str = "x", *, allow_mask: bool = True) -> None:
        """Raise ``ValueError`` unless ``x`` is an integer tensor of valid tokens.

        ``allow_mask=False`` checks *data* (x₁): the mask token is then out of range.
        """
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
        if x.dtype not in _INTEGER_DTYPES:
            raise ValueError(f"{name} must hold integer token ids (e.g. torch.int64), "
                             f"got dtype {x.dtype}")
        hi = self.num_states if allow_mask else self.vocab_size
        if x.numel():
            lo_v, hi_v = int(x.min()), int(x.max())
            if lo_v < 0 or hi_v >= hi:
                what = "states" if hi == self.num_states else "data tokens"
                raise ValueError(
                    f"{name} must hold {what} in [0, {hi - 1}] for {self}, but its values "
                    f"range over [{lo_v}, {hi_v}]"
                )

    def validate(self, x: Tensor, name: str = "x", *, allow_mask: bool = True) -> None:
        if validation_enabled():
            self.check_point(x, name, allow_mask=allow_mask)

    def check_logits(self, logits: Tensor, x: Tensor, name: str = "logits") -> None:
        """Raise unless ``logits`` has shape [*x.shape, vocab_size] and is finite (no NaN).

        Entries of −inf are allowed (they forbid a token, e.g. after top-k filtering).
        """
        if not validation_enabled():
            return
        if not torch.is_tensor(logits) or not logits.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor of posterior logits, got "
                             f"{getattr(logits, 'dtype', type(logits).__name__)}")
        expected = (*x.shape, self.vocab_size)
        if tuple(logits.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} (the tokens' shape plus the data vocabulary "
                f"size {self.vocab_size}), got {tuple(logits.shape)}"
            )
        if not logits.numel():
            return
        # one reduction covers every failure: max propagates NaN, is +inf with a +inf entry and
        # −inf on a row of −inf; the detailed count below runs only on failure
        if bool(torch.isfinite(logits.amax(-1)).all()):
            return
        n_nan = int(torch.isnan(logits).sum())
        n_inf = int((logits == float("inf")).sum())
        if n_nan or n_inf:
            raise ValueError(f"{name} must be finite or −inf, but it holds {n_nan} NaN and "
                             f"{n_inf} +inf values (shape {tuple(logits.shape)})")
        if bool((logits == float("-inf")).all(-1).any()):
            raise ValueError(f"{name} forbids every token of some entry (a row of all −inf)")

    def __repr__(self) -> str:
        src = self.source if self.source != "custom" else "custom probs"
        return f"Discrete({self.vocab_size}, source={src!r})"

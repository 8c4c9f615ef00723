"""Small time-conditioned networks for token data, and classifier-free guidance for posteriors.

Both networks read tokens x_t (int64 [B, L], values in [0, input_vocab) — with the mask source
input_vocab = K + 1, the last id being the mask) and times t [B], and return posterior logits
[B, L, K] over the data vocabulary: the ``field`` of
:class:`~flowmatch.solvers.ctmc.DiscreteSolver`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowmatch.models.embedding import SinusoidalTimeEmbedding


class _Conditioning(nn.Module):
    """Time embedding plus an optional class embedding (index ``num_classes`` = no label)."""

    def __init__(self, dim: int, num_classes: int | None) -> None:
        super().__init__()
        self.time = nn.Sequential(SinusoidalTimeEmbedding(dim), nn.Linear(dim, dim), nn.SiLU(),
                                  nn.Linear(dim, dim))
        self.num_classes = num_classes
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes is not None else None

    def forward(self, t: Tensor, label: Tensor | None) -> Tensor:
        c = self.time(t)
        if self.label is None:
            if label is not None:
                raise ValueError("this network was built without num_classes; label must be None")
            return c
        if label is None:
            label = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
        if label.shape != (t.shape[0],) or bool((label < 0).any() |
                                                 (label > self.num_classes).any()):
            raise ValueError(f"label must be int64 [B] in [0, {self.num_classes}] "
                             f"({self.num_classes} = no label), got shape {tuple(label.shape)}")
        return c + self.label(label)


def _check_tokens(x: Tensor, t: Tensor, length: int, input_vocab: int) -> None:
    if x.dim() != 2 or x.shape[1] > length:
        raise ValueError(f"x must be int64 tokens [B, L] with L ≤ {length}, got {tuple(x.shape)}")
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")


class DiscreteMLP(nn.Module):
    """Posterior network for short fixed-length token vectors (e.g. a 2D point as 2 tokens).

    Each token is embedded (``embed_dim``), the embeddings are concatenated with the time (and
    label) embedding and passed through ``layers`` SiLU layers of width ``hidden``; a linear head
    gives logits [B, length, output_vocab].
    """

    def __init__(self, length: int, input_vocab: int, output_vocab: int, *, hidden: int = 256,
                 layers: int = 3, embed_dim: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        if min(length, input_vocab, output_vocab, hidden, layers, embed_dim) < 1:
            raise ValueError("length, vocabularies, hidden, layers and embed_dim must be ≥ 1")
        self.length, self.input_vocab, self.output_vocab = length, input_vocab, output_vocab
        self.embed = nn.Embedding(input_vocab, embed_dim)
        self.cond = _Conditioning(hidden, num_classes)
        self.inp = nn.Linear(length * embed_dim, hidden)
        self.body = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, length * output_vocab)

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        _check_tokens(x, t, self.length, self.input_vocab)
        if x.shape[1] != self.length:
            raise ValueError(f"x must have exactly {self.length} tokens, got {x.shape[1]}")
        h = self.inp(self.embed(x).flatten(1)) + self.cond(t, label)
        for layer in self.body:
            h = h + layer(self.act(h))  # residual: keeps deeper stacks trainable at high lr
        return self.head(self.act(h)).view(x.shape[0], self.length, self.output_vocab)


class DiscreteTransformer(nn.Module):
    """Bidirectional transformer posterior network for token sequences up to ``max_len``.

    Token and learned position embeddings plus the time (and label) embedding, added to every
    position, go through ``layers`` pre-norm encoder layers; the head gives logits
    [B, L, output_vocab].
    """

    def __init__(self, max_len: int, input_vocab: int, output_vocab: int, *, dim: int = 128,
                 heads: int = 4, layers: int = 4, num_classes: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.max_len, self.input_vocab, self.output_vocab = max_len, input_vocab, output_vocab
        self.embed = nn.Embedding(input_vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.cond = _Conditioning(dim, num_classes)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, output_vocab)

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        _check_tokens(x, t, self.max_len, self.input_vocab)
        h = self.embed(x) + self.pos[: x.shape[1]] + self.cond(t, label).unsqueeze(1)
        return self.head(self.norm(self.encoder(h)))


class DiscreteGuidance(nn.Module):
    """Classifier-free guidance of a posterior network, in log-probability space.

    log p_w(y | x_t, c) = (1 + w) log p(y | x_t, c) − w log p(y | x_t, ∅), renormalised by the
    sampler's softmax (w = 0: the conditional model; w > 0 sharpens towards c). Because softmax
    ignores a per-token constant, this equals the same combination of raw logits. The null
    condition is given explicitly as ``null_cond`` (e.g. ``{"label": None}``); each call costs
    two evaluations of ``field``.
    """

    def __init__(self, field: nn.Module, scale: float, null_cond: dict) -> None:
        super().__init__()
        if not scale >= 0:
            raise ValueError(f"guidance scale must be ≥ 0, got {scale}")
        self.field, self.scale, self.null_cond = field, float(scale), dict(null_cond)

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        lc = torch.log_softmax(self.field(x, t, **cond), dim=-1)
        if self.scale == 0:
            return lc
        lu = torch.log_softmax(self.field(x, t, **{**cond, **self.null_cond}), dim=-1)
        return (1 + self.scale) * lc - self.scale * lu


class ExactPosterior(nn.Module):
    """The exact posterior p_{1|t}(x₁ⁱ | x_t) of a mixture path for a small tabulated target.

    ``target`` is the joint distribution q(x₁) as a table of shape [K] * L (L tokens, K data
    tokens, normalised). With independent x₀ ~ p₀ per token,

        p(x₁ | x_t) ∝ q(x₁) Π_i [κ_t δ(x_tⁱ, x₁ⁱ) + (1 − κ_t) p₀(x_tⁱ)],

    and token i's posterior is its marginal. The cost grows as K^L, so this is a reference for
    tests and for timing a sampler without a network, not a model.
    """

    def __init__(self, target: Tensor, space, scheduler) -> None:
        super().__init__()
        K = space.vocab_size
        if target.dim() < 1 or any(s != K for s in target.shape):
            raise ValueError(f"target must have shape [{K}] * L, got {tuple(target.shape)}")
        if bool((target < 0).any()) or abs(float(target.sum()) - 1) > 1e-6:
            raise ValueError("target must be a normalised non-negative probability table")
        self.length, self.K = target.dim(), K
        self.register_buffer("log_q", target.double().log())
        self.register_buffer("log_p0", space.source_probs.double().log())
        self.scheduler = scheduler

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        B, L, K = x.shape[0], self.length, self.K
        if x.shape != (B, L) or t.shape != (B,):
            raise ValueError(f"x must be [B, {L}] and t [B], got {tuple(x.shape)}, "
                             f"{tuple(t.shape)}")
        kappa = self.scheduler.kappa(t.double()).view(B, 1, 1)
        y = torch.arange(K, device=x.device).view(1, 1, K)
        # log w_i(y) = log[κ δ(x_tⁱ, y) + (1 − κ) p₀(x_tⁱ)], shape [B, L, K]
        w = kappa * (x.unsqueeze(-1) == y) + (1 - kappa) * self.log_p0[x].exp().unsqueeze(-1)
        logw = w.log()
        joint = self.log_q.expand(B, *([K] * L)).clone()
        for i in range(L):
            shape = [B] + [1] * L
            shape[1 + i] = K
            joint = joint + logw[:, i].view(shape)
        out = []
        for i in range(L):
            others = [1 + j for j in range(L) if j != i]
            out.append(torch.logsumexp(joint, dim=others) if others else joint)
        logits = torch.stack(out, dim=1)
        return (logits - torch.logsumexp(logits, -1, keepdim=True)).float()

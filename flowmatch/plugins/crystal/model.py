"""An invariant periodic message-passing velocity field for crystals (in the style of CSPNet).

Each crystal is a fully connected graph of its atoms. Layer ℓ updates atom features h_i by

    m_ij = φ_m([h_i, h_j, ℓ̂, ψ(f_j − f_i)]),    m_i = mean_j m_ij,     (φ_m: a 2-layer MLP)
    h_i ← LayerNorm(h_i + φ_h([h_i, m_i])),

where ℓ̂ are the crystal's 6 lattice parameters standardised by data statistics (lengths and
angles: invariant under rotations of the Cartesian frame) and ψ(Δ) = (sin 2πkΔ, cos 2πkΔ),
k = 1 … K, are Fourier features of the fractional difference — periodic, so the choice of
periodic image does not matter, and a difference, so a global translation does not either. The
heads read per-atom coordinate velocities (no bias), the lattice velocity from mean- and
sum-pooled atom features, and optionally per-atom type logits. Outputs are therefore
permutation-equivariant per atom and invariant to translations, periodic images and rotations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowmatch.geometry import ProductPoint
from flowmatch.models.embedding import SinusoidalTimeEmbedding
from flowmatch.plugins.crystal.representation import NUM_ELEMENTS

__all__ = ["CrystalVelocityNet", "PropertyEmbedding"]


def register_lattice_inputs(module: nn.Module, num_states: int,
                            lattice_loc: Sequence[float] | Tensor | None,
                            lattice_scale: Sequence[float] | Tensor | None) -> None:
    """Check a crystal network's type vocabulary and register the buffers ``lattice_loc`` /
    ``lattice_scale`` that standardise the 6 lattice parameters (default 0 and 1)."""
    if num_states not in (NUM_ELEMENTS, NUM_ELEMENTS + 1):
        raise ValueError(f"num_states must be {NUM_ELEMENTS} or {NUM_ELEMENTS + 1} (with a "
                         f"mask token), got {num_states!r}")
    loc = torch.zeros(6) if lattice_loc is None else torch.as_tensor(lattice_loc).float()
    scale = torch.ones(6) if lattice_scale is None else torch.as_tensor(lattice_scale).float()
    if loc.shape != (6,) or scale.shape != (6,) or not bool((scale > 0).all()):
        raise ValueError("lattice_loc and lattice_scale must have 6 entries, scale > 0")
    module.register_buffer("lattice_loc", loc)
    module.register_buffer("lattice_scale", scale)


def make_property_embedding(num_properties: int, hidden: int,
                            loc: Sequence[float] | Tensor | None,
                            scale: Sequence[float] | Tensor | None) -> PropertyEmbedding | None:
    """The property embedding of a crystal network, or None for an unconditional one (P = 0)."""
    if isinstance(num_properties, bool) or not isinstance(num_properties, int) \
            or num_properties < 0:
        raise ValueError(f"num_properties must be an integer ≥ 0, got {num_properties!r}")
    return PropertyEmbedding(num_properties, hidden, loc=loc, scale=scale) \
        if num_properties else None


def condition_context(net: nn.Module, cond: Tensor | None, num_crystals: int) -> Tensor | float:
    """What a crystal network adds to its time embedding for ``cond`` (0 if unconditional)."""
    if net.properties is None:
        if cond is not None:
            raise ValueError("this network is not conditional (num_properties = 0): pass no "
                             "cond")
        return 0.0
    return net.properties(cond, num_crystals)


class PropertyEmbedding(nn.Module):
    """Embedding of crystal properties c [S, P] (raw units, e.g. eV/atom) for conditioning.

    Each property is standardised with ``loc`` / ``scale`` (the training set's), then mapped by
    a 2-layer MLP to [S, hidden]. A crystal whose row holds a NaN — an unknown or dropped label
    — gets a learnt "no condition" vector instead, as does every crystal when ``cond`` is None:
    NaN is the null condition of classifier-free guidance for these networks.
    """

    def __init__(self, num_properties: int, hidden: int, *,
                 loc: Sequence[float] | Tensor | None = None,
                 scale: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        if isinstance(num_properties, bool) or not isinstance(num_properties, int) \
                or num_properties < 1:
            raise ValueError(f"num_properties must be a positive integer, got {num_properties!r}")
        loc_ = torch.zeros(num_properties) if loc is None else torch.as_tensor(loc).float()
        scale_ = torch.ones(num_properties) if scale is None else torch.as_tensor(scale).float()
        if loc_.shape != (num_properties,) or scale_.shape != (num_properties,) \
                or not bool((scale_ > 0).all()):
            raise ValueError(f"loc and scale must have {num_properties} entries, scale > 0")
        self.num_properties = num_properties
        self.register_buffer("loc", loc_)
        self.register_buffer("scale", scale_)
        self.mlp = nn.Sequential(nn.Linear(num_properties, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden))
        self.null = nn.Parameter(torch.zeros(hidden))
        # zero output at first: a conditional network starts as its unconditional self (so
        # conditioning can be added to a trained model without disturbing it)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, cond: Tensor | None, num_crystals: int) -> Tensor:
        if cond is None:
            return self.null.expand(num_crystals, -1)
        cond = torch.as_tensor(cond, device=self.loc.device)
        if cond.dim() == 1 and self.num_properties == 1:
            cond = cond[:, None]
        if cond.shape != (num_crystals, self.num_properties):
            raise ValueError(f"cond must hold {self.num_properties} properties per crystal, "
                             f"shape [{num_crystals}, {self.num_properties}], "
                             f"got {tuple(cond.shape)}")
        missing = torch.isnan(cond).any(dim=1, keepdim=True)
        standard = (torch.nan_to_num(cond).to(self.loc.dtype) - self.loc) / self.scale
        return torch.where(missing, self.null, self.mlp(standard))


class _Layer(nn.Module):
    """One message-passing layer. The first linear map of the message, W [h_i, h_j, e], is
    applied as W_i h_i + W_j h_j + W_e e: the atom terms are computed once per atom instead
    of once per edge (a crystal of n atoms has n² edges)."""

    def __init__(self, hidden: int, edge_in: int) -> None:
        super().__init__()
        self.from_i = nn.Linear(hidden, hidden)
        self.from_j = nn.Linear(hidden, hidden, bias=False)
        self.from_edge = nn.Linear(edge_in, hidden, bias=False)
        self.message = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.update = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(),
                                    nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, edge_feat: Tensor, i: Tensor, j: Tensor, degree: Tensor
                ) -> Tensor:
        m = self.message(self.from_i(h)[i] + self.from_j(h)[j] + self.from_edge(edge_feat))
        agg = h.new_zeros(h.shape).index_add(0, i, m) / degree
        return self.norm(h + self.update(torch.cat([h, agg], dim=1)))


class CrystalVelocityNet(nn.Module):
    """Velocity field on ragged crystal batches: ``net(x, t) -> {"coords", "lattice"[, "types"]}``.

    ``x`` is a :class:`~flowmatch.geometry.ProductPoint` with ``lattice`` [S, 6], ragged
    ``coords`` [N, 3] (fractional) and ``types`` [N] (tokens; the mask token ``num_states − 1``
    is allowed when ``num_states`` is 101); ``t`` has shape [S]. Returns coordinate velocities
    [N, 3], lattice velocities [S, 6] and, with ``predict_types``, type logits [N, 100].

    Args:
        hidden: width of the message passing.
        layers: number of message-passing layers.
        num_freqs: K, the number of Fourier frequencies of the fractional differences.
        time_dim: width of the sinusoidal time embedding.
        lattice_loc: mean that standardises the lattice parameters on the way in (default 0;
            pass the training set's).
        lattice_scale: standard deviation of that standardisation (default 1).
        num_states: input vocabulary of the type embedding (100 elements, 101 with a mask).
        predict_types: add the per-atom type head (de novo generation).
        num_properties: P > 0 makes the field conditional on P scalar properties per crystal,
            standardised by ``property_loc`` / ``property_scale`` (the training set's).
    """

    def __init__(self, hidden: int = 256, layers: int = 4, *, num_freqs: int = 32,
                 time_dim: int = 64, lattice_loc: Sequence[float] | Tensor | None = None,
                 lattice_scale: Sequence[float] | Tensor | None = None,
                 num_states: int = NUM_ELEMENTS, predict_types: bool = False,
                 num_properties: int = 0,
                 property_loc: Sequence[float] | Tensor | None = None,
                 property_scale: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        for name, value, lo in (("hidden", hidden, 1), ("layers", layers, 1),
                                ("num_freqs", num_freqs, 1), ("time_dim", time_dim, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer ≥ {lo}, got {value!r}")
        register_lattice_inputs(self, num_states, lattice_loc, lattice_scale)
        self.register_buffer("freqs", 2 * math.pi * torch.arange(1, num_freqs + 1).float(),
                             persistent=False)
        self.hidden, self.num_states, self.predict_types = hidden, num_states, predict_types
        self.embed = nn.Embedding(num_states, hidden)
        self.time = nn.Sequential(SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, hidden),
                                  nn.SiLU(), nn.Linear(hidden, hidden))
        edge_in = 6 + 6 * num_freqs
        self.layers = nn.ModuleList(_Layer(hidden, edge_in) for _ in range(layers))
        self.coords_head = nn.Linear(hidden, 3, bias=False)
        self.lattice_head = nn.Sequential(nn.Linear(2 * hidden + 6, hidden), nn.SiLU(),
                                          nn.Linear(hidden, 6))
        self.types_head = nn.Linear(hidden, NUM_ELEMENTS) if predict_types else None
        self.properties = make_property_embedding(num_properties, hidden, property_loc,
                                                  property_scale)

    @property
    def num_properties(self) -> int:
        return 0 if self.properties is None else self.properties.num_properties

    def forward(self, x: ProductPoint, t: Tensor, cond: Tensor | None = None
                ) -> dict[str, Tensor]:
        if not isinstance(x, ProductPoint) or x.segments is None:
            raise ValueError("x must be a ProductPoint with segments (a ragged crystal batch)")
        seg = x.segments
        if t.shape != (seg.num_segments,):
            raise ValueError(f"t must have one time per crystal, shape [{seg.num_segments}], "
                             f"got {tuple(t.shape)}")
        dtype = self.lattice_loc.dtype
        lattice = (x["lattice"].to(dtype) - self.lattice_loc) / self.lattice_scale
        coords = x["coords"].to(dtype)
        i, j = seg.pairs(self_loops=True)
        owner = seg.index[i]
        angle = (coords[j] - coords[i]).unsqueeze(-1) * self.freqs  # [E, 3, K]
        edge_feat = torch.cat([lattice[owner], angle.sin().flatten(1), angle.cos().flatten(1)],
                              dim=1)
        degree = seg.counts()[seg.index].to(dtype).clamp_min(1).unsqueeze(1)
        context = self.time(t.to(dtype)) + condition_context(self, cond, seg.num_segments)
        h = self.embed(x["types"]) + seg.broadcast(context)
        for layer in self.layers:
            h = layer(h, edge_feat, i, j, degree)
        pooled = torch.cat([seg.mean(h), seg.sum(h) / math.sqrt(self.hidden), lattice], dim=1)
        out = {"coords": self.coords_head(h), "lattice": self.lattice_head(pooled)}
        if self.types_head is not None:
            out["types"] = self.types_head(h)
        return out

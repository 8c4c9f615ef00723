"""An E(3)-equivariant periodic velocity field for crystals, built with e3nn.

The network sees a crystal in Cartesian space. Its 6 lattice parameters give a lattice matrix
L (rows a, b, c; :func:`lattice_matrix`, a canonical orientation) and the atoms sit at r = f L.
Each atom i receives messages from every periodic image of every atom j (itself included,
other images only) closer than ``cutoff`` Å (:func:`periodic_edges`, a plain-torch search).
An edge vector d = r_j + n L − r_i (n ∈ Z³) enters through

* spherical harmonics Y_l(d̂) for l ≤ ``lmax``, softened near d = 0 to
  P_l(d) / (|d|² + ε²)^{l/2} (P_l the homogeneous harmonic polynomial, ε = 0.1 Å) so that they
  stay smooth when two atoms meet;
* Gaussian radial features of |d| whose learnt weights are multiplied by a polynomial envelope
  that vanishes with two derivatives at the cutoff, so an edge enters or leaves the sphere
  smoothly.

Atom features are e3nn irreps ``C×0e + C/2×1o + C/4×2e`` (``hidden`` = C, up to ``lmax``).
A layer sums tensor-product messages h_j ⊗ Y(d) (e3nn's "uvu" paths, one weight per path and
channel from the radial features; :class:`EdgeTensorProduct`), mixes them with the atom's own
features and the crystal's conditioning (time and standardised lattice parameters, scalars),
applies a gated nonlinearity, adds the result to its input and normalises each degree's block
by its RMS (:class:`EquivariantRMSNorm`, which keeps features bounded on noisy cells far from
the data, as LayerNorm does in the invariant net). Heads: a per-atom vector
(1o) — a Cartesian velocity v — and, from pooled scalars, the 6 lattice-parameter velocities
and optionally type logits.

The Cartesian velocity becomes a fractional one by v_f = v L̃⁻¹ with L̃ = L / |det L|^{1/3}
(the cell at unit volume, so v has the scale of fractional velocities for any cell size).
Under a rotation R of the frame (L → L Rᵀ, r → r Rᵀ) the features rotate, v → v Rᵀ, and
v_f = v Rᵀ (L̃ Rᵀ)⁻¹ = v L̃⁻¹ does not change: the fractional outputs, like the lattice ones, are
rotation-invariant, as the CSP representation requires. Under the inversion r → −r (the same
lattice, f → −f) v_f → −v_f. The outputs are also permutation-equivariant per atom and
invariant to a global fractional translation and to the choice of periodic image of any atom:
edges depend only on the fractional differences modulo 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import Tensor, nn

from flowmatch.geometry import ProductPoint, Segments
from flowmatch.models.embedding import SinusoidalTimeEmbedding
from flowmatch.plugins.crystal.model import (
    condition_context,
    make_property_embedding,
    register_lattice_inputs,
)
from flowmatch.plugins.crystal.representation import NUM_ELEMENTS, lattice_from_params

__all__ = ["EdgeTensorProduct", "EquivariantCrystalNet", "lattice_matrix", "periodic_edges"]

_MIN_HEIGHT = 1e-3
"""Smallest c_z / c of a cell built by :func:`lattice_matrix` (see there)."""
_SOFT_LENGTH = 0.1
"""ε (Å) of the softened spherical harmonics P_l(d) / (|d|² + ε²)^{l/2}."""


def lattice_matrix(params: Tensor) -> Tensor:
    """Lattice parameters y [..., 6] (representation.py) → L [..., 3, 3], rows a, b, c.

    Canonical orientation: a along x, b in the xy plane, c with a positive z component. Three
    angles each in (60°, 120°) need not describe a cell (α = β = γ = 120° is flat); a noisy
    state mid-flow can be such a triple, and its c then gets the z component
    c · 10⁻³ (a nearly flat cell) instead of an imaginary one.
    """
    lengths, angles = lattice_from_params(params)
    cos = torch.cos(torch.deg2rad(angles))
    cos_a, cos_b, cos_g = cos.unbind(-1)
    sin_g = torch.sin(torch.deg2rad(angles[..., 2]))
    a, b, c = lengths.unbind(-1)
    c_y = (cos_a - cos_b * cos_g) / sin_g
    c_z = (1 - cos_b ** 2 - c_y ** 2).clamp_min(_MIN_HEIGHT ** 2).sqrt()
    zero = torch.zeros_like(a)
    return torch.stack([torch.stack([a, zero, zero], -1),
                        torch.stack([b * cos_g, b * sin_g, zero], -1),
                        torch.stack([c * cos_b, c * c_y, c * c_z], -1)], -2)


def periodic_edges(lattice: Tensor, coords: Tensor, segments: Segments, cutoff: float, *,
                   max_images: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """Directed edges to periodic images within ``cutoff``: (i, j, d) with d = r_j + n L − r_i.

    ``lattice`` [S, 3, 3] (rows = lattice vectors, Å), ``coords`` [N, 3] fractional (any
    image), ``segments`` the crystal of each atom. Every pair (i, j) of one crystal takes the
    fractional difference reduced to [−½, ½]³ and adds the integer offsets n with
    |n_k| ≤ min(⌊cutoff / h_k + ½⌋, ``max_images``), h_k the cell's height across face k —
    enough for every image within the cutoff unless that bound caps it (cells thinner than
    about cutoff / ``max_images``, which only noisy states reach; their farthest images are
    then left out, the same way whatever the atoms' images or order). The self-edge (i = j,
    n = 0) is excluded. The offsets are enumerated per crystal (ragged), so the work is
    Σ_s n_s² ∏_k (2 n_k + 1) candidates. Returns i, j [E] and d [E, 3] (differentiable).
    """
    if lattice.dim() != 3 or lattice.shape[1:] != (3, 3) \
            or lattice.shape[0] != segments.num_segments:
        raise ValueError(f"lattice must have shape [{segments.num_segments}, 3, 3], got "
                         f"{tuple(lattice.shape)}")
    if coords.shape != (segments.num_rows, 3):
        raise ValueError(f"coords must have shape [{segments.num_rows}, 3], got "
                         f"{tuple(coords.shape)}")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff!r}")
    i, j = segments.pairs(self_loops=True)
    owner = segments.index[i]
    with torch.no_grad():
        lat = lattice.detach()
        delta = coords[j].detach() - coords[i].detach()
        delta = delta - torch.round(delta)
        faces = torch.linalg.cross(lat.roll(-1, dims=1), lat.roll(-2, dims=1))  # b×c, c×a, a×b
        heights = torch.linalg.det(lat).abs()[:, None] / faces.norm(dim=-1)
        reach = torch.nan_to_num(torch.floor(cutoff / heights + 0.5), nan=0.0)
        reach = reach.clamp(0, max_images).long()  # [S, 3]
        width = 2 * reach + 1
        per_pair = width.prod(1)[owner]
        pair = torch.repeat_interleave(torch.arange(i.shape[0], device=i.device), per_pair)
        local = torch.arange(pair.shape[0], device=i.device) - torch.repeat_interleave(
            torch.cumsum(per_pair, 0) - per_pair, per_pair)
        w, r = width[owner[pair]], reach[owner[pair]]
        shift = torch.stack([local % w[:, 0], (local // w[:, 0]) % w[:, 1],
                             local // (w[:, 0] * w[:, 1])], 1) - r
        vec = torch.einsum("ek,ekc->ec", delta[pair] + shift.to(delta.dtype),
                           lat[owner[pair]])
        keep = (vec.square().sum(1) < cutoff ** 2) & ((i[pair] != j[pair]) | (shift != 0).any(1))
        pair, shift = pair[keep], shift[keep]
    ei, ej = i[pair], j[pair]
    delta = coords[ej] - coords[ei]
    delta = delta - torch.round(delta.detach())
    vec = torch.einsum("ek,ekc->ec", delta + shift.to(delta.dtype), lattice[owner[pair]])
    return ei, ej, vec


def _envelope(x: Tensor) -> Tensor:
    """1 − 28x⁶ + 48x⁷ − 21x⁸ on [0, 1), 0 beyond: 1 at 0, zero value, slope and curvature
    at x = 1."""
    x = x.clamp(0, 1)
    x6 = x ** 6
    return 1 - 28 * x6 + 48 * x6 * x - 21 * x6 * x * x


class EdgeTensorProduct(nn.Module):
    """e3nn's ``o3.TensorProduct(irreps_in, sh, out, "uvu" paths, shared_weights=False)`` on
    the edges, summed into the receiving atoms, for features of natural parity (l, (−1)^l).

    Paths: every (input irrep l₁, harmonic l₂) → l₃ ≤ ``lmax`` with |l₁ − l₂| ≤ l₃ ≤ l₁ + l₂
    and l₁ + l₂ + l₃ even (so l₃ has natural parity too), in e3nn's instruction order, each
    with its own output block (``irreps_out``). Edge e = (i ← j) adds
    √(2l₃+1) · w_{e,u} · Σ_{ab} C^{l₁l₂l₃}_{abc} x_{j,u,a} Y_{e,b} to atom i's block (C = e3nn's
    Wigner 3j; ``w`` [E, weight_numel] in e3nn's layout): the numbers of e3nn's module (tested).
    The weight commutes with the contraction, so each input block takes one batched product
    with the couplings Σ_b C_{abc} Y_{e,b} of all its paths (computed once per forward and
    shared by the layers, :meth:`couplings`), and features stay [E, mul, 2l+1] blocks instead
    of one flat [E, dim] tensor sliced per path. Measured on perov-5 batches of 256 (one
    thread, CPU time of a training step of the whole network, hidden 32 / 64): 0.55 / 1.52 s
    against 0.62 / 1.92 s with ``o3.TensorProduct``.
    """

    def __init__(self, irreps_in: o3.Irreps, lmax: int) -> None:
        super().__init__()
        self.irreps_in, self.lmax = o3.Irreps(irreps_in), lmax
        if any(ir.p != (-1) ** ir.l or ir.l > lmax for _, ir in self.irreps_in):
            raise ValueError(f"irreps_in must have natural parity and l ≤ {lmax}, got "
                             f"{self.irreps_in}")
        out, self.block_paths = [], []
        for mul, ir in self.irreps_in:
            paths = self.paths_of(ir.l, lmax)
            self.block_paths.append(paths)
            out += [(mul, (l3, (-1) ** l3)) for _, l3 in paths]
        self.irreps_out = o3.Irreps(out)
        self.weight_numel = sum(mul * len(p) for (mul, _), p in
                                zip(self.irreps_in, self.block_paths, strict=True))

    @staticmethod
    def paths_of(l1: int, lmax: int) -> list[tuple[int, int]]:
        """(l₂, l₃) of the paths from an input of degree l₁, in e3nn's order."""
        return [(l2, l3) for l2 in range(lmax + 1) for l3 in range(abs(l1 - l2),
                                                                   min(l1 + l2, lmax) + 1)
                if (l1 + l2 + l3) % 2 == 0]

    @classmethod
    def couplings(cls, sh: Tensor, lmax: int) -> list[Tensor]:
        """For each l₁ ≤ lmax: √(2l₃+1) Σ_b C^{l₁l₂l₃}_{abc} Y_{e,b} of its paths side by side,
        [E, 2l₁+1, Σ(2l₃+1)] (``sh`` [E, (lmax+1)²] in e3nn's order)."""
        harmonics = sh.split([2 * l + 1 for l in range(lmax + 1)], dim=1)
        out = []
        for l1 in range(lmax + 1):
            out.append(torch.cat([
                math.sqrt(2 * l3 + 1) * torch.einsum(
                    "eb,abc->eac", harmonics[l2],
                    o3.wigner_3j(l1, l2, l3, dtype=sh.dtype, device=sh.device))
                for l2, l3 in cls.paths_of(l1, lmax)], dim=2))
        return out

    def forward(self, x: Tensor, i: Tensor, j: Tensor, couplings: list[Tensor],
                weights: Tensor) -> Tensor:
        """x [N, irreps_in.dim] → Σ over edges into each atom [N, irreps_out.dim]."""
        pieces = x.split([mul * ir.dim for mul, ir in self.irreps_in], dim=1)
        # split, not slices: a slice's backward fills a zero tensor of the whole [E, width]
        per_block = weights.split([mul * len(p) for (mul, _), p in
                                   zip(self.irreps_in, self.block_paths, strict=True)], dim=1)
        parts = []
        for piece, w, (mul, ir), paths in zip(pieces, per_block, self.irreps_in,
                                              self.block_paths, strict=True):
            xj = piece.reshape(-1, mul, ir.dim)[j]  # [E, mul, 2l1+1]
            coupling = couplings[ir.l]  # [E, 2l1+1, Σ(2l3+1)]
            prod = xj * coupling if ir.l == 0 else torch.bmm(xj, coupling)
            w = w.reshape(-1, len(paths), mul, 1)  # [E, paths, mul, 1]
            for n, p in enumerate(prod.split([2 * l3 + 1 for _, l3 in paths], dim=2)):
                agg = p.new_zeros(x.shape[0], mul, p.shape[2]).index_add_(0, i, p * w[:, n])
                parts.append(agg.flatten(1))
        return torch.cat(parts, 1)


class EquivariantRMSNorm(nn.Module):
    """Per atom and degree, the irrep block divided by a root-mean-square, times a learnt
    per-channel gain: scalars h_u ← g_u h_u / √(mean_u h² + 10⁻⁶) (LayerNorm without
    centring); l > 0 blocks h_{u,m} ← g_u h_{u,m} / √(mean_{u,m} h² + 1) — the identity for
    small features (so a nearly symmetric environment keeps its small vectors small), a unit
    scale for large ones. Mean squares are rotation-invariant, so the map is equivariant; like
    the invariant net's LayerNorm it keeps features bounded whatever the input (noisy cells
    far from the data)."""

    def __init__(self, irreps: o3.Irreps) -> None:
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.gains = nn.ParameterList(nn.Parameter(torch.ones(mul)) for mul, _ in self.irreps)

    def forward(self, h: Tensor) -> Tensor:
        out = []
        for piece, (mul, ir), gain in zip(h.split([m * i.dim for m, i in self.irreps], dim=1),
                                          self.irreps, self.gains, strict=True):
            block = piece.reshape(-1, mul, ir.dim)
            floor = 1e-6 if ir.l == 0 else 1.0
            rms = (block.square().mean(dim=(1, 2), keepdim=True) + floor).sqrt()
            out.append((block / rms * gain[:, None]).flatten(1))
        return torch.cat(out, 1)


class _Interaction(nn.Module):
    """h_i ← Norm(skip(h_i) + Gate(W_self h_i + W_msg m_i / √k + W_c c_i)) with the messages
    m_i = Σ_j h_j ⊗_{w(|d_ij|)} Y(d_ij) and the crystal's conditioning c_i."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, lmax: int,
                 num_basis: int, radial_hidden: int, cond_dim: int, num_neighbors: float
                 ) -> None:
        super().__init__()
        self.tp = EdgeTensorProduct(irreps_in, lmax)
        self.radial = nn.Sequential(nn.Linear(num_basis, radial_hidden), nn.SiLU(),
                                    nn.Linear(radial_hidden, self.tp.weight_numel))
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e")
        self.gate = Gate(scalars, [nn.functional.silu], gates, [torch.sigmoid], gated)
        self.message = o3.Linear(self.tp.irreps_out, self.gate.irreps_in)
        self.own = o3.Linear(irreps_in, self.gate.irreps_in)
        self.cond = o3.Linear(o3.Irreps(f"{cond_dim}x0e"), self.gate.irreps_in, biases=True)
        self.skip = None if irreps_in == irreps_out else o3.Linear(irreps_in, irreps_out)
        self.scale = 1.0 / math.sqrt(num_neighbors)
        self.norm = EquivariantRMSNorm(irreps_out)

    def forward(self, h: Tensor, i: Tensor, j: Tensor, couplings: list[Tensor], radial: Tensor,
                envelope: Tensor, cond: Tensor) -> Tensor:
        weights = self.radial(radial) * envelope[:, None]
        agg = self.tp(h, i, j, couplings, weights)
        update = self.gate(self.own(h) + self.message(agg * self.scale) + self.cond(cond))
        return self.norm((h if self.skip is None else self.skip(h)) + update)


class EquivariantCrystalNet(nn.Module):
    """E(3)-equivariant velocity field on ragged crystal batches (see the module docstring):
    ``net(x, t) -> {"coords", "lattice"[, "types"]}``, the interface of
    :class:`~flowmatch.plugins.crystal.model.CrystalVelocityNet`.

    ``x`` is a :class:`~flowmatch.geometry.ProductPoint` with ``lattice`` [S, 6], ragged
    ``coords`` [N, 3] (fractional) and ``types`` [N] (tokens; the mask token ``num_states − 1``
    is allowed when ``num_states`` is 101); ``t`` has shape [S]. Returns fractional coordinate
    velocities [N, 3], lattice-parameter velocities [S, 6] and, with ``predict_types``, type
    logits [N, 100]. :meth:`cartesian` exposes the Cartesian velocity before it is made
    fractional (for the equivariance tests).

    The defaults (l ≤ 1, hidden 64, 3 layers, cutoff 4.5 Å) did best at equal training time in
    benchmarks/crystal_networks.py (perov-5, 300 CPU seconds: ahead of l ≤ 2 with hidden 32,
    which costs 25 % more per step).

    Args:
        hidden: scalar channels C; the l = 1 and l = 2 features get C/2 and C/4 channels.
        layers: number of interaction layers.
        lmax: largest degree of the spherical harmonics and the features (1 or 2).
        cutoff: radius of the periodic neighbourhood in Å.
        num_basis: Gaussian radial features of the edge length.
        max_images: cap on the image offsets per axis (:func:`periodic_edges`).
        num_neighbors: messages are summed and divided by √num_neighbors.
        time_dim: width of the sinusoidal time embedding.
        lattice_loc: mean that standardises the lattice parameters for the conditioning
            (default 0; pass the training set's).
        lattice_scale: standard deviation of that standardisation (default 1).
        num_states: input vocabulary of the type embedding (100 elements, 101 with a mask).
        predict_types: add the per-atom type head (de novo generation).
        num_properties, property_loc, property_scale: conditioning on P scalar properties
            per crystal, as in :class:`~flowmatch.plugins.crystal.model.CrystalVelocityNet`.
    """

    kind = "equivariant"

    def __init__(self, hidden: int = 64, layers: int = 3, *, lmax: int = 1, cutoff: float = 4.5,
                 num_basis: int = 16, max_images: int = 3, num_neighbors: float = 16.0,
                 time_dim: int = 64, lattice_loc: Sequence[float] | Tensor | None = None,
                 lattice_scale: Sequence[float] | Tensor | None = None,
                 num_states: int = NUM_ELEMENTS, predict_types: bool = False,
                 num_properties: int = 0,
                 property_loc: Sequence[float] | Tensor | None = None,
                 property_scale: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        for name, value, lo in (("hidden", hidden, 4), ("layers", layers, 1), ("lmax", lmax, 1),
                                ("num_basis", num_basis, 2), ("max_images", max_images, 1),
                                ("time_dim", time_dim, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer ≥ {lo}, got {value!r}")
        if lmax > 2:
            raise ValueError(f"lmax must be 1 or 2, got {lmax}")
        for name, value in (("cutoff", cutoff), ("num_neighbors", num_neighbors)):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0
                                               and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        register_lattice_inputs(self, num_states, lattice_loc, lattice_scale)
        self.register_buffer("centers", torch.linspace(0, float(cutoff), num_basis),
                             persistent=False)
        self.hidden, self.lmax, self.cutoff = hidden, lmax, float(cutoff)
        self.num_basis, self.max_images = num_basis, max_images
        self.num_neighbors, self.time_dim = float(num_neighbors), time_dim
        self.num_states, self.predict_types = num_states, predict_types

        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)  # 0e + 1o (+ 2e)
        self.irreps_hidden = o3.Irreps([(max(hidden >> l, 1), (l, (-1) ** l))
                                        for l in range(lmax + 1)])
        self.embed = nn.Embedding(num_states, hidden)
        self.time = nn.Sequential(SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, hidden),
                                  nn.SiLU(), nn.Linear(hidden, hidden))
        self.condition = nn.Sequential(nn.Linear(hidden + 6, hidden), nn.SiLU(),
                                       nn.Linear(hidden, hidden))
        irreps_in = o3.Irreps(f"{hidden}x0e")
        blocks = []
        for _ in range(layers):
            blocks.append(_Interaction(irreps_in, self.irreps_hidden, lmax, num_basis, hidden,
                                       hidden, num_neighbors))
            irreps_in = self.irreps_hidden
        self.layers = nn.ModuleList(blocks)
        self.coords_head = o3.Linear(self.irreps_hidden, o3.Irreps("1x1o"))
        self.lattice_head = nn.Sequential(nn.Linear(2 * hidden + 6, hidden), nn.SiLU(),
                                          nn.Linear(hidden, 6))
        self.types_head = nn.Linear(hidden, NUM_ELEMENTS) if predict_types else None
        self.properties = make_property_embedding(num_properties, hidden, property_loc,
                                                  property_scale)

    @property
    def num_properties(self) -> int:
        return 0 if self.properties is None else self.properties.num_properties

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this network's shape (with ``kind``); the lattice
        standardisation, ``num_states`` and ``predict_types`` are the caller's."""
        return {"kind": self.kind, "hidden": self.hidden, "layers": len(self.layers),
                "lmax": self.lmax, "cutoff": self.cutoff, "num_basis": self.num_basis,
                "max_images": self.max_images, "num_neighbors": self.num_neighbors,
                "time_dim": self.time_dim, "num_properties": self.num_properties}

    def _edge_features(self, vec: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        length2 = vec.square().sum(1)
        length = length2.sqrt()
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=False,
                                    normalization="component")
        soft = (length2 + _SOFT_LENGTH ** 2).rsqrt()
        parts = [y * soft[:, None] ** l for l, y in
                 enumerate(sh.split([2 * l + 1 for l in range(self.lmax + 1)], dim=1))]
        width = self.cutoff / (self.num_basis - 1)
        radial = torch.exp(-((length[:, None] - self.centers.to(vec.dtype)) / width) ** 2)
        return torch.cat(parts, 1), radial, _envelope(length / self.cutoff)

    def cartesian(self, lattice: Tensor, coords: Tensor, types: Tensor, t: Tensor,
                  segments: Segments, params: Tensor, cond: Tensor | None = None
                  ) -> dict[str, Tensor]:
        """The network on explicit Cartesian cells: ``lattice`` L [S, 3, 3] (rows, Å, any
        orientation), fractional ``coords`` [N, 3], ``types`` [N], ``t`` [S] and the cells'
        parameters ``params`` [S, 6] (invariants, for the conditioning) and optionally the
        properties ``cond`` [S, P] of a conditional network. Returns the Cartesian
        velocities ``"vectors"`` [N, 3] (rotating with L), ``"lattice"`` [S, 6][, ``"types"``]."""
        dtype = self.lattice_loc.dtype
        lattice, coords = lattice.to(dtype), coords.to(dtype)
        # asinh: the standardised parameters as they are near the data, logarithmic far out
        # (a noisy angle 100 standard deviations away must not swamp the network)
        standard = torch.asinh((params.to(dtype) - self.lattice_loc) / self.lattice_scale)
        i, j, vec = periodic_edges(lattice, coords, segments, self.cutoff,
                                   max_images=self.max_images)
        sh, radial, envelope = self._edge_features(vec)
        couplings = EdgeTensorProduct.couplings(sh, self.lmax)
        context = self.time(t.to(dtype)) + condition_context(self, cond, segments.num_segments)
        cond = segments.broadcast(self.condition(torch.cat([context, standard], 1)))
        h = self.embed(types) + cond
        for layer in self.layers:
            h = layer(h, i, j, couplings, radial, envelope, cond)
        scalars = h[:, :self.hidden]
        pooled = torch.cat([segments.mean(scalars),
                            segments.sum(scalars) / math.sqrt(self.hidden), standard], 1)
        out = {"vectors": self.coords_head(h), "lattice": self.lattice_head(pooled)}
        if self.types_head is not None:
            out["types"] = self.types_head(scalars)
        return out

    def forward(self, x: ProductPoint, t: Tensor, cond: Tensor | None = None
                ) -> dict[str, Tensor]:
        if not isinstance(x, ProductPoint) or x.segments is None:
            raise ValueError("x must be a ProductPoint with segments (a ragged crystal batch)")
        seg = x.segments
        if t.shape != (seg.num_segments,):
            raise ValueError(f"t must have one time per crystal, shape [{seg.num_segments}], "
                             f"got {tuple(t.shape)}")
        params = x["lattice"].to(self.lattice_loc.dtype)
        lattice = lattice_matrix(params)
        out = self.cartesian(lattice, x["coords"], x["types"], t, seg, params, cond)
        unit = lattice / torch.linalg.det(lattice).abs().pow(1 / 3)[:, None, None]
        # v_f = v L̃⁻¹ (row vectors); a cell whose lengths overflowed gets non-finite outputs
        # for its own atoms rather than an error for the batch
        to_frac = torch.linalg.inv_ex(unit).inverse
        coords = torch.einsum("nc,nck->nk", out.pop("vectors"), seg.broadcast(to_frac))
        return {"coords": coords, **out}

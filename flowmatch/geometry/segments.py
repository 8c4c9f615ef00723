"""Ragged batches: rows of a factor grouped into samples by a segment index.

A batch of crystals with 5, 12 and 3 atoms stores its 20 atom rows concatenated, as graph
libraries do, with ``index = [0]*5 + [1]*12 + [2]*3`` saying which crystal each row belongs to.
:class:`Segments` holds that index and the reductions every layer shares: per-sample sums and
means of row values, the broadcast of a per-sample value (a time, a lattice) to its rows, and
the removal of each sample's mean (a translation-free velocity).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Segments:
    """Assignment of N rows to S samples: ``index`` [N] (int64, values in [0, S)).

    Rows need not be sorted by sample, and a sample may have no rows (its sum is 0 and its
    mean is 0). Build one from sizes with :meth:`from_sizes`.
    """

    __slots__ = ("index", "num_segments", "_counts")

    def __init__(self, index: Tensor, num_segments: int | None = None) -> None:
        if not torch.is_tensor(index) or index.dim() != 1 or index.is_floating_point() \
                or index.dtype == torch.bool:
            raise ValueError("index must be a 1-D integer tensor (one sample id per row), got "
                             f"{getattr(index, 'dtype', type(index).__name__)} of shape "
                             f"{tuple(getattr(index, 'shape', ()))}")
        index = index.long()
        lo = int(index.min()) if index.numel() else 0
        hi = int(index.max()) + 1 if index.numel() else 0
        if num_segments is None:
            num_segments = hi
        if isinstance(num_segments, bool) or not isinstance(num_segments, int) or num_segments < 0:
            raise ValueError(f"num_segments must be an integer ≥ 0, got {num_segments!r}")
        if lo < 0 or hi > num_segments:
            raise ValueError(f"index values must lie in [0, {num_segments}), got [{lo}, {hi - 1}]")
        self.index = index
        self.num_segments = num_segments
        self._counts: Tensor | None = None

    @classmethod
    def from_sizes(cls, sizes: Sequence[int] | Tensor,
                   device: torch.device | str | None = None) -> Segments:
        """Segments of consecutive rows: sample i owns the next ``sizes[i]`` rows."""
        sizes = torch.as_tensor(sizes, dtype=torch.long, device=device)
        if sizes.dim() != 1 or (sizes.numel() and int(sizes.min()) < 0):
            raise ValueError(f"sizes must be a 1-D sequence of integers ≥ 0, got {sizes.tolist()}")
        index = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)
        seg = cls(index, int(sizes.numel()))
        seg._counts = sizes
        return seg

    # -- reductions -----------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return int(self.index.shape[0])

    def counts(self) -> Tensor:
        """Rows per sample, [S] int64."""
        if self._counts is None:
            self._counts = torch.bincount(self.index, minlength=self.num_segments)
        return self._counts

    def _check_rows(self, name: str, values: Tensor) -> None:
        if values.dim() < 1 or values.shape[0] != self.num_rows:
            raise ValueError(f"{name} must have one row per segment member ({self.num_rows}), "
                             f"got shape {tuple(values.shape)}")

    def sum(self, values: Tensor) -> Tensor:
        """Σ of the rows of each sample: [N, ...] → [S, ...]."""
        self._check_rows("values", values)
        out = values.new_zeros((self.num_segments, *values.shape[1:]))
        return out.index_add(0, self.index.to(values.device), values)

    def mean(self, values: Tensor) -> Tensor:
        """Mean of the rows of each sample (0 for a sample without rows): [N, ...] → [S, ...]."""
        total = self.sum(values)
        counts = self.counts().to(device=values.device, dtype=total.dtype if
                                  total.is_floating_point() else torch.get_default_dtype())
        return total / counts.clamp_min(1).reshape(-1, *([1] * (total.dim() - 1)))

    def broadcast(self, per_sample: Tensor) -> Tensor:
        """Each row gets its sample's value: [S, ...] → [N, ...]."""
        if per_sample.dim() < 1 or per_sample.shape[0] != self.num_segments:
            raise ValueError(f"per_sample must have one row per sample ({self.num_segments}), "
                             f"got shape {tuple(per_sample.shape)}")
        return per_sample.index_select(0, self.index.to(per_sample.device))

    def center(self, values: Tensor) -> Tensor:
        """Rows minus their sample's mean: the orthogonal projection onto mean-free rows."""
        return values - self.broadcast(self.mean(values))

    def pairs(self, *, self_loops: bool = False) -> tuple[Tensor, Tensor]:
        """Every ordered pair of rows within one sample: (i, j), each [Σ_s n_s²] (or
        [Σ_s n_s(n_s − 1)] without self-loops) — the fully connected graph of each sample."""
        order = torch.argsort(self.index, stable=True)
        counts = self.counts()
        starts = torch.cumsum(counts, 0) - counts
        pair_counts = counts * counts
        owner = torch.repeat_interleave(torch.arange(self.num_segments, device=counts.device),
                                        pair_counts)
        local = torch.arange(int(pair_counts.sum()), device=counts.device) - \
            torch.repeat_interleave(torch.cumsum(pair_counts, 0) - pair_counts, pair_counts)
        n = counts[owner]
        a, b = starts[owner] + local // n.clamp_min(1), starts[owner] + local % n.clamp_min(1)
        i, j = order.to(counts.device)[a], order.to(counts.device)[b]
        if not self_loops:
            keep = i != j
            i, j = i[keep], j[keep]
        return i.to(self.index.device), j.to(self.index.device)

    # -- bookkeeping ----------------------------------------------------------------------
    def to(self, device: torch.device | str) -> Segments:
        if self.index.device == torch.device(device):
            return self
        out = Segments.__new__(Segments)
        out.index, out.num_segments = self.index.to(device), self.num_segments
        out._counts = None if self._counts is None else self._counts.to(device)
        return out

    def select(self, samples: Sequence[int] | Tensor) -> tuple[Segments, Tensor]:
        """(segments of the chosen samples, renumbered 0..k−1 in the given order; row indices).

        The rows come out grouped by sample in the order of ``samples``, so
        ``values[rows]`` is the chosen samples' rows consistent with the new segments.
        """
        samples = torch.as_tensor(samples, dtype=torch.long, device=self.index.device)
        order = torch.argsort(self.index, stable=True)
        starts = torch.cumsum(self.counts(), 0) - self.counts()
        counts = self.counts()[samples]
        rows = torch.cat([order[int(s):int(s) + int(c)]
                          for s, c in zip(starts[samples].tolist(), counts.tolist(), strict=True)]
                         ) if samples.numel() else self.index.new_zeros(0)
        return Segments.from_sizes(counts, device=self.index.device), rows

    @staticmethod
    def cat(parts: Sequence[Segments]) -> Segments:
        """Segments of row-concatenated batches: sample ids are offset batch by batch."""
        offset, pieces = 0, []
        for p in parts:
            pieces.append(p.index + offset)
            offset += p.num_segments
        index = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
        return Segments(index, offset)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Segments) and self.num_segments == other.num_segments and \
            self.index.shape == other.index.shape and bool(torch.equal(
                self.index, other.index.to(self.index.device)))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Segments(rows={self.num_rows}, samples={self.num_segments})"

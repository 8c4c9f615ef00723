"""Data-parallel training and sharded evaluation on ``torch.distributed``.

:func:`~flowmatch.training.fit` calls :func:`setup` and runs data-parallel whenever it returns a
:class:`DistributedRun`: under ``torchrun`` (whose ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``
variables say so) or in a process group the caller initialised. The other functions shard
work that is not training — sampling, likelihoods, metrics — over the same ranks:

* :func:`shard_bounds` / :func:`shard` give this rank its contiguous part of n items or of a
  batch (a Tensor, a :class:`~flowmatch.geometry.ProductPoint` of ragged samples, ...);
* :func:`gather` / :func:`gather_objects` put every rank's results back together in rank
  order, so that the shards of ``shard`` come back as the whole;
* :func:`get_rank`, :func:`get_world_size`, :func:`is_main_process` and :func:`barrier` are
  safe to call in a plain single process (rank 0 of 1; the barrier does nothing).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowmatch.geometry.product import ProductPoint
from flowmatch.geometry.segments import Segments
from flowmatch.paths.base import PathSample
from flowmatch.paths.product import ProductPathSample

__all__ = [
    "DistributedRun", "setup", "is_distributed", "get_rank", "get_world_size",
    "is_main_process", "barrier", "shard_bounds", "take_samples", "shard", "gather",
    "gather_objects", "broadcast_object",
]


@dataclass(frozen=True)
class DistributedRun:
    """The process group a data-parallel :func:`~flowmatch.training.fit` runs in.

    ``device`` is this rank's device (for CUDA, ``cuda:LOCAL_RANK``); ``cpu_group`` is the
    group for small control messages on CPU tensors (None: the default group can carry them);
    ``initialised_here`` says whether :func:`setup` created the default process group.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    cpu_group: Any = None
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that logs and writes checkpoints."""
        return self.rank == 0


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """Whether a process group of more than one rank is initialised."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 outside a process group)."""
    return _dist().get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    return _dist().get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 and in a single process: the one that logs and writes files."""
    return get_rank() == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") \
            from None


_CPU_GROUPS: dict[int, Any] = {}


def _cpu_group() -> Any:
    """A group for CPU-tensor collectives: the default one when its backend has gloo (plain
    gloo, or "cpu:gloo,cuda:nccl"); else a gloo group over all ranks, created once."""
    dist = _dist()
    backend = str(dist.get_backend()).lower()
    if "gloo" in backend:
        return None
    key = id(dist.distributed_c10d._get_default_group())
    if key not in _CPU_GROUPS:
        _CPU_GROUPS[key] = dist.new_group(backend="gloo")
    return _CPU_GROUPS[key]


def _rank_device(device: torch.device | None, local_rank: int) -> torch.device | None:
    """``cuda`` without an index becomes this rank's GPU; anything else is kept."""
    if device is None or device.type != "cuda" or device.index is not None:
        return device
    count = torch.cuda.device_count()
    if local_rank < count:
        return torch.device("cuda", local_rank)
    if count == 1:  # one visible GPU per process (e.g. SLURM --gpus-per-task=1)
        return torch.device("cuda", 0)
    raise ValueError(f"LOCAL_RANK={local_rank} but this process sees {count} GPUs; launch at "
                     "most one process per visible GPU (torchrun --nproc_per_node)")


def setup(device: torch.device | str | None = None, *, required: bool = False
          ) -> DistributedRun | None:
    """The process group to train in, initialising it from torchrun's environment if needed.

    * A process group of more than one rank is already initialised: use it.
    * Else the environment says ``WORLD_SIZE`` > 1 (``torchrun``, or ``srun`` with the same
      variables): initialise the default group from it (``init_method="env://"``, which
      reads ``MASTER_ADDR`` / ``MASTER_PORT``) with backend ``gloo`` for a CPU ``device``, or
      ``cpu:gloo,cuda:nccl`` for CUDA; it stays initialised (for sharded sampling after
      training) and is destroyed at interpreter exit.
    * Else return None (one process), or raise if ``required``.

    ``device`` ("cuda" without an index becomes ``cuda:LOCAL_RANK``) is returned as the run's
    device; None means "where the model already is", decided by the caller.
    """
    dist = _dist()
    device = torch.device(device) if device is not None else None
    initialised_here = False
    if not (dist.is_available() and dist.is_initialized()):
        world = _env_int("WORLD_SIZE", 1)
        if world <= 1:
            if required:
                raise ValueError("distributed=True needs a process group: launch with torchrun "
                                 "(WORLD_SIZE > 1) or call torch.distributed."
                                 "init_process_group first")
            return None
        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world} asks for distributed training, but this "
                               "torch build has no torch.distributed")
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} is set but {missing} are not: launch with "
                             "torchrun, or set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
        device = _rank_device(device, _env_int("LOCAL_RANK", 0))
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        atexit.register(_destroy)
        initialised_here = True
    world = dist.get_world_size()
    if world <= 1:
        if required:
            raise ValueError("distributed=True, but the process group has one rank")
        return None
    local_rank = _env_int("LOCAL_RANK", 0)
    device = _rank_device(device, local_rank)
    if device is not None and device.type == "cuda" and not initialised_here:
        torch.cuda.set_device(device)
    return DistributedRun(rank=dist.get_rank(), world_size=world, local_rank=local_rank,
                          device=device if device is not None else torch.device("cpu"),
                          cpu_group=_cpu_group(), initialised_here=initialised_here)


def _destroy() -> None:
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing in a single process).

    A CPU all-reduce on a gloo group, so a NCCL job does not need to know the GPU.
    """
    if is_distributed():
        _dist().all_reduce(torch.zeros(1), group=_cpu_group())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank; ``obj`` itself alone."""
    if not is_distributed():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src, group=_cpu_group())
    return box[0]


def shard_bounds(n: int, rank: int | None = None, world_size: int | None = None
                 ) -> tuple[int, int]:
    """Rows [lo, hi) of n items that ``rank`` handles: contiguous, in rank order, the first
    n mod world_size ranks one more than the others (all of [0, n) in a single process)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer ≥ 0, got {n!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank!r}")
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def _num_samples(x: Any) -> int:
    if torch.is_tensor(x):
        return int(x.shape[0])
    if isinstance(x, ProductPoint):
        return x.num_samples
    if isinstance(x, ProductPathSample):
        return _num_samples(x.x1)
    if isinstance(x, PathSample):
        return int(x.x1.shape[0])
    if isinstance(x, Mapping) and x:
        return _num_samples(next(iter(x.values())))
    raise TypeError(f"cannot count the samples of a {type(x).__name__}")


class _Rows:
    """Which rows samples [lo, hi) of a batch occupy: ``dense`` for one row per sample,
    ``members`` (an index) and the renumbered ``segments`` for ragged factors."""

    def __init__(self, lo: int, hi: int, segments: Segments | None) -> None:
        self.dense = slice(lo, hi)
        self.segments = self.members = None
        if segments is not None:
            index = segments.index
            self.members = ((index >= lo) & (index < hi)).nonzero().squeeze(1)
            self.segments = Segments(index[self.members] - lo, hi - lo)

    def of(self, value: Any, ragged: bool) -> Any:
        if value is None or not torch.is_tensor(value):
            return value
        return value[self.members] if ragged else value[self.dense]

    def point(self, x: Mapping[str, Tensor], ragged: frozenset[str] = frozenset()) -> Any:
        data = {k: self.of(v, k in ragged) for k, v in x.items()}
        if isinstance(x, ProductPoint):
            return ProductPoint(data, segments=self.segments, ragged=x.ragged & set(data))
        return data

    def path_sample(self, s: PathSample, ragged: bool) -> PathSample:
        return dataclasses.replace(s, **{f.name: self.of(getattr(s, f.name), ragged)
                                         for f in dataclasses.fields(s)})


def take_samples(x: Any, lo: int, hi: int) -> Any:
    """Samples [lo, hi) of a batch, whatever its form.

    ``x`` may be a Tensor (rows lo:hi), a mapping of per-sample tensors, a
    :class:`~flowmatch.geometry.ProductPoint` (a ragged factor keeps the rows of the chosen
    samples, in their order, with renumbered segments), a
    :class:`~flowmatch.paths.PathSample` or a :class:`~flowmatch.paths.ProductPathSample`
    (each factor's fields the same way; the per-sample time too).
    """
    n = _num_samples(x)
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= n):
        raise ValueError(f"need 0 ≤ lo ≤ hi ≤ {n} (the batch's samples), got lo={lo!r}, "
                         f"hi={hi!r}")
    if torch.is_tensor(x):
        return x[lo:hi]
    if isinstance(x, PathSample):
        return _Rows(lo, hi, None).path_sample(x, False)
    if isinstance(x, ProductPathSample):
        layout = x.x1
        segments = layout.segments if isinstance(layout, ProductPoint) else None
        rows = _Rows(lo, hi, segments)
        ragged = layout.ragged if isinstance(layout, ProductPoint) else frozenset()
        parts = {k: rows.path_sample(s, k in ragged) for k, s in x.items()}
        t = {k: rows.of(v, k in ragged) for k, v in x.t.items()} if isinstance(x.t, Mapping) \
            else rows.of(x.t, False)
        return ProductPathSample(parts, t=t, layout=rows.point(layout, ragged), fixed=x.fixed)
    if isinstance(x, ProductPoint):
        return _Rows(lo, hi, x.segments).point(x, x.ragged)
    if isinstance(x, Mapping):
        return _Rows(lo, hi, None).point(x)
    raise TypeError(f"take_samples needs a Tensor, a mapping, a ProductPoint, a PathSample or "
                    f"a ProductPathSample, got {type(x).__name__}")


def shard(x: Any) -> Any:
    """This rank's contiguous part of a batch (:func:`shard_bounds` of its sample count)."""
    return take_samples(x, *shard_bounds(_num_samples(x)))


def gather(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, on every rank.

    Ranks may hold different numbers of rows (as :func:`shard_bounds` gives them), not
    different trailing shapes. In a single process, ``x`` itself.
    """
    if not torch.is_tensor(x) or x.dim() < 1:
        raise ValueError(f"gather needs a tensor with a leading row dimension, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if not is_distributed():
        return x
    dist = _dist()
    world = dist.get_world_size()
    rows = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(rows) for _ in range(world)]
    dist.all_gather(counts, rows)
    counts = [int(c) for c in counts]
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's list of picklable ``items`` concatenated in rank order, on every rank
    (e.g. generated structures); ``items`` itself in a single process."""
    if not isinstance(items, list):
        raise TypeError(f"items must be a list, got {type(items).__name__}")
    if not is_distributed():
        return items
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, items, group=_cpu_group())
    return [item for part in out for item in part]

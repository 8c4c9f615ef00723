"""Data-parallel ``fit``: two gloo processes on the CPU train what one process trains.

The two ranks are spawned with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) and call ``fit`` unchanged, so fit initialises the process group as
it does under torchrun. Every rank draws the global batch from the shared stream and trains
on its half, so the two-process run must reach the one-process run's parameters up to the
order of float sums: per-rank means averaged by DDP instead of one mean over the batch.

Tolerances. Summing in another order changes a float sum by about one unit in the last place
per addition; AdamW's division by √v can enlarge that where a gradient component is small. The
largest parameter differences measured after these runs (20 MLP steps, 10 crystal steps) were
1.2e-16 in float64 and 6e-8 in float32 (MLP and crystals alike), so the tests allow 1e-12 and
1e-5 — about 100× the measurement, for other CPUs' kernels — while a sample drawn or weighted
differently (e.g. per-rank seeds, or another seed) moves parameters by ~0.2 here.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from flowmatch.data import EightGaussians
from flowmatch.geometry import Discrete, Euclidean, FlatTorus, Product, ProductPoint, Segments
from flowmatch.models import MLP
from flowmatch.paths import (
    CondOTPath,
    CondOTScheduler,
    GeodesicPath,
    MixtureDiscretePath,
    ProductPath,
)
from flowmatch.training import distributed, fit, load_checkpoint

# the module, not the function that flowmatch.training re-exports under the same name
fit_module = importlib.import_module("flowmatch.training.fit")

WORLD = 2
STEPS = 20
MLP_KW = dict(steps=STEPS, batch_size=64, lr=1e-2, ema_decay=0.9, lr_schedule="cosine",
              warmup_steps=3, seed=7, progress=False, log_every=5)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(2, 32, 2)


# -- a small ragged crystal-like product (one lattice row per sample, 1–4 atoms each) whose
# atom types flow from mask tokens, as de novo crystals do: the path's token jumps are drawn
# from fit's generator too, over the global batch
TORUS = FlatTorus(3, period=1.0)
SPACE = Product(lattice=Euclidean(6), coords=TORUS, types=Discrete(4, source="mask"),
                mean_free=("coords",))
PATH = ProductPath(lattice=CondOTPath(), coords=GeodesicPath(TORUS),
                   types=MixtureDiscretePath(CondOTScheduler()))
CRYSTAL_KW = dict(steps=10, batch_size=8, lr=3e-3, ema_decay=0.9, seed=3, progress=False,
                  log_every=5)


def crystals(n: int, generator: torch.Generator) -> ProductPoint:
    sizes = torch.randint(1, 5, (n,), generator=generator)
    rows = int(sizes.sum())
    return ProductPoint({"lattice": torch.randn(n, 6, generator=generator) * 0.1 + 1.0,
                         "coords": torch.rand(rows, 3, generator=generator),
                         "types": torch.randint(4, (rows,), generator=generator)},
                        segments=Segments.from_sizes(sizes), ragged=("coords", "types"))


class CrystalField(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 4)  # 4 types and the mask token
        self.atom = nn.Sequential(nn.Linear(4 + 3 + 6 + 1, 32), nn.SiLU(), nn.Linear(32, 7))
        self.lattice = nn.Sequential(nn.Linear(6 + 3 + 1, 32), nn.SiLU(), nn.Linear(32, 6))

    def forward(self, x: ProductPoint, t: torch.Tensor) -> dict[str, torch.Tensor]:
        seg = x.segments
        h = torch.cat([self.embed(x["types"]), x["coords"], seg.broadcast(x["lattice"]),
                       seg.broadcast(t[:, None])], dim=1)
        coords, types = self.atom(h).split([3, 4], dim=1)
        pooled = seg.mean(coords)
        return {"coords": coords, "types": types,
                "lattice": self.lattice(torch.cat([x["lattice"], pooled, t[:, None]], 1))}


def crystal_field() -> nn.Module:
    torch.manual_seed(0)
    return CrystalField()


def _state(result) -> dict:
    return {"params": [p.detach().clone() for p in result.model.parameters()],
            "ema": [p.detach().clone() for p in result.ema_model.parameters()],
            "losses": list(result.losses), "steps": result.steps,
            "resumed_from": result.resumed_from}


def _crash_at(call: int):
    calls = {"n": 0}

    def sample_data(n, generator):
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError("simulated crash")
        return EightGaussians().sample(n, generator)

    return sample_data


# -- what each rank runs -----------------------------------------------------------------------
def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    out_dir = Path(out)
    writes: list[int] = []
    real_save = fit_module.save_checkpoint

    def recording_save(path, state):
        writes.append(int(state["step"]))
        return real_save(path, state)

    fit_module.save_checkpoint = recording_save
    data = EightGaussians().sample
    res: dict = {}
    # float32, with checkpoints every 10 steps (fit initialises the process group here)
    res["f32"] = _state(fit(mlp(), data, CondOTPath(), checkpoint_path=out_dir / "a.pt",
                            checkpoint_every=10, **MLP_KW))
    res["writes"] = list(writes)
    res["ranks"] = (distributed.get_rank(), distributed.get_world_size())
    # float64 with two micro-batches per rank: four shards of 16
    res["f64"] = _state(fit(mlp(), data, CondOTPath(), dtype=torch.float64,
                            grad_accum_steps=2, **MLP_KW))
    # a crash at the 15th draw, then a resume from the step-10 checkpoint under two processes
    try:
        fit(mlp(), _crash_at(15), CondOTPath(), checkpoint_path=out_dir / "b.pt",
            checkpoint_every=10, **MLP_KW)
    except RuntimeError as err:
        res["crash"] = str(err)
    distributed.barrier()
    if rank == 0:
        shutil.copy(out_dir / "b.pt", out_dir / "b10.pt")
    distributed.barrier()
    res["resumed"] = _state(fit(mlp(), data, CondOTPath(), checkpoint_path=out_dir / "b.pt",
                                checkpoint_every=10, **MLP_KW))
    # ragged product batches (crystals), as CrystalFlow.train passes them
    res["crystal"] = _state(fit(crystal_field(), crystals, PATH, SPACE, **CRYSTAL_KW))
    # a wall-clock budget: rank 0's clock decides, so both ranks stop at the same step
    res["budget"] = _state(fit(mlp(), data, CondOTPath(), batch_size=64, budget_s=0.5,
                               steps=10_000, progress=False))
    # sharding and gathering for evaluation
    x = torch.arange(11.0)[:, None]
    res["gather"] = distributed.gather(distributed.shard(x))
    res["objects"] = distributed.gather_objects([f"rank {rank}"])
    torch.save(res, out_dir / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Run ``_rank_main`` on two spawned processes once; each rank's results."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_main, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p.detach().double() - q.detach().double()).abs().max())
               for p, q in zip(a, b, strict=True))


# -- two processes -------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_two_ranks_reach_the_one_process_parameters(job):
    _, ranks = job
    assert [r["ranks"] for r in ranks] == [(0, 2), (1, 2)]
    data = EightGaussians().sample
    one = fit(mlp(), data, CondOTPath(), **MLP_KW)
    two = ranks[0]["f32"]
    assert two["steps"] == STEPS and len(two["losses"]) == STEPS
    assert _max_diff(two["params"], list(one.model.parameters())) < 1e-5
    assert _max_diff(two["ema"], list(one.ema_model.parameters())) < 1e-5
    # the logged loss is the global batch's mean on every rank
    assert torch.allclose(torch.tensor(two["losses"]), torch.tensor(one.losses), rtol=1e-5)
    one64 = fit(mlp(), data, CondOTPath(), dtype=torch.float64, **MLP_KW)
    assert _max_diff(ranks[0]["f64"]["params"], list(one64.model.parameters())) < 1e-12
    assert _max_diff(ranks[0]["f64"]["ema"], list(one64.ema_model.parameters())) < 1e-12


def test_parameters_and_ema_are_identical_on_every_rank(job):
    _, (r0, r1) = job
    for run in ("f32", "f64", "resumed", "crystal", "budget"):
        for key in ("params", "ema"):
            assert all(torch.equal(p, q) for p, q in zip(r0[run][key], r1[run][key],
                                                         strict=True)), (run, key)
        assert r0[run]["losses"] == r1[run]["losses"], run


def test_only_rank_0_writes_checkpoints(job):
    out, (r0, r1) = job
    assert r0["writes"] == [10, 20] and r1["writes"] == []
    assert load_checkpoint(out / "a.pt")["step"] == STEPS


def test_a_crashed_two_rank_run_resumes_bit_exactly(job):
    _, ranks = job
    for r in ranks:
        assert r["crash"] == "simulated crash"
        assert r["resumed"]["resumed_from"] == 10
        assert r["resumed"]["losses"] == r["f32"]["losses"]
        assert all(torch.equal(p, q) for p, q in zip(r["resumed"]["params"], r["f32"]["params"],
                                                     strict=True))


def test_a_two_rank_checkpoint_resumes_in_one_process(job):
    # the shared stream makes the run independent of the number of ranks, so one process
    # continues it (to float rounding); per-rank RNG states travel in the checkpoint
    out, (r0, _) = job
    state = load_checkpoint(out / "b10.pt")
    assert state["step"] == 10 and len(state["torch_rng_per_rank"]) == WORLD
    path = out / "single.pt"
    shutil.copy(out / "b10.pt", path)
    resumed = fit(mlp(), EightGaussians().sample, CondOTPath(), checkpoint_path=path,
                  checkpoint_every=10, **MLP_KW)
    assert resumed.resumed_from == 10
    assert _max_diff(r0["f32"]["params"], list(resumed.model.parameters())) < 1e-5


def test_ragged_crystal_batches_split_by_sample(job):
    _, (r0, _) = job
    one = fit(crystal_field(), crystals, PATH, SPACE, **CRYSTAL_KW)
    assert _max_diff(r0["crystal"]["params"], list(one.model.parameters())) < 1e-5
    assert torch.allclose(torch.tensor(r0["crystal"]["losses"]), torch.tensor(one.losses),
                          rtol=1e-5)


def test_a_budget_stops_every_rank_at_the_same_step(job):
    _, (r0, r1) = job
    assert r0["budget"]["steps"] == r1["budget"]["steps"] >= 1


def test_shards_gather_back_to_the_whole(job):
    _, (r0, r1) = job
    for r in (r0, r1):
        assert torch.equal(r["gather"], torch.arange(11.0)[:, None])
        assert r["objects"] == ["rank 0", "rank 1"]


# -- one process --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_gradient_accumulation_equals_one_large_batch(dtype, tol):
    data = EightGaussians().sample
    one = fit(mlp(), data, CondOTPath(), dtype=dtype, **MLP_KW)
    four = fit(mlp(), data, CondOTPath(), dtype=dtype, grad_accum_steps=4, **MLP_KW)
    assert _max_diff(list(four.model.parameters()), list(one.model.parameters())) < tol
    assert torch.allclose(torch.tensor(four.losses), torch.tensor(one.losses), rtol=tol)


def test_gradient_accumulation_of_ragged_batches():
    one = fit(crystal_field(), crystals, PATH, SPACE, dtype=torch.float64, **CRYSTAL_KW)
    two = fit(crystal_field(), crystals, PATH, SPACE, dtype=torch.float64, grad_accum_steps=2,
              **CRYSTAL_KW)
    assert _max_diff(list(two.model.parameters()), list(one.model.parameters())) < 1e-12


def test_take_samples_of_a_ragged_batch_keeps_each_samples_rows():
    x = crystals(5, torch.Generator().manual_seed(0))
    sizes = x.segments.counts().tolist()
    part = distributed.take_samples(x, 1, 3)
    assert part.num_samples == 2 and part.segments.counts().tolist() == sizes[1:3]
    lo = sum(sizes[:1])
    assert torch.equal(part["coords"], x["coords"][lo:lo + sum(sizes[1:3])])
    assert torch.equal(part["lattice"], x["lattice"][1:3])
    assert distributed.shard_bounds(11, 0, 2) == (0, 6)
    assert distributed.shard_bounds(11, 1, 2) == (6, 11)
    with pytest.raises(ValueError, match="lo ≤ hi"):
        distributed.take_samples(x, 3, 9)


def test_single_process_helpers_and_errors(monkeypatch):
    assert (distributed.get_rank(), distributed.get_world_size()) == (0, 1)
    assert distributed.is_main_process() and not distributed.is_distributed()
    distributed.barrier()
    x = torch.arange(4.0)[:, None]
    assert distributed.gather(x) is x and distributed.shard(x) is not None
    data = EightGaussians().sample
    with pytest.raises(ValueError, match="must be divisible by grad_accum_steps = 3"):
        fit(mlp(), data, CondOTPath(), steps=1, batch_size=64, grad_accum_steps=3,
            progress=False)
    with pytest.raises(ValueError, match="grad_accum_steps must be a positive integer"):
        fit(mlp(), data, CondOTPath(), steps=1, batch_size=64, grad_accum_steps=0,
            progress=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="distributed=True needs a process group"):
        fit(mlp(), data, CondOTPath(), steps=1, batch_size=64, distributed=True,
            progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        fit(mlp(), data, CondOTPath(), steps=1, batch_size=64, progress=False)
    # distributed=False ignores torchrun's environment: each process trains alone
    alone = fit(mlp(), data, CondOTPath(), steps=2, batch_size=64, distributed=False,
                progress=False)
    assert alone.steps == 2


# -- the real launcher ---------------------------------------------------------------------------
TORCHRUN_SCRIPT = '''
import sys
import torch
from flowmatch.data import EightGaussians
from flowmatch.models import MLP
from flowmatch.paths import CondOTPath
from flowmatch.training import distributed, fit

torch.set_num_threads(1)
torch.manual_seed(0)
result = fit(MLP(2, 32, 2), EightGaussians().sample, CondOTPath(), steps=20, batch_size=64,
             lr=1e-2, ema_decay=0.9, warmup_steps=3, seed=7, progress=False, log_every=5)
torch.save([p.detach() for p in result.model.parameters()],
           f"{sys.argv[1]}/rank{distributed.get_rank()}.pt")
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_runs_fit_unchanged(tmp_path):
    # measured: 9 s on 2 loaded cores (torchrun and two ranks each import torch)
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script),
                           str(tmp_path)], capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(torch.equal(p, q) for p, q in zip(*ranks, strict=True))
    kw = {k: v for k, v in MLP_KW.items() if k != "lr_schedule"}
    one = fit(mlp(), EightGaussians().sample, CondOTPath(), **kw)
    assert _max_diff(ranks[0], list(one.model.parameters())) < 1e-5

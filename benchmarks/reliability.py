"""Reliability report (issue 20): fault scenarios, a fuzz campaign over the data loaders, and
what argument validation costs.

    python benchmarks/reliability.py [--quick] [--json PATH] [--fuzz-seconds S] [--threads 1]

Fault scenarios (each passes or fails; "lost" counts checkpoints that did not survive):

* **kill during save** — a child process saves 8 MB checkpoints in a loop and reports each
  completed save; it is killed with SIGKILL at staggered moments. The checkpoint file must
  load whole (no torn tensor) and hold at least the last save the child reported.
* **kill during fit, then resume** — a child trains with ``fit(checkpoint_every=1)`` and is
  killed mid-run; the checkpoint it leaves must load, and resuming from it in this process must
  reproduce the uninterrupted run bit for bit (losses, parameters, EMA).
* **resume equivalence** — 2n steps ≡ n steps, interruption, n more: on S² (geodesic path,
  tangent-projected MLP), float32, bit-exact.
* **corrupt / foreign checkpoint** — random bytes, a truncated checkpoint, an empty file, a
  pickled Python object, a zip and a text file: ``load_checkpoint`` and a resuming ``fit`` must
  each raise a one-line ``ValueError`` naming the file, and ``fit`` must leave the file as it
  was (a checkpoint it cannot read is the user's data).
* **2 processes vs 1** — two gloo ranks on the CPU (torchrun's environment variables) run
  ``fit`` unchanged on the global batch of one process; the parameters must agree to 1e-5
  (float32; the test suite's bound, about 100× the measured difference).

Fuzz campaign: for ``--fuzz-seconds`` in all, split between four targets — the earth
catalogue CSV and RNA torsion TSV loaders of :mod:`flowmatch.data`, the crystal plugin's
``load_cdvae_csv`` and ``flowmatch crystal evaluate`` on CIF files — mutated inputs (tokens
replaced by hostile ones or by extreme numbers, lines dropped, repeated or swapped, quotes and
separators inserted, bytes cut, flipped or inserted, raw binary), drawn from a seeded stream
so every input can be regenerated from (target, seed, index). Each target runs in a worker
process watched by this one: an input that raises anything but ``ValueError`` /
``FileNotFoundError`` (for the CLI: an exception, or an exit code other than 0 and 2) is a
**crash**; one that has not finished after ``--hang-seconds`` is a **hang** (the worker is
killed and restarted). Findings are listed with their inputs and tracebacks.

Validation overhead: an earth-like setting on S² (batch 512 of the fire catalogue, or of a
synthetic mixture without the data; a 3×64 tangent-projected MLP on x) — a training step of a
user's own loop (geodesic path sample, field, loss, backward, AdamW) and a 100-step Euler
sampling run — with validation on and off (``flowmatch.set_validation``), interleaved
blocks, the median of ``--repeats``; the ratio on/off. ``fit`` validates its first step only,
so its loop pays nothing after that.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

import _common  # first: sets OMP_WAIT_POLICY before torch loads OpenMP
import torch

BENCH_DIR = Path(__file__).resolve().parent
TARGETS = ("earth", "rna", "cdvae_csv", "crystal_evaluate")


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(_common.ROOT), str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])}


# -- fault scenarios ---------------------------------------------------------------------------
SAVE_LOOP = textwrap.dedent("""
    import sys, torch
    from flowmatch.training import save_checkpoint
    path, step = sys.argv[1], 1
    while True:
        save_checkpoint(path, {"step": step, "w": torch.full((2_000_000,), float(step))})
        print(step, flush=True)
        step += 1
""")


def kill_during_save(kills: int, work: Path) -> dict:
    """SIGKILL a saving loop at staggered moments; the file must hold the last save, whole."""
    from flowmatch.training import load_checkpoint, save_checkpoint

    lost, details = 0, []
    for k in range(kills):
        path = work / f"save{k}.pt"
        save_checkpoint(path, {"step": 0, "w": torch.zeros(2_000_000)})
        child = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(path)],
                                 stdout=subprocess.PIPE, env=child_env())
        reported = 0
        try:
            first = child.stdout.readline()  # the first save done: the loop is running
            reported = int(first or 0)
            time.sleep(0.05 + 0.9 * k / max(kills - 1, 1))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            for line in child.stdout.read().split():
                reported = max(reported, int(line))
        finally:
            if child.poll() is None:
                child.kill()
        try:
            state = load_checkpoint(path)
            step = int(state["step"])
            whole = bool((state["w"] == float(step)).all())
        except ValueError as err:
            step, whole = -1, False
            details.append(str(err))
        ok = whole and step >= reported
        lost += not ok
        details.append(f"kill {k}: last reported save {reported}, file holds step {step}"
                       f"{'' if whole else ' (TORN)'}")
    return {"name": "kill during save", "passed": lost == 0, "lost": lost,
            "detail": f"{kills} SIGKILLs; " + "; ".join(details[-3:])}


def toy_fit(path: str | None, steps: int, *, crash_at: int | None = None, hidden: int = 256,
            checkpoint_every: int | None = None):
    """The small Euclidean run of the kill/resume scenario (module level: the child runs it)."""
    from flowmatch.data import EightGaussians
    from flowmatch.models import MLP
    from flowmatch.paths import CondOTPath
    from flowmatch.training import fit

    data = EightGaussians().sample
    calls = {"n": 0}

    def sample(n, generator):
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise RuntimeError("simulated interruption")
        return data(n, generator)

    torch.manual_seed(0)
    return fit(MLP(2, hidden, 3), sample, CondOTPath(), steps=steps, batch_size=256, lr=1e-3,
               ema_decay=0.99, seed=11, progress=False, checkpoint_path=path,
               checkpoint_every=checkpoint_every)


FIT_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    import reliability
    reliability.toy_fit(sys.argv[1], int(sys.argv[2]), checkpoint_every=1)
""")


def same_run(a, b) -> bool:
    return (a.losses == b.losses
            and all(torch.equal(p, q) for p, q in zip(a.model.parameters(),
                                                      b.model.parameters(), strict=True))
            and all(torch.equal(p, q) for p, q in zip(a.ema_model.parameters(),
                                                      b.ema_model.parameters(), strict=True)))


def kill_during_fit(steps: int, delay: float, work: Path) -> dict:
    """SIGKILL a checkpointing fit mid-run; resume here; compare with the uninterrupted run."""
    from flowmatch.training import load_checkpoint

    path = work / "fit.pt"
    child = subprocess.Popen([sys.executable, "-c", FIT_CHILD, str(path), str(steps)],
                             env=child_env(), stderr=subprocess.PIPE)
    try:
        t0 = time.perf_counter()
        while not path.exists() and child.poll() is None and time.perf_counter() - t0 < 120:
            time.sleep(0.02)
        time.sleep(delay)
        finished = child.poll() is not None
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    if not path.exists():
        return {"name": "kill during fit, resume", "passed": False, "lost": 1,
                "detail": "the child wrote no checkpoint: "
                          + child.stderr.read().decode(errors="replace")[-300:]}
    try:
        step = int(load_checkpoint(path)["step"])
    except ValueError as err:
        return {"name": "kill during fit, resume", "passed": False, "lost": 1,
                "detail": f"the checkpoint left by the kill does not load: {err}"}
    resumed = toy_fit(str(path), steps, checkpoint_every=steps)  # saves are not settings
    reference = toy_fit(None, steps)
    ok = resumed.resumed_from == step and same_run(resumed, reference)
    return {"name": "kill during fit, resume", "passed": ok, "lost": 0,
            "detail": f"killed at step {step} of {steps}"
                      f"{' (the child had already finished)' if finished else ''}; resumed "
                      f"from {resumed.resumed_from}; bit-exact: {same_run(resumed, reference)}"}


def sphere_fit(path: str | None, steps: int, crash_at: int | None = None):
    from flowmatch.geometry import Sphere
    from flowmatch.paths import GeodesicPath
    from flowmatch.training import fit
    from flowmatch.training.recipes import build_field

    g = Sphere(3)
    centres = g.sample_base(8, generator=torch.Generator().manual_seed(5))
    calls = {"n": 0}

    def sample(n, generator):
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise RuntimeError("simulated interruption")
        i = torch.randint(8, (n,), generator=generator)
        noise = 0.2 * torch.randn(n, 3, generator=generator)
        return g.projx(centres[i] + noise)

    torch.manual_seed(0)
    field = build_field(g, 3, 3, hidden=64, layers=3)
    return fit(field, sample, GeodesicPath(g), g, steps=steps, batch_size=128, lr=2e-3,
               ema_decay=0.99, seed=2, progress=False, checkpoint_path=path,
               checkpoint_every=steps // 2 if path else None)


def resume_equivalence(n: int, work: Path) -> dict:
    """2n steps ≡ n steps, an interruption, n more (S², float32): bit for bit."""
    reference = sphere_fit(None, 2 * n)
    path = work / "sphere.pt"
    try:
        sphere_fit(str(path), 2 * n, crash_at=n + 1)
    except RuntimeError as err:
        assert "simulated interruption" in str(err)
    resumed = sphere_fit(str(path), 2 * n)
    ok = resumed.resumed_from == n and same_run(resumed, reference)
    return {"name": "resume equivalence", "passed": ok, "lost": 0,
            "detail": f"S², {2 * n} steps ≡ {n} + interruption + {n}: resumed from "
                      f"{resumed.resumed_from}, bit-exact {same_run(resumed, reference)}"}


def bad_checkpoints(work: Path) -> dict[str, bytes]:
    """Files that are not checkpoints of ours, by name."""
    import pickle
    import zipfile

    good = work / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    raw = good.read_bytes()
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("data.txt", "not a checkpoint")
    return {"random bytes": random.Random(0).randbytes(4096), "truncated": raw[:300],
            "empty": b"", "pickled object": pickle.dumps(Path("/etc")),
            "foreign zip": zipped.getvalue(), "text": b"step,loss\n1,0.5\n"}


def corrupt_checkpoints(work: Path) -> dict:
    import warnings

    from flowmatch.training import load_checkpoint

    # torch warns about the pickle protocol of the raw pickle before refusing it
    warnings.filterwarnings("ignore", message="Detected pickle protocol")

    failures = []
    lost = 0
    for name, data in bad_checkpoints(work).items():
        path = work / f"bad_{name.replace(' ', '_')}.pt"
        for who in ("load_checkpoint", "fit"):
            path.write_bytes(data)
            try:
                if who == "fit":
                    toy_fit(str(path), 3, hidden=16, checkpoint_every=1)
                else:
                    load_checkpoint(path)
                failures.append(f"{who}({name}) accepted it")
            except ValueError as err:
                message = str(err)
                if "\n" in message or str(path) not in message \
                        or "weights_only=False" in message:
                    failures.append(f"{who}({name}): {message[:120]!r}")
            except Exception as err:  # noqa: BLE001 - the point: the type
                failures.append(f"{who}({name}): {type(err).__name__}: {str(err)[:100]}")
            if path.read_bytes() != data:
                lost += 1
                failures.append(f"{who}({name}) overwrote the file")
    return {"name": "corrupt/foreign checkpoint", "passed": not failures, "lost": lost,
            "detail": "; ".join(failures) if failures else
            f"{len(bad_checkpoints(work))} kinds × (load_checkpoint, fit): one-line ValueError "
            "naming the file, file untouched"}


DDP_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    import reliability
    res = reliability.toy_fit(None, 20, hidden=32)
    from flowmatch.training import distributed
    if distributed.get_rank() == 0:
        torch.save([p.detach() for p in res.model.parameters()], sys.argv[1])
""")


def two_processes(work: Path) -> dict:
    """Two gloo ranks of fit vs one process, float32, 20 steps of the toy run."""
    try:
        from flowmatch.training import distributed  # noqa: F401 - present since issue 20
    except ImportError:
        return {"name": "2 processes vs 1", "passed": False, "lost": 0,
                "detail": "flowmatch.training.distributed is missing", "skipped": True}
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = work / "ddp.pt"
    procs = []
    for rank in range(2):
        env = {**child_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", DDP_CHILD, str(out)], env=env,
                                      stderr=subprocess.PIPE))
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode:
            errors.append(err.decode(errors="replace")[-300:])
    if errors or not out.exists():
        return {"name": "2 processes vs 1", "passed": False, "lost": 0,
                "detail": "a rank failed: " + " | ".join(errors)}
    two = torch.load(out, weights_only=True)
    one = [p.detach() for p in toy_fit(None, 20, hidden=32).model.parameters()]
    diff = max(float((a.double() - b.double()).abs().max()) for a, b in zip(two, one,
                                                                            strict=True))
    return {"name": "2 processes vs 1", "passed": diff < 1e-5, "lost": 0, "max_diff": diff,
            "detail": f"20 steps, float32, max |θ₂ − θ₁| = {diff:.2e} (bound 1e-5)"}


# -- fuzz campaign -----------------------------------------------------------------------------
NASTY = ["", " ", "nan", "inf", "-inf", "1e999", "-1e999", "1e-999", "-0", "0x10", "1_0", "abc",
         "\x00", "\ufeff", "é", '"', "'", ",", ";", "\t", "\x0b", "\r", "\n", "\\", "-", ".",
         "1.2.3", "9" * 400, "9" * 140_000, "?", "loop_", "data_", "#"]
EXTREME = ["0", "-1", "1e4", "1e6", "1e12", "1e308", "1e-12", "5e-324", "-1e4", "180", "360",
           "361", "-91", "0.0000001", "179.99999", "2", "3"]
TOKEN = re.compile(r"[^\s,\t\"']+")

SRTIO3_CIF = """data_SrTiO3
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   3.905
_cell_length_b   3.905
_cell_length_c   3.905
_cell_angle_alpha   90.0
_cell_angle_beta   90.0
_cell_angle_gamma   90.0
_symmetry_Int_Tables_number   1
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Sr  Sr0  1  0.0  0.0  0.0  1
  Ti  Ti1  1  0.5  0.5  0.5  1
  O  O2  1  0.5  0.5  0.0  1
  O  O3  1  0.5  0.0  0.5  1
  O  O4  1  0.0  0.5  0.5  1
"""
NACL_CIF = SRTIO3_CIF.replace("SrTiO3", "NaCl").replace("3.905", "5.64").split(
    "  Sr  Sr0")[0] + "  Na  Na0  1  0.0  0.0  0.0  1\n  Cl  Cl1  1  0.5  0.5  0.5  1\n"


def seed_input(target: str, rng: random.Random) -> str:
    """A valid input of the target, with drawn numbers."""
    if target == "earth":
        rows = [f"{rng.uniform(-90, 90):.3f},{rng.uniform(-180, 180):.3f}"
                for _ in range(rng.randint(1, 8))]
        return "lat,lon\n" + "\n".join(rows) + "\n"
    if target == "rna":
        return "".join(f"1abc\t{rng.choice('ACGU')}\t"
                       + "\t".join(f"{rng.uniform(-180, 180):.2f}" for _ in range(7)) + "\n"
                       for _ in range(rng.randint(1, 6)))
    if target == "cdvae_csv":
        out = io.StringIO()
        import csv

        writer = csv.writer(out)
        writer.writerow(["", "material_id", "cif", "formation_energy_per_atom"])
        for i in range(rng.randint(1, 3)):
            writer.writerow([i, f"mp-{i}", rng.choice([SRTIO3_CIF, NACL_CIF]),
                             f"{rng.uniform(-3, 1):.3f}"])
        return out.getvalue()
    return rng.choice([SRTIO3_CIF, NACL_CIF])


def mutate(text: str, rng: random.Random) -> bytes:
    """One to four random edits of the text, then its UTF-8 bytes (or byte-level edits)."""
    if rng.random() < 0.05:
        return rng.randbytes(rng.randint(0, 400))
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(len(lines))
        if op <= 2:  # replace a token by a hostile or extreme one
            spans = [m.span() for m in TOKEN.finditer(lines[i])]
            if spans:
                a, b = rng.choice(spans)
                new = rng.choice(NASTY if op == 0 else EXTREME)
                lines[i] = lines[i][:a] + new + lines[i][b:]
        elif op == 3:
            del lines[i]
            lines = lines or [""]
        elif op == 4:
            lines.insert(i, lines[i])
        elif op == 5:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        else:  # a separator or quote inside a line
            at = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:at] + rng.choice([",", "\t", '"', "'", ";"]) + lines[i][at:]
    data = rng.choice(["\n", "\r\n", "\r"]).join(lines).encode("utf-8")
    edit = rng.randrange(8)
    if edit == 0 and data:
        data = data[: rng.randint(0, len(data))]
    elif edit == 1:
        at = rng.randint(0, len(data))
        data = data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:]
    elif edit == 2 and data:
        at = rng.randrange(len(data))
        data = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
    elif edit == 3:
        data = b"\xef\xbb\xbf" + data
    return data


def fuzz_input(target: str, seed: int, index: int) -> tuple[bytes, bytes | None]:
    """(the input, the CIF reference for crystal_evaluate) for (target, seed, index)."""
    rng = random.Random(f"{target}:{seed}:{index}")
    data = mutate(seed_input(target, rng), rng)
    if target != "crystal_evaluate":
        return data, None
    reference = seed_input(target, rng).encode()
    if rng.random() < 0.3:
        reference = mutate(reference.decode(), rng)
    return data, reference


def describe_input(target: str, seed: int, index: int, limit: int = 3) -> list[str]:
    """Up to ``limit`` lines of the input that the mutations changed (what to look at)."""
    import difflib

    rng = random.Random(f"{target}:{seed}:{index}")
    original = seed_input(target, rng).splitlines()
    data, _ = fuzz_input(target, seed, index)
    mutated = re.split(r"\r\n|\r|\n", data.decode("utf-8", errors="replace"))
    changed = [line[2:] for line in difflib.ndiff(original, mutated) if line.startswith("+ ")]
    return [c[:120] for c in changed[:limit]]


def run_input(target: str, data: bytes, reference: bytes | None, work: Path) -> str:
    """'ok' or 'error' (clean); raises for a crash (the caller records it)."""
    if target == "crystal_evaluate":
        from flowmatch.cli import main

        gen = work / "generated"
        gen.mkdir(exist_ok=True)
        (gen / "s0.cif").write_bytes(data)
        (work / "reference.cif").write_bytes(reference or b"")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["crystal", "evaluate", "--generated", str(gen), "--reference",
                         str(work / "reference.cif")])
        if code not in (0, 2) or "Traceback" in err.getvalue():
            raise RuntimeError(f"exit code {code}: {err.getvalue()[-300:]}")
        return "ok" if code == 0 else "error"
    path = work / {"earth": "events.csv", "rna": "torsions.tsv",
                   "cdvae_csv": "crystals.csv"}[target]
    path.write_bytes(data)
    try:
        if target == "earth":
            from flowmatch.data import load_earth

            load_earth(path)
        elif target == "rna":
            from flowmatch.data import load_rna

            load_rna(path)
        else:
            from flowmatch.plugins.crystal.data import load_cdvae_csv

            load_cdvae_csv(path, cache=False)
    except (ValueError, FileNotFoundError):
        return "error"
    return "ok"


def fuzz_worker(target: str, seed: int, start: int, deadline: float, root: str) -> None:
    """Run inputs start, start + 1, ... until the wall clock passes ``deadline``, reporting
    ``start i`` / ``done i outcome`` lines (and a JSON finding for a crash) on stdout."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    with contextlib.suppress(ValueError, OSError):  # a runaway allocation is a crash, not OOM
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-", dir=root))
    i = start
    while time.time() < deadline:
        data, reference = fuzz_input(target, seed, i)
        print(f"start {i}", flush=True)
        try:
            outcome = run_input(target, data, reference, work)
            print(f"done {i} {outcome}", flush=True)
        except Exception as err:  # noqa: BLE001 - recording every crash is the point
            finding = {"target": target, "seed": seed, "index": i, "kind": "crash",
                       "error": f"{type(err).__name__}: {str(err)[:300]}",
                       "traceback": traceback.format_exc()[-2500:],
                       "input": data[:400].decode("utf-8", errors="replace"),
                       "changed_lines": describe_input(target, seed, i)}
            print(f"done {i} crash {json.dumps(finding)}", flush=True)
        i += 1


WORKER = "import sys, reliability; reliability.fuzz_worker(sys.argv[1], int(sys.argv[2]), " \
         "int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])"


class LineReader:
    """Lines of a pipe with a timeout (select on the raw descriptor; Python's buffered readline
    would hide lines it had already read from select)."""

    def __init__(self, stream) -> None:
        self.fd = stream.fileno()
        self.buffer = b""

    def readline(self, timeout: float) -> str | None:
        """The next line ('' at end of stream), or None when none came within ``timeout``."""
        deadline = time.time() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.time()))
            if not ready:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line.decode(errors="replace")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace") + "\n"


def fuzz_target(target: str, seed: int, seconds: float, hang_s: float,
                work: Path | None = None) -> dict:
    """Run ``fuzz_worker`` for ``seconds``; restart it after a hang, which it records.

    The workers write their input files under ``work`` (default: the system's temporary
    folder)."""
    counts = {"ok": 0, "error": 0, "crash": 0, "hang": 0}
    findings: list[dict] = []
    end = time.time() + seconds
    index, restarts = 0, 0
    while time.time() < end:
        proc = subprocess.Popen([sys.executable, "-c", WORKER, target, str(seed), str(index),
                                 str(end), str(work or tempfile.gettempdir())],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=child_env())
        reader = LineReader(proc.stdout)
        current = None
        try:
            while True:
                # the first input waits for the imports (pymatgen: seconds on a loaded machine)
                line = reader.readline(hang_s + (60.0 if current is None else 0.0))
                if line is None:  # a hang: record the input, go on after it in a new worker
                    if current is not None:
                        data, _ = fuzz_input(target, seed, current)
                        counts["hang"] += 1
                        findings.append({
                            "target": target, "seed": seed, "index": current,
                            "kind": f"hang (> {hang_s:g} s)",
                            "input": data[:400].decode("utf-8", errors="replace"),
                            "changed_lines": describe_input(target, seed, current)})
                        index = current + 1
                    break
                if not line:  # the worker ended: its deadline passed, or it died
                    if proc.wait() != 0 and current is not None:
                        counts["crash"] += 1
                        findings.append({"target": target, "seed": seed, "index": current,
                                         "kind": f"worker died (exit {proc.returncode})"})
                        index = current + 1
                    break
                kind, rest = line.rstrip("\n").split(" ", 1)
                if kind == "start":
                    current = int(rest)
                    continue
                number, _, rest = rest.partition(" ")
                outcome, _, payload = rest.partition(" ")
                counts[outcome] += 1
                if outcome == "crash":
                    findings.append(json.loads(payload))
                current, index = None, int(number) + 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
        restarts += 1
    return {"target": target, "inputs": sum(counts.values()), **counts, "workers": restarts,
            "findings": findings}


def signature(finding: dict) -> str:
    """What makes two findings the same bug: the kind, the exception type, the last frame."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', finding.get("traceback", ""))
    where = f"{Path(frames[-1][0]).name}:{frames[-1][1]} ({frames[-1][2]})" if frames else ""
    ours = [f for f in frames if "/flowmatch/" in f[0]]
    if ours and ours[-1] != frames[-1]:
        where += f" via {Path(ours[-1][0]).name}:{ours[-1][1]} ({ours[-1][2]})"
    error = finding.get("error", "").split(":")[0]
    return " ".join(p for p in (finding["target"], finding["kind"], error, where) if p)


def distinct_findings(findings: list[dict]) -> list[dict]:
    """One entry per signature, with its count and its first example."""
    out: dict[str, dict] = {}
    for f in findings:
        key = signature(f)
        if key in out:
            out[key]["count"] += 1
        else:
            out[key] = {"signature": key, "count": 1, "example": f}
    return sorted(out.values(), key=lambda d: -d["count"])


# -- validation overhead -------------------------------------------------------------------
def sphere_setting(data_dir: Path | None, batch: int):
    from flowmatch.data import load_earth
    from flowmatch.geometry import Sphere
    from flowmatch.paths import GeodesicPath
    from flowmatch.training.recipes import build_field

    g = Sphere(3)
    fire = None if data_dir is None else Path(data_dir) / "sphere" / "earth" / "fire.csv"
    if fire is not None and fire.is_file():
        data, source = load_earth(fire), "fire catalogue"
    else:
        gen = torch.Generator().manual_seed(0)
        centres = g.sample_base(16, generator=gen)
        data = g.projx(centres[torch.randint(16, (4096,), generator=gen)]
                       + 0.1 * torch.randn(4096, 3, generator=gen))
        source = "synthetic mixture (fire.csv not found)"
    torch.manual_seed(0)
    field = build_field(g, 3, 3, hidden=64, layers=3)
    return g, GeodesicPath(g), field, data[:batch].contiguous(), source


def time_validation(data_dir: Path | None, repeats: int, train_steps: int,
                    sample_steps: int, batch: int = 512) -> dict:
    """Median seconds of a training step and a sampling run with validation on and off."""
    import flowmatch
    from flowmatch.solvers import RiemannianODESolver
    from flowmatch.training import cfm_loss

    g, path, field, x1, source = sphere_setting(data_dir, batch)
    opt = torch.optim.AdamW(field.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    solver = RiemannianODESolver(field, g)
    x0_sample = g.sample_base(batch, generator=gen)

    def train_block() -> float:
        t0 = time.perf_counter()
        for _ in range(train_steps):
            x0 = g.sample_base(batch, generator=gen)
            t = torch.rand(batch, generator=gen)
            s = path.sample(x0, x1, t)
            loss = cfm_loss(field(s.x_t, s.t), s.dx_t, g, s.x_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / train_steps

    def sample_block() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            solver.sample(x0_sample, num_steps=sample_steps, method="euler")
        return time.perf_counter() - t0

    def logmap_block() -> float:
        y = x0_sample.roll(1, 0)
        t0 = time.perf_counter()
        for _ in range(200):
            g.logmap(x0_sample, y)
        return (time.perf_counter() - t0) / 200

    times: dict[str, dict[bool, list[float]]] = {k: {True: [], False: []}
                                                  for k in ("train", "sample", "logmap")}
    blocks = {"train": train_block, "sample": sample_block, "logmap": logmap_block}
    previous = flowmatch.validation_enabled()
    try:
        for block in blocks.values():  # warm-up
            flowmatch.set_validation(True)
            block()
        for r in range(repeats):
            for on in ((True, False) if r % 2 == 0 else (False, True)):  # interleaved
                flowmatch.set_validation(on)
                for name, block in blocks.items():
                    times[name][on].append(block())
    finally:
        flowmatch.set_validation(previous)
    med = {k: {on: statistics.median(v) for on, v in d.items()} for k, d in times.items()}
    return {"source": source, "batch": batch, "median": med,
            "ratio": {k: med[k][True] / med[k][False] for k in med}}


# -- driver --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    ap = _common.benchmark_parser(__doc__.split("\n\n")[0], threads=1, data_dir="shared")
    ap.add_argument("--fuzz-seconds", type=float, default=None,
                    help="fuzz budget in seconds, split between the four targets "
                         "(default 240; --quick 48)")
    ap.add_argument("--hang-seconds", type=float, default=20.0,
                    help="an input running longer than this counts as a hang (default 20)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved on/off blocks of the overhead timing (default 9; "
                         "--quick 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fuzz stream")
    args = ap.parse_args(argv)
    _common.set_threads(args.threads)
    quick = args.quick
    fuzz_s = args.fuzz_seconds if args.fuzz_seconds is not None else (48.0 if quick else 240.0)
    repeats = args.repeats or (5 if quick else 9)
    if not (fuzz_s >= 0 and math.isfinite(fuzz_s)) or repeats < 1 or args.hang_seconds <= 0:
        raise SystemExit("--fuzz-seconds must be ≥ 0, --repeats ≥ 1, --hang-seconds > 0")
    t_start = time.perf_counter()

    scenarios = []
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        work = Path(tmp)
        for run in (lambda: kill_during_save(3 if quick else 8, work),
                    lambda: kill_during_fit(600 if quick else 1500, 1.0 if quick else 3.0, work),
                    lambda: resume_equivalence(25 if quick else 100, work),
                    lambda: corrupt_checkpoints(work),
                    lambda: two_processes(work)):
            t0 = time.perf_counter()
            try:
                result = run()
            except Exception as err:  # noqa: BLE001 - a scenario that crashes has failed
                result = {"name": getattr(run, "__name__", "scenario"), "passed": False,
                          "lost": 0, "detail": f"{type(err).__name__}: {err}"}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            scenarios.append(result)
            print(f"  scenario {result['name']}: {'pass' if result['passed'] else 'FAIL'} "
                  f"({result['seconds']} s) — {result['detail']}", flush=True)

    fuzz = []
    for target in TARGETS:
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
            res = fuzz_target(target, args.seed, fuzz_s / len(TARGETS), args.hang_seconds,
                              Path(tmp))
        fuzz.append(res)
        print(f"  fuzz {target}: {res['inputs']} inputs, {res['ok']} loaded, {res['error']} "
              f"clean errors, {res['crash']} crashes, {res['hang']} hangs", flush=True)

    overhead = time_validation(getattr(args, "data_dir", None), repeats,
                               train_steps=5 if quick else 20, sample_steps=100)
    print(f"  validation overhead ({overhead['source']}): " + ", ".join(
        f"{k} ×{v:.3f}" for k, v in overhead["ratio"].items()), flush=True)

    findings = distinct_findings([f for res in fuzz for f in res["findings"]])
    lost = sum(s["lost"] for s in scenarios)
    crashes = sum(f["crash"] + f["hang"] for f in fuzz)
    passed = sum(s["passed"] for s in scenarios)
    med = overhead["median"]
    rows = [
        {"system": "flowmatch", "metric": "lost", "value": lost, "unit": "checkpoints",
         "better": "lower", "note": "checkpoints that did not load whole after a kill, or "
                                    "that a failed resume overwrote; must be 0"},
        {"system": "flowmatch", "metric": "crash", "value": crashes, "unit": "inputs",
         "better": "lower", "note": "fuzz inputs that raised an unrelated exception type or "
                                    "hung; must be 0",
         "by_target": {f["target"]: f["crash"] + f["hang"] for f in fuzz}},
        {"system": "flowmatch", "metric": "distinct crash/hang signatures",
         "value": len(findings), "unit": "bugs", "better": "lower",
         "note": "kind, exception type and last frame; listed in config.findings"},
        {"system": "flowmatch", "metric": "scenarios passed", "value": passed,
         "unit": f"of {len(scenarios)}", "better": "higher",
         "scenarios": {s["name"]: s["passed"] for s in scenarios}},
        {"system": "flowmatch", "metric": "inputs tried", "value": sum(f["inputs"] for f in fuzz),
         "unit": "inputs", "better": "higher",
         "by_target": {f["target"]: f["inputs"] for f in fuzz}},
        {"system": "flowmatch", "metric": "validation overhead: training step",
         "value": overhead["ratio"]["train"], "unit": "× (on/off)", "better": "lower",
         "on_ms": 1e3 * med["train"][True], "off_ms": 1e3 * med["train"][False]},
        {"system": "flowmatch", "metric": "validation overhead: sampling (100 Euler steps)",
         "value": overhead["ratio"]["sample"], "unit": "× (on/off)", "better": "lower",
         "on_ms": 1e3 * med["sample"][True], "off_ms": 1e3 * med["sample"][False]},
        {"system": "flowmatch", "metric": "validation overhead: Sphere.logmap alone",
         "value": overhead["ratio"]["logmap"], "unit": "× (on/off)", "better": "lower",
         "on_us": 1e6 * med["logmap"][True], "off_us": 1e6 * med["logmap"][False]},
    ]
    ddp = next(s for s in scenarios if s["name"] == "2 processes vs 1")
    if "max_diff" in ddp:
        rows.append({"system": "flowmatch", "metric": "2 processes vs 1: max |Δθ|",
                     "value": ddp["max_diff"], "unit": "", "better": "lower",
                     "note": "float32, 20 steps; bound 1e-5"})

    print()
    print(f"{'row':48s} {'value':>12s}  unit")
    for r in rows:
        v = r["value"]
        text = f"{v:.3f}" if isinstance(v, float) and abs(v) >= 1e-3 else (
            f"{v:.2e}" if isinstance(v, float) else str(v))
        print(f"{r['metric']:48s} {text:>12s}  {r['unit']}")
    print(f"(threads {args.threads}, fuzz {fuzz_s:g} s over {len(TARGETS)} targets, hang "
          f"after {args.hang_seconds:g} s, overhead: batch {overhead['batch']} on S², median "
          f"of {repeats} interleaved blocks; load average {_common.load_average():.1f}; "
          f"{time.perf_counter() - t_start:.0f} s in all)")
    for f in findings:
        ex = f["example"]
        print(f"  {f['count']:5d} × {f['signature']}; first: input {ex['seed']}:{ex['index']} "
              f"(regenerate: reliability.fuzz_input({ex['target']!r}, {ex['seed']}, "
              f"{ex['index']})) {ex.get('error', '')[:100]!r}; changed lines "
              f"{ex.get('changed_lines')}")

    config = {"quick": quick, "threads": args.threads, "fuzz_seconds": fuzz_s,
              "hang_seconds": args.hang_seconds, "seed": args.seed, "repeats": repeats,
              "overhead_setting": f"S², batch {overhead['batch']}, {overhead['source']}, "
                                  "3×64 tangent-projected MLP, AdamW step; 100 Euler steps",
              "scenarios": scenarios, "fuzz": [{k: v for k, v in f.items() if k != "findings"}
                                               for f in fuzz],
              "findings": findings,
              "load_average": _common.load_average(),
              "seconds": round(time.perf_counter() - t_start, 1)}
    return _common.write_result(args.json, "reliability", config, rows, argv)


if __name__ == "__main__":
    main()

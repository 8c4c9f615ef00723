"""A process killed with SIGKILL in the middle of saving leaves the previous checkpoint loadable.

save_checkpoint writes a temporary file, fsyncs it and renames it over the target, so at any
instant the target is either the previous complete checkpoint or the new complete one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from flowmatch.training import load_checkpoint, save_checkpoint

CHILD = textwrap.dedent("""
    import sys, torch
    from flowmatch.training import save_checkpoint
    path = sys.argv[1]
    step = 1
    print("ready", flush=True)
    while True:   # large states, so a kill is likely to land inside torch.save
        save_checkpoint(path, {"step": step, "w": torch.full((2_000_000,), float(step))})
        step += 1
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("delay", [0.3, 0.7, 1.1])
def test_sigkill_during_saves_leaves_a_complete_checkpoint(tmp_path, delay):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"step": 0, "w": torch.zeros(2_000_000)})
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    state = load_checkpoint(path)
    step = int(state["step"])
    assert step >= 0 and bool((state["w"] == float(step)).all()), "a torn checkpoint"

"""Video plugin registration: CLI sub-commands, and diffusers stays optional."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from flowmatch.plugins.video.plugin import register_cli


def _parser():
    parser = argparse.ArgumentParser(prog="flowmatch")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_schedule_command_prints_the_single_shift_schedule(capsys):
    args = _parser().parse_args(["video", "schedule", "--steps", "28", "--shift", "3",
                                 "--compare-diffusers"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + 29
    last = lines[-2].split()  # i, sigma, t, timestep, diffusers
    assert last[0] == "27" and float(last[1]) == pytest.approx(0.002994, abs=1e-6)
    assert float(last[4]) == pytest.approx(0.008929, abs=1e-6)


def test_schedule_rejects_bad_shift(capsys):
    args = _parser().parse_args(["video", "schedule", "--shift", "0"])
    assert args.func(args) == 2  # one line on stderr, not a traceback
    assert "shift must be a finite number > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --shift and --mu are exclusive
        _parser().parse_args(["video", "schedule", "--shift", "2", "--mu", "1"])


def test_bouncing_command_writes_a_strip(tmp_path, capsys):
    out = tmp_path / "strip.png"
    args = _parser().parse_args(["video", "bouncing", "--out", str(out), "--num", "2",
                                 "--frames", "5", "--size", "16"])
    assert args.func(args) == 0
    import matplotlib.image as mpimg

    from flowmatch.plugins.video.plugin import read_strip_layout

    img = mpimg.imread(out)
    layout = read_strip_layout(out)  # the labelled grid: 2 clips x 5 frames, enlarged
    assert (layout.clips, layout.frames) == (2, 5)
    assert layout.cell_h == layout.cell_w == 16 * layout.scale and layout.scale >= 1
    assert img.shape[:2] == (layout.height, layout.width)


def test_plugin_imports_without_diffusers():
    # Importing the whole plugin (and registering its CLI) must not load diffusers, and must
    # still work when diffusers cannot be imported at all.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('diffusers', 'transformers'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import flowmatch.plugins.video as v\n"
        "import flowmatch.plugins.video.model, flowmatch.plugins.video.plugin\n"
        "s = v.FlowMatchScheduler(shift=3.0); s.set_timesteps(28)\n"
        "assert 'diffusers' not in sys.modules\n"
        "print(round(float(s.sigmas[-2]), 6))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0.002994"

"""`flowmatch video train` and `flowmatch video sample`, run in-process through the core CLI."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from flowmatch import cli
from flowmatch.plugins.video import VideoVelocityNet, bouncing_shapes
from flowmatch.plugins.video.training import (
    CHECKPOINT_FORMAT,
    build_net,
    net_config,
    save_bouncing_checkpoint,
)

TINY = ["--width", "16", "--depth", "1", "--frames", "4", "--size", "8"]
ROW = re.compile(r"^(samples|data)" + r"\s+([-\d.]+|nan)" * 7 + r"\s*$", re.M)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "tiny.pt"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["video", "train", "--out", str(path), "--steps", "30", "--threads", "1",
                         "--no-progress", *TINY])
    assert code == 0
    return path, out.getvalue()


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool) or torch.is_tensor(value)


def _table(text: str) -> dict[str, list[float]]:
    return {m.group(1): [float(v) for v in m.groups()[1:]] for m in ROW.finditer(text)}


def test_train_writes_a_weights_only_checkpoint_atomically(trained):
    path, printed = trained
    assert "trained 30 steps" in printed and str(path) in printed
    assert os.listdir(path.parent) == [path.name]  # the temporary file was renamed, not left
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == {"format", "config", "state_dict"}
    assert state["format"] == CHECKPOINT_FORMAT
    assert _plain(state)
    config = state["config"]
    assert set(config) == {"net", "data", "train"}
    assert config["net"]["width"] == 16 and config["net"]["depth"] == 1
    assert config["data"] == {"frames": 4, "size": 8, "objects": 1, "radius": [1.0, 1.5]}
    assert config["train"]["steps"] == 30
    # the config alone rebuilds the network the weights belong to
    net = build_net(config["net"])
    net.load_state_dict(state["state_dict"])  # strict: same names and shapes
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_sample_writes_png_and_gif_and_prints_physics_next_to_data(trained, tmp_path, capsys):
    import matplotlib.image as mpimg

    png, gif = tmp_path / "s" / "samples.png", tmp_path / "samples.gif"
    code = cli.main(["video", "sample", "--model", str(trained[0]), "--out", str(png),
                     "--gif", str(gif), "--num", "3", "--steps", "2", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert mpimg.imread(png).shape[:2] == (3 * 8, 4 * 8)  # rows = clips, columns = frames
    assert gif.read_bytes()[:4] == b"GIF8"
    assert "heun, 2 steps (3 network calls)" in out  # Heun's last step is Euler
    rows = _table(out)
    assert set(rows) == {"samples", "data"}, out
    mass_err, one, accel, median, steady, speed, mass = rows["data"]
    assert mass_err < 0.01 and one == 1.0 and mass > 0 and 0 <= median <= accel
    s_mass_err, s_one, s_accel, s_median, s_steady, s_speed, s_mass = rows["samples"]
    assert 0 <= s_one <= 1 and 0 <= s_steady <= 1 and 0 <= steady <= 1
    assert min(s_mass_err, s_accel, s_median, s_speed, s_mass) >= 0
    assert re.search(r"true \|accel\| from their positions \d+\.\d{3}", out)


def test_first_frame_from_data_keeps_the_real_first_frame(trained, tmp_path, capsys):
    import matplotlib.image as mpimg

    png = tmp_path / "i2v.png"
    code = cli.main(["video", "sample", "--model", str(trained[0]), "--out", str(png),
                     "--num", "2", "--steps", "3", "--method", "euler", "--seed", "7",
                     "--first-frame-from-data"])
    assert code == 0
    assert "by replacement" in capsys.readouterr().out  # an unconditional net: said so
    # the real clips come first from the --seed generator; replacement ends at t = 1 with
    # frame 0 equal to theirs (up to the PNG's 8-bit colour map: measured 1.45/255)
    real = bouncing_shapes(2, num_frames=4, size=8, radius=(1.0, 1.5),
                           generator=torch.Generator().manual_seed(7)).video
    strip = torch.from_numpy(mpimg.imread(png)[..., 0].copy())  # gray: R = G = B
    frame0 = strip.reshape(2, 8, 4, 8)[:, :, 0]  # [clip, row, frame, column] → frame 0
    assert torch.allclose(frame0, ((real[:, 0, 0] + 1) / 2).clamp(0, 1), atol=2 / 255)


def test_first_frame_from_data_uses_a_mask_conditioned_net_per_frame(tmp_path, capsys):
    arch = net_config(channels=1, width=8, depth=1, patch=2, mask_conditioning=True)
    ckpt = tmp_path / "mask.pt"
    data = {"frames": 4, "size": 8, "objects": 1, "radius": [1.0, 1.5]}
    save_bouncing_checkpoint(ckpt, build_net(arch), {"net": arch, "data": data})
    code = cli.main(["video", "sample", "--model", str(ckpt), "--out", str(tmp_path / "m.png"),
                     "--num", "2", "--steps", "2", "--first-frame-from-data"])
    assert code == 0
    assert "mask-conditioned net, per-frame time" in capsys.readouterr().out


def test_bad_checkpoints_give_a_clear_error_and_a_nonzero_exit(tmp_path, capsys):
    png = str(tmp_path / "x.png")
    assert cli.main(["video", "sample", "--model", str(tmp_path / "nope.pt"), "--out", png]) == 1
    assert "nope.pt' does not exist" in capsys.readouterr().err
    bare = tmp_path / "bare.pt"
    torch.save(VideoVelocityNet(width=8, depth=1).state_dict(), bare)
    assert cli.main(["video", "sample", "--model", str(bare), "--out", png]) == 1
    err = capsys.readouterr().err
    assert f"must be a {CHECKPOINT_FORMAT!r} checkpoint" in err and "bare state_dict" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert cli.main(["video", "sample", "--model", str(junk), "--out", png]) == 1
    assert "could not be read" in capsys.readouterr().err
    assert not os.path.exists(png)


def test_train_rejects_bad_arguments_before_training(tmp_path, capsys):
    ckpt = str(tmp_path / "m.pt")
    with pytest.raises(SystemExit) as err:
        cli.main(["video", "train", "--out", ckpt, "--size", "7"])
    assert err.value.code == 2 and "even number ≥ 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["video", "train", "--out", ckpt, "--temporal-dilations", "1,x"])
    code = cli.main(["video", "train", "--out", ckpt, "--depth", "1", "--attention", "temporal",
                     "--attention-blocks", "3"])
    assert code == 2 and "attention_blocks must index blocks 0..0" in capsys.readouterr().err
    assert cli.main(["video", "train", "--out", ckpt, "--attention", "none",
                     "--attention-blocks", "0"]) == 2
    assert "--attention-blocks needs --attention" in capsys.readouterr().err
    assert not os.path.exists(ckpt)


def test_video_help_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from flowmatch.cli import main
        for argv in (["--help"], ["video", "train", "--help"], ["video", "sample", "--help"]):
            try:
                main(argv)
            except SystemExit:
                pass
        print("TORCH", "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "--first-frame-from-data" in out.stdout and "--temporal-dilations" in out.stdout
    assert "TORCH False" in out.stdout

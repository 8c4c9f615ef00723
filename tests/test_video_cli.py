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
from flowmatch.plugins.video.plugin import read_strip_layout, save_strip
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
    assert "trained 30 steps" in printed
    assert printed.rstrip().splitlines()[-1] == f"wrote {path}"  # the output path comes last
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
    # rows = clips, columns = frames, each 8 px frame enlarged 8× to 64 px, with room for labels
    layout = read_strip_layout(png)
    assert (layout.clips, layout.frames, layout.scale, layout.cell_h) == (3, 4, 8, 64)
    image = mpimg.imread(png)
    assert image.shape[:2] == (layout.height, layout.width)
    assert layout.left > 0 and layout.top > 0  # the row and frame labels' margins
    assert (image[:layout.top] < 0.5).any() and (image[:, :layout.left] < 0.5).any()
    assert out.rstrip().splitlines()[-1] == f"wrote {png} and {gif}"  # paths printed last
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
    strip = torch.from_numpy(mpimg.imread(png).copy())  # gray levels in [0, 1]
    layout = read_strip_layout(png)
    for clip in range(2):
        y0, x0, y1, x1 = layout.box(clip, 0)
        frame0 = strip[y0:y1:layout.scale, x0:x1:layout.scale]  # one pixel per enlarged square
        assert torch.allclose(frame0, ((real[clip, 0, 0] + 1) / 2).clamp(0, 1), atol=1 / 255)


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


def test_save_strip_enlarges_frames_labels_them_and_records_where_they_are(tmp_path):
    import matplotlib.image as mpimg

    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 1, 3, 4, 5, generator=g) * 2 - 1  # 2 clips, 3 frames of 4 × 5 px
    png = tmp_path / "strip.png"
    layout = save_strip(video, png, title="a title")
    assert read_strip_layout(png) == layout
    assert layout.scale == 13  # the smallest factor that makes the longer side ≥ 64 px
    image = torch.from_numpy(mpimg.imread(png).copy())
    assert tuple(image.shape) == (layout.height, layout.width)
    expected = ((video[:, 0] + 1) / 2 * 255).round() / 255
    for clip in range(2):
        for frame in range(3):
            y0, x0, y1, x1 = layout.box(clip, frame)
            block = image[y0:y1, x0:x1]
            assert block.shape == (4 * 13, 5 * 13)
            # nearest neighbour: every enlarged pixel is one flat 13 × 13 square of its value
            want = expected[clip, frame].repeat_interleave(13, 0).repeat_interleave(13, 1)
            assert torch.allclose(block, want, atol=1e-6)
    # the labels are drawn in the margins (black text on white)
    assert (image[:layout.top, layout.left:] < 0.5).any()  # title and frame labels
    assert (image[layout.top:, :layout.left] < 0.5).any()  # row labels
    with pytest.raises(ValueError, match="row_labels must have 2 entries"):
        save_strip(video, tmp_path / "bad.png", row_labels=["only one"])
    plain = tmp_path / "plain.png"
    import matplotlib.pyplot as plt

    plt.imsave(plain, video[0, 0, 0].numpy(), cmap="gray")
    with pytest.raises(ValueError, match="not written by save_strip"):
        read_strip_layout(plain)


def test_bad_dtype_and_device_give_one_line_errors_before_any_work(trained, tmp_path, capsys):
    ckpt, png = str(tmp_path / "m.pt"), str(tmp_path / "s.png")
    for argv in (["video", "train", "--out", ckpt, *TINY],
                 ["video", "sample", "--model", str(trained[0]), "--out", png]):
        assert cli.main([*argv, "--dtype", "float16"]) == 2
        err = capsys.readouterr().err
        assert "--dtype must be one of float32, float64, got 'float16'" in err
        assert err.count("\n") == 1
        assert cli.main([*argv, "--device", "banana"]) == 2
        err = capsys.readouterr().err
        assert "--device 'banana' is not usable here" in err and err.count("\n") == 1
    assert not os.path.exists(ckpt) and not os.path.exists(png)


def test_float64_and_quiet_and_progress_bars(trained, tmp_path, capsys, monkeypatch):
    # progress bars are drawn only on a terminal: pretend stderr is one
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    ckpt = tmp_path / "f64.pt"
    args = ["video", "train", "--out", str(ckpt), "--steps", "3", "--threads", "1", *TINY]
    assert cli.main([*args, "--dtype", "float64"]) == 0
    captured = capsys.readouterr()
    assert "fit:" in captured.err and "/3 [" in captured.err  # the training bar
    assert "float64" in captured.out
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["config"]["train"]["dtype"] == "float64"
    assert all(v.dtype == torch.float64 for v in state["state_dict"].values()
               if v.is_floating_point())
    assert cli.main([*args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    png = tmp_path / "s.png"
    sample = ["video", "sample", "--model", str(trained[0]), "--out", str(png), "--num", "2",
              "--steps", "2", "--threads", "1", "--dtype", "float64"]
    assert cli.main(sample) == 0
    captured = capsys.readouterr()
    assert "sample:" in captured.err and "/3 [" in captured.err  # Heun: 3 network calls
    assert "in float64" in captured.out
    assert cli.main([*sample, "-q"]) == 0
    assert capsys.readouterr().err == ""

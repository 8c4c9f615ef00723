"""The `flowmatch` command line: help, the demo end to end, plugin discovery."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from importlib.metadata import EntryPoint

import pytest

from flowmatch import cli
from flowmatch.data import TOY_DATASETS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowmatch.cli", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def test_help_runs_and_lists_the_demo():
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    assert "demo" in out.stdout and "usage: flowmatch" in out.stdout
    demo = _run("demo", "--help")
    assert demo.returncode == 0 and "--dataset" in demo.stdout and "checkerboard" in demo.stdout


def test_help_does_not_import_the_heavy_parts():
    # `flowmatch --help` must not pay for matplotlib, scipy, torchdiffeq or the training code.
    # Installed plugins are stubbed out: each plugin answers for its own import cost.
    code = textwrap.dedent("""
        import sys
        from flowmatch import cli
        from flowmatch.cli import main
        cli._plugin_entry_points = lambda: []
        try:
            main(["--help"])
        except SystemExit:
            pass
        heavy = ["matplotlib", "scipy", "torchdiffeq", "ot", "flowmatch.training",
                 "flowmatch.solvers", "flowmatch.models"]
        print("LOADED", [m for m in heavy if m in sys.modules])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout


def test_python_dash_m_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "flowmatch", "--help"], capture_output=True,
                         text=True, env=ENV, timeout=60)
    assert out.returncode == 0 and "demo" in out.stdout


def test_a_source_checkout_without_entry_point_metadata_still_has_the_shipped_plugins(
        monkeypatch):
    # PYTHONPATH=. on a machine where the package was never installed: no metadata to read
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])
    names = {ep.name: ep.value for ep in cli._plugin_entry_points()}
    assert names == cli.SHIPPED_PLUGINS


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "flowmatch")
    if not os.path.exists(script):
        pytest.skip("package not installed with its console script in this interpreter's bin")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 0 and "demo" in out.stdout


def test_demo_trains_samples_and_writes_a_png(tmp_path):
    png = tmp_path / "demo.png"
    out = _run("demo", "--dataset", "8gaussians", "--steps", "150", "--hidden", "64",
               "--layers", "3", "--samples", "500", "--ode-steps", "10", "--no-progress",
               "--out", str(png))
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    match = re.search(r"W2\(samples, data\) = ([\d.]+) \(data vs data: ([\d.]+), source "
                      r"noise: ([\d.]+)", out.stdout)
    assert match, out.stdout
    w2, floor, noise = map(float, match.groups())
    # even 150 steps move the samples most of the way from the source to the data (measured:
    # W2 1.09, source noise 2.72; two fresh data sets of 500 points score 0.88 since their
    # mode counts differ)
    assert 0 < floor < noise
    assert w2 < 0.6 * noise
    assert out.stdout.rstrip().splitlines()[-1] == f"wrote {png}"  # the output path comes last
    # the picture states W2 beside the data-vs-data baseline (also in its text chunk)
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (800, 480)
        caption = image.text["Description"]
    assert f"W2(samples, data) = {w2:.3f}" in caption
    assert f"W2(data, data) = {floor:.3f}" in caption and "n = 500" in caption


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["demo", "--steps", "0"])
    assert err.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--dataset", "swissroll"])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--stesp", "10"])  # misspelled option


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 1
    assert "usage: flowmatch" in capsys.readouterr().out


def test_demo_choices_match_the_registry():
    assert set(cli.DEMO_DATASETS) == set(TOY_DATASETS)


def test_plugins_add_commands_and_a_broken_plugin_only_warns(tmp_path, monkeypatch, capsys):
    (tmp_path / "fm_test_plugin.py").write_text(textwrap.dedent("""
        def _hello(args):
            print(f"hello {args.name}")
            return 3

        def register_cli(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("--name", default="world")
            p.set_defaults(func=_hello)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        EntryPoint(name="good", value="fm_test_plugin", group=cli.PLUGIN_GROUP),
        EntryPoint(name="broken", value="fm_no_such_module_xyz", group=cli.PLUGIN_GROUP),
    ]
    monkeypatch.setattr(cli, "_plugin_entry_points", lambda: eps)
    with pytest.warns(RuntimeWarning, match="plugin 'broken'.*could not be loaded"):
        code = cli.main(["hello", "--name", "flow"])
    assert code == 3
    assert "hello flow" in capsys.readouterr().out
    with pytest.warns(RuntimeWarning), pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "say hello" in capsys.readouterr().out
    # built-in commands do not load plugins at all (no warning from the broken one)
    calls = []
    monkeypatch.setattr(cli, "_plugin_entry_points", lambda: calls.append(1) or eps)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert calls == []


def test_demo_checks_its_output_folder_and_device_before_training(tmp_path, capsys):
    # both used to fail only after training (a lost run) or with a bare AssertionError
    started = time.perf_counter()
    assert cli.main(["demo", "--out", str(tmp_path / "missing" / "x.png")]) == 2
    assert "the folder of --out" in capsys.readouterr().err
    assert cli.main(["demo", "--device", "banana", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--device 'banana' is not usable here" in err and err.count("\n") == 1
    assert time.perf_counter() - started < 30, "rejected before any training"
    assert not (tmp_path / "x.png").exists()


def test_video_schedule_rejects_bad_numbers_in_one_line(capsys):
    for argv in (["--steps", "0"], ["--shift", "0"]):
        assert cli.main(["video", "schedule", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("flowmatch video schedule: error:") and err.count("\n") == 1


def _subcommands(parser):
    """(name, parser) of every subcommand below ``parser``, depth first."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, subsub in _subcommands(sub):
                    yield f"{name} {inner}", subsub


def test_every_core_and_video_command_has_examples_and_every_option_a_help():
    import argparse

    parser = cli.build_parser()
    assert "examples:" in (parser.epilog or "")
    commands = dict(_subcommands(parser))
    ours = {n: p for n, p in commands.items() if n.split()[0] in ("demo", "video")}
    assert {"demo", "video", "video schedule", "video bouncing", "video train",
            "video sample"} <= set(ours)
    for name, sub in ours.items():
        assert "examples:" in (sub.epilog or ""), name
        assert f"flowmatch {name}" in sub.epilog, name  # the examples run this very command
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    for name in ("demo", "video train", "video sample"):
        options = {o for a in ours[name]._actions for o in a.option_strings}
        assert {"--device", "--seed", "--dtype", "--quiet"} <= options, name


def test_demo_bad_dtype_is_one_line_and_exit_2(tmp_path, capsys):
    started = time.perf_counter()
    assert cli.main(["demo", "--dtype", "half", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err == "flowmatch demo: error: --dtype must be one of float32, float64, got 'half'\n"
    assert time.perf_counter() - started < 30, "rejected before any training"
    assert not (tmp_path / "x.png").exists()


def test_demo_progress_bar_on_a_terminal_only_and_never_with_quiet(tmp_path, capsys,
                                                                   monkeypatch):
    args = ["demo", "--dataset", "moons", "--steps", "20", "--hidden", "16", "--layers", "2",
            "--samples", "100", "--ode-steps", "2", "--out", str(tmp_path / "d.png")]
    assert cli.main(args) == 0  # stderr captured: not a terminal, so no bar
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main([*args, "--dtype", "float64"]) == 0
    captured = capsys.readouterr()
    assert "fit:" in captured.err and "/20 [" in captured.err  # tqdm's bar over 20 steps
    assert "in float64" in captured.out
    assert cli.main([*args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""

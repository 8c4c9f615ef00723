"""Plugins are found through entry points and discovering them stays cheap."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points


def test_video_plugin_is_registered():
    names = {ep.name: ep.value for ep in entry_points(group="flowmatch.plugins")}
    assert names.get("video") == "flowmatch.plugins.video.plugin"


def test_help_with_plugins_does_not_import_torch():
    code = (
        "import sys\n"
        "sys.argv = ['flowmatch', '--help']\n"
        "from flowmatch.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'flowmatch --help imported torch'\n"
        "print('video' in sys.modules.get('flowmatch.plugins.video.plugin').__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "video" in out.stdout  # the plugin's sub-command is listed

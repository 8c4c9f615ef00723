"""The documentation site: it builds with ``mkdocs build --strict``, its API pages show every
public name, and the examples that ``tests/test_docs.py`` does not reach run as written —
the tutorials under docs/tutorials/, the plugin of docs/plugins.md through the real
entry-point discovery, and the side-by-side blocks of docs/migrating.md where the other
library is installed."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = r"```{lang}\n(.*?)```"


def blocks(path: Path, lang: str = "python") -> list[str]:
    return re.findall(BLOCK.format(lang=lang), path.read_text(), re.S)


def run_example(code: str) -> None:
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})


# -- the site builds -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the docs extra is not installed (no {', '.join(missing)}): "
                    "pip install -e '.[docs]' to build the site")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (
        "mkdocs build --strict failed (a broken link, cross-reference or docstring):\n"
        + proc.stdout[-4000:] + proc.stderr[-8000:])
    return out


def test_site_builds_strictly(site):
    assert (site / "index.html").is_file()
    assert (site / "api" / "geometry" / "index.html").is_file()


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:"):text.index("\nplugins:")]
    return re.findall(r":\s*(\S+\.md)\s*$", nav, re.M)


def test_every_page_is_in_the_navigation():
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    excluded = {"benchmarks_header.md"}  # a fragment of benchmarks.md (exclude_docs)
    nav = _nav_pages()
    assert len(nav) == len(set(nav)), "a page is listed twice"
    assert pages - excluded == set(nav), (sorted(pages - excluded - set(nav)),
                                          sorted(set(nav) - pages))


# every public name of these modules must have an entry (an anchor) on its API page
API_PAGES = {
    "geometry": ["flowmatch.geometry"],
    "paths": ["flowmatch.paths"],
    "models": ["flowmatch.models"],
    "solvers": ["flowmatch.solvers"],
    "training": ["flowmatch.training"],
    "data": ["flowmatch.data"],
    "crystal": [f"flowmatch.plugins.crystal.{m}" for m in
                ("representation", "data", "csp", "model", "metrics", "baselines", "plugin")],
    "video": [f"flowmatch.plugins.video.{m}" for m in
              ("conventions", "timesteps", "samplers", "conditioning", "adapters", "scheduler",
               "model", "data", "metrics", "training", "plugin")],
}


def _static_all(module: str) -> list[str]:
    """``__all__`` read from the source (no import: the plugins need optional packages)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                                for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{module} has no literal __all__")


@pytest.mark.parametrize("page", sorted(API_PAGES))
def test_api_pages_document_every_public_name(site, page):
    html = (site / "api" / page / "index.html").read_text()
    anchors = set(re.findall(r'id="([^"]+)"', html))
    missing = [f"{module}.{name}" for module in API_PAGES[page]
               for name in _static_all(module)
               if not any(a == f"{module}.{name}" or a.endswith(f".{name}") for a in anchors)]
    assert not missing, f"api/{page}.md lacks {missing} (a name shadowed by its module?)"


def test_install_page_quotes_the_readme_quickstart():
    def quickstart(text: str) -> list[str]:
        section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
        return re.findall(r"```bash\n(.*?)```", section, re.S)

    readme = quickstart((ROOT / "README.md").read_text())
    assert len(readme) == 2 and quickstart((DOCS / "install.md").read_text()) == readme


# -- examples that tests/test_docs.py does not run ---------------------------------------------
def tutorial_examples():
    # tests/test_docs.py runs docs/*.md; pages in subfolders are run here
    for doc in sorted(p for p in DOCS.rglob("*.md") if p.parent != DOCS):
        for i, code in enumerate(blocks(doc)):
            yield pytest.param(code, id=f"{doc.relative_to(DOCS).as_posix()}-{i}")


@pytest.mark.parametrize("code", list(tutorial_examples()))
def test_tutorial_example_runs(code, capsys):
    if "pymatgen" in code:
        pytest.importorskip("pymatgen")
    run_example(code)
    assert capsys.readouterr().out.strip(), "an example should print what it shows"


# the pages written with the site (tests/test_docs.py runs their examples); each example
# shows a result, except the plugin module of docs/plugins.md, exercised through the CLI below
SITE_PAGES = ["index.md", "install.md", "concepts.md", "plugins.md", "migrating.md"]


@pytest.mark.parametrize("page", SITE_PAGES)
def test_site_page_examples_print_what_they_show(page):
    plugin_module = blocks(DOCS / "plugins.md")[0]
    quiet = [i for i, code in enumerate(blocks(DOCS / page))
             if code != plugin_module and "print(" not in code]
    assert not quiet, f"{page}: examples {quiet} print nothing"


def test_plugin_page_module_runs_through_entry_point_discovery(tmp_path, monkeypatch, capsys):
    from flowmatch import cli

    code = blocks(DOCS / "plugins.md")[0]
    assert code.startswith("# flowmatch_ring/plugin.py")
    package = tmp_path / "flowmatch_ring_doc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    # the entry point the page's pyproject.toml snippet declares, with the module renamed
    toml = blocks(DOCS / "plugins.md", "toml")[0]
    assert '[project.entry-points."flowmatch.plugins"]' in toml
    assert 'ring = "flowmatch_ring.plugin"' in toml
    eps = [EntryPoint(name="ring", value="flowmatch_ring_doc.plugin", group=cli.PLUGIN_GROUP)]
    monkeypatch.setattr(cli, "_plugin_entry_points", lambda: eps)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "train a 2D flow on a ring" in capsys.readouterr().out
    assert cli.main(["ring", "--steps", "150"]) == 0
    out = capsys.readouterr().out
    radius = float(re.search(r"median radius of 1000 samples ([\d.]+)", out).group(1))
    assert abs(radius - 2.0) < 0.3, out


def _imported_packages(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(textwrap.dedent(code))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def comparison_examples():
    # blocks fenced ```py put another library beside flowmatch; run where it is installed
    for doc in sorted(DOCS.rglob("*.md")):
        for i, code in enumerate(blocks(doc, "py")):
            yield pytest.param(code, id=f"{doc.relative_to(DOCS).as_posix()}-py{i}")


@pytest.mark.parametrize("code", list(comparison_examples()))
def test_comparison_example_runs_where_the_peer_is_installed(code, capsys):
    for package in sorted(_imported_packages(code) - {"flowmatch", "torch", "math"}):
        pytest.importorskip(package)
    try:
        run_example(code)
    except ModuleNotFoundError as err:  # what the peer imports in turn (torchcfm needs POT)
        if (err.name or "").split(".")[0] in ("flowmatch", "torch"):
            raise
        pytest.skip(f"the peer library needs {err.name}, which is not installed")
    out = capsys.readouterr().out
    assert out.strip() and "False" not in out, out

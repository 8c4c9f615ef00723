"""benchmarks/crystal_dng.py --add-published: published rows added, the run's own rows untouched."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"


@pytest.fixture(scope="module")
def dng():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling _common
    try:
        yield importlib.import_module("crystal_dng")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _own_rows(doc: dict) -> list[dict]:
    return [r for r in doc["rows"] if not r["system"].startswith("published: ")]


@pytest.mark.parametrize("dataset", ["perov_5", "carbon_24"])
def test_add_published_keeps_flowmatch_rows(dng, tmp_path: Path, dataset: str) -> None:
    source = RESULTS / f"crystal_dng_{dataset}.json"
    if not source.is_file():
        pytest.skip(f"{source} not present")
    before = json.loads(source.read_text())
    path = tmp_path / source.name
    shutil.copy(source, path)
    # a stale published row is replaced, not kept beside the new ones
    stale = dict(before)
    stale["rows"] = _own_rows(before) + [{"system": "published: stale", "metric": "COV-R",
                                          "value": 1.0, "unit": "%", "better": "higher"}]
    path.write_text(json.dumps(stale, indent=2))

    doc = dng.main(["--add-published", str(path)])
    after = json.loads(path.read_text())
    assert after == doc
    assert _own_rows(after) == _own_rows(before)
    published = [r for r in after["rows"] if r["system"].startswith("published: ")]
    expected = dng.PUBLISHED[dataset]
    assert [(r["system"], r["metric"], r["value"], r["unit"], r["better"]) for r in published] \
        == [tuple(p) for p in expected]
    assert all("10,000 samples" in r["note"] and r["source"] for r in published)
    # only the published_rows note changes in the config
    changed = {k for k in before["config"] if before["config"][k] != after["config"].get(k)}
    assert changed <= {"published_rows"}
    assert list(after["config"]) == list(before["config"])
    assert after["config"]["published_rows"] == dng.PUBLISHED_SOURCE
    # rewriting again changes nothing, and leaves no temporary file behind
    text = path.read_text()
    dng.main(["--add-published", str(path)])
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_published_metrics_are_the_scripts_own(dng) -> None:
    emitted = {metric: (unit, better) for _, metric, unit, better, _ in dng.ROWS}
    for dataset, rows in dng.PUBLISHED.items():
        assert rows, dataset
        for system, metric, value, unit, better in rows:
            assert system.startswith("published: ")
            assert emitted[metric] == (unit, better), (dataset, metric)
            assert value >= 0
    assert set(dng.DATASETS) <= set(dng.PUBLISHED)


def test_add_published_refuses_other_benchmarks(dng, tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"benchmark": "crystal_csp", "config": {"dataset": "perov_5"},
                                "rows": []}))
    with pytest.raises(SystemExit):
        dng.main(["--add-published", str(path)])
    assert json.loads(path.read_text())["benchmark"] == "crystal_csp"

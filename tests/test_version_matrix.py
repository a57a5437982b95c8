"""scripts/test_versions.py's grid: the skip rule and docs/version-matrix.md.

- a pair is skipped only where the Requires-Python of distributed or of its dask
  excludes the CPython (read from the packages, here from a prepared cache);
- the page shows every release x CPython cell, a cell with no result as "not run"
  (never as a pass), a skipped one with its reason;
- docs/version-matrix.md is what the script renders from docs/version-matrix.json.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "versions_script", ROOT / "scripts" / "test_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("spec, pyver, admitted", [
    (">=3.10", "3.10", True),
    (">=3.10", "3.13", True),
    (">=3.11", "3.10", False),
    (">=3.9,<3.13", "3.13", False),
    (">=3.9,<3.13", "3.12", True),
    (">=3.10.1", "3.10", True),  # 3.10.1 and later micro releases
    ("!=3.11.*", "3.11", False),
    ("~=3.10", "3.13", True),
    ("~=3.10.0", "3.11", False),
    ("", "3.13", True),
])
def test_requires_python_rule(script, spec, pyver, admitted):
    assert script.allows(spec, pyver) is admitted


def test_skip_reason_reads_both_packages(script, tmp_path, monkeypatch):
    release = script.supported_releases()[0]
    dask = script.dask_for(release)
    cache = tmp_path / "requires-python.json"
    cache.write_text(json.dumps({f"distributed=={release}": ">=3.10",
                                 f"dask=={dask}": ">=3.11"}))
    monkeypatch.setattr(script, "REQUIRES_CACHE", cache)
    assert script.skip_reason(release, "3.11") is None
    assert script.skip_reason(release, "3.10") == f"dask {dask} requires Python >=3.11"


def test_render_shows_every_cell(script):
    releases = script.supported_releases()
    first, last = releases[0], releases[-1]
    matrix = {"cells": {
        script.cell_key(first, "3.10"): {
            "release": first, "python": "3.10", "result": "pass", "tests": "9 passed",
            "differential": "10 stimuli, identical", "cluster": "5/5 ways in",
            "seconds": 42, "date": "2026-12-04"},
        script.cell_key(last, "3.13"): {
            "release": last, "python": "3.13", "result": "skipped",
            "reason": f"distributed {last} requires Python <3.13"},
    }}
    page = script.render(matrix)
    rows = [ln for ln in page.splitlines() if ln.startswith("| 20")]
    grid = rows[: len(releases)]
    assert [r.split(" | ")[0].strip("| ") for r in grid] == list(releases)
    assert grid[0].split(" | ")[1] == "pass (42 s)"
    assert grid[0].count("not run") == 3
    assert grid[-1].endswith("| skipped |")
    cells = len(releases) * len(script.PYTHONS)
    assert f"{cells} cells: {cells - 2} not run, 1 pass, 1 skipped." in page
    assert f"distributed {last} on CPython 3.13: distributed {last} requires" in page


def test_committed_page_is_the_rendering_of_the_json(script):
    matrix = json.loads((ROOT / "docs" / "version-matrix.json").read_text())
    assert (ROOT / "docs" / "version-matrix.md").read_text() == script.render(matrix)
    # every cell recorded is a real result or a rule's skip
    for key, cell in matrix["cells"].items():
        assert key == script.cell_key(cell["release"], cell["python"])
        assert cell["result"] in ("pass", "FAIL", "skipped", "no interpreter"), cell
        if cell["result"] == "skipped":
            assert "requires Python" in cell["reason"]

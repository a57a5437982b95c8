"""The Sphinx docs build without a warning, and their benchmark page shows one run.

`make docs` runs the same build; here it goes to a temporary folder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
RUN_DIR = os.path.join(DOCS, "benchmark-run")

pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")


def test_docs_build_without_warnings(tmp_path):
    html = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         DOCS, str(html), "-d", str(tmp_path / "doctrees")],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not proc.stderr.strip(), proc.stderr
    for page in ("index", "getting-started", "ways-in", "deployment", "prometheus", "versions",
                 "releasing", "design", "benchmarks"):
        assert (html / f"{page}.html").exists(), page
    bench = (html / "benchmarks.html").read_text()
    assert "lifecycle.png" in bench and "e2e.png" in bench
    assert (html / "_images" / "lifecycle.png").exists()
    assert "End to end" in bench and "Isolated state machine" in bench
    assert "Low-latency dispatch" in bench and "fastworker+plugin" in bench


def _table_matches_results(run_dir):
    """``run_dir``/table.md is what report.py makes of the results.json beside it;
    returns that record."""
    pytest.importorskip("matplotlib")
    with open(os.path.join(run_dir, "results.json")) as f:
        record = json.load(f)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import report
    finally:
        sys.path.pop(0)
    with open(os.path.join(run_dir, "table.md")) as f:
        assert f.read() == report.markdown_report(record)
    return record


def test_benchmark_page_table_is_that_of_its_results(tmp_path):
    """docs/benchmark-run/table.md is what report.py makes of the results.json beside it."""
    record = _table_matches_results(RUN_DIR)
    assert record["rows"] and record["e2e"]["rows"]


@pytest.mark.parametrize("run", ["benchmark-inline", "benchmark-pool"])
def test_other_e2e_runs_tables_are_those_of_their_results(run):
    """The benchmark page's other end-to-end runs: tables from report.py too."""
    record = _table_matches_results(os.path.join(DOCS, run))
    assert record["e2e"]["rows"]


def test_dispatch_page_table_is_that_of_its_results():
    """docs/dispatch-run/table.md likewise, for the low-latency dispatch rows."""
    record = _table_matches_results(os.path.join(DOCS, "dispatch-run"))
    rows = record["dispatch"]["rows"]
    assert {r["workers"] for r in rows} == {1, 2, 4, 8, 16}
    assert all("fastworker+plugin" in r["medians"] for r in rows)


@pytest.mark.parametrize(
    "run, sizes", [("dispatch-wire", {1}), ("dispatch-wire-many", {4, 16}), ("dispatch-final", {1}), ("dispatch-fair", {1}),
                     ("dispatch-16", {16}), ("dispatch-16-alone", {16}), ("dispatch-4-alone", {4}),
                     ("dispatch-1x2-alone", {1}), ("dispatch-1x2-read-ahead", {1}), ("dispatch-1x2-spill", {1}),
                     ("dispatch-1x2-xeon", {1}), ("dispatch-1x2-array", {1})]
)
def test_dispatch_wire_tables_are_those_of_their_results(run, sizes):
    """docs/dispatch-wire*: the runs with fastworker.wire on the paced streams."""
    record = _table_matches_results(os.path.join(DOCS, run))
    rows = record["dispatch"]["rows"]
    assert {r["workers"] for r in rows} == sizes
    assert all("fastworker+plugin" in r["medians"] for r in rows)


def test_dispatch_pool_table_is_that_of_its_results():
    """docs/dispatch-pool: the default configuration and the opted-in event loop."""
    record = _table_matches_results(os.path.join(DOCS, "dispatch-pool"))
    rows = record["dispatch"]["rows"]
    assert all("fastworker-inline+plugin" in r["medians"] for r in rows)


def test_benchmark_page_names_the_measured_release():
    """The benchmark page says which distributed release its run measured."""
    with open(os.path.join(RUN_DIR, "results.json")) as f:
        env = json.load(f)["environment"]
    with open(os.path.join(DOCS, "benchmarks.md")) as f:
        page = f.read()
    assert f"This run measured **distributed {env['distributed']}** (dask {env['dask']})" in page

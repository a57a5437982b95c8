"""`make bench` end to end, on tiny sizes: the results folder and what is in it.

One run of benchmarks/run.py in a subprocess (as `make bench` starts it): the
chain lifecycle at two small N, every end-to-end workload on a 2x1 cluster of
each implementation (worker processes) and the dispatch rows on 1 and 2 worker
processes, one repeat each, --quiet.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    proc = subprocess.run(
        [sys.executable, RUN, "--only", "lifecycle", "--only", "e2e", "--scenario", "chain",
         "--sizes", "100,300", "--repeats", "1", "--e2e-tasks", "120", "--e2e-repeats", "1",
         "--e2e-configs", "2x1", "--only", "dispatch", "--dispatch-sizes", "1,2",
         "--dispatch-tasks", "60", "--dispatch-repeats", "1", "--quiet", "--note", "a tiny test run", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "results.json") as f:
        record = json.load(f)
    return out, proc, record


def test_prints_both_tables_and_no_progress_when_quiet(bench_run):
    _, proc, _ = bench_run
    assert "Isolated state machine" in proc.stdout
    assert "End to end on LocalCluster(processes=True)" in proc.stdout
    for workload in ("map no-op", "array sum", "tree (fan-in 8)", "transfers"):
        assert f"2x1      {workload}" in proc.stdout
    assert "Low-latency dispatch" in proc.stdout
    assert "e2e:" not in proc.stderr and "done:" not in proc.stderr
    assert "dispatch:" not in proc.stderr


def test_results_json_has_versions_machine_and_raw_repeats(bench_run):
    _, _, record = bench_run
    env = record["environment"]
    for key in ("date", "python", "os", "cpu_model", "cpus", "ram_gib", "dask",
                "distributed", "fastworker"):
        assert env[key], key
    assert record["command"].startswith("benchmarks/run.py --only lifecycle")
    assert record["note"] == "a tiny test run"
    rows = record["rows"]
    assert [(r["group"], r["case"]) for r in rows] == [("lifecycle", "chain")] * 2
    assert [r["n"] for r in rows] == [100, 300]
    for r in rows:
        assert len(r["stock"]) == len(r["fastworker"]) == 1
        assert r["speedup"] == pytest.approx(r["stock_median"] / r["fastworker_median"])


def test_e2e_rows_measure_both_implementations(bench_run):
    _, _, record = bench_run
    info = record["e2e"]["info"]
    assert info["state_classes"]["2x1"] == {
        "stock": "distributed.worker_state_machine.WorkerState",
        "fastworker": "fastworker.workerstate.WorkerState",
        "fastworker_inline": "fastworker.workerstate.WorkerState",
    }
    assert info["cluster_config"]["fastworker_inline"] == {"fastworker.inline.automatic": True}
    rows = record["e2e"]["rows"]
    assert [r["workload"] for r in rows] == ["map no-op", "array sum", "tree (fan-in 8)", "transfers"]
    for r in rows:
        for impl in ("stock", "fastworker", "fastworker_inline"):
            (run,) = r[impl]
            assert run["wall"] > 0 and run["tasks"] > 0
            # the state machine ran, and took part of the workers' CPU time
            assert run["stimuli"] >= run["tasks"]
            assert 0 < run["sm_seconds"] < run["worker_cpu"]
            med = r[f"{impl}_median"]
            assert med["tasks_per_s"] == pytest.approx(run["tasks"] / run["wall"])
            assert 0 < med["sm_share"] < 1
        assert r["stock"][0]["tasks"] == r["fastworker"][0]["tasks"] == r["fastworker_inline"][0]["tasks"]
        assert r["inline_wall_speedup"] == pytest.approx(
            r["stock"][0]["wall"] / r["fastworker_inline"][0]["wall"]
        )
        assert r["wall_speedup"] == pytest.approx(r["stock"][0]["wall"] / r["fastworker"][0]["wall"])
    by_name = {r["workload"]: r for r in rows}
    assert by_name["map no-op"]["stock"][0]["tasks"] == 120
    # 40 outputs, each with one input on the other worker: incoming transfers
    # (a transfer may bring several keys), none for the independent map
    for impl in ("stock", "fastworker"):
        assert by_name["transfers"][impl][0]["transfers"] >= 1
        assert by_name["map no-op"][impl][0]["transfers"] == 0


def test_dispatch_rows_measure_four_configurations(bench_run):
    _, _, record = bench_run
    info = record["dispatch"]["info"]
    assert info["sizes"] == [1, 2]
    assert info["configurations"]["fastworker+plugin"] == {"workers": "fastworker", "scheduler_plugin": True}
    assert info["configurations"]["stock"] == {"workers": "stock", "scheduler_plugin": False}
    rows = record["dispatch"]["rows"]
    assert [(r["workers"], r["workload"]) for r in rows] == [
        (1, "map no-op"), (1, "tree (fan-in 8)"), (2, "map no-op"), (2, "tree (fan-in 8)")
    ]
    for r in rows:
        assert set(r["runs"]) == {"stock", "stock+plugin", "fastworker", "fastworker+plugin"}
        tasks = {c: runs[0]["tasks"] for c, runs in r["runs"].items()}
        assert len(set(tasks.values())) == 1 and min(tasks.values()) > 0, tasks
        for c, (run,) in r["runs"].items():
            assert run["wall"] > 0 and run["scheduler_cpu"] > 0 and run["worker_cpu"] > 0
            med = r["medians"][c]
            assert med["tasks_per_s"] == pytest.approx(run["tasks"] / run["wall"])
            # same task count in every configuration: tasks/s ratio = wall ratio
            assert r["speedup"][c] == pytest.approx(r["runs"]["stock"][0]["wall"] / run["wall"])
        assert r["speedup"]["stock"] == 1.0
    assert {r["runs"]["stock"][0]["tasks"] for r in rows if r["workload"] == "map no-op"} == {60}


def test_dispatch_one_cluster_at_a_time():
    """--dispatch-one-at-a-time: the same rows, each repeat on a cluster of its own,
    nothing left running afterwards."""
    import psutil

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench_dispatch
    import report

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    rows, info = bench_dispatch.run(tasks=40, repeats=2, progress=False, sizes=(1,),
                                    workloads=["map no-op"], one_at_a_time=True)
    assert info["one_cluster_at_a_time"] is True
    (row,) = rows
    assert set(row.runs) == {"stock", "stock+plugin", "fastworker", "fastworker+plugin"}
    for config, runs in row.runs.items():
        assert [r["tasks"] for r in runs] == [40, 40], config
        assert all(r["wall"] > 0 and r["scheduler_cpu"] > 0 and r["worker_cpu"] > 0 for r in runs)
    left = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE} - before
    assert not left, left
    env = {"date": "d", "cpus": 2, "platform": "p", "python": "3", "dask": "x",
           "distributed": "y", "fastworker": "z"}
    record = {"environment": env, "dispatch": {"info": info, "rows": [bench_dispatch.row_record(r) for r in rows]}}
    assert "Only the measured configuration's cluster was alive" in report.markdown_report(record)


def test_dispatch_array_sum_only_when_asked():
    """The array sum is a dispatch workload only by name (``--workload array``): the
    same tasks on every configuration."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench_dispatch

    assert "array sum" not in bench_dispatch.WORKLOADS
    assert "array sum" in bench_dispatch.ALL_WORKLOADS
    assert bench_dispatch.describe("array sum", 3_000) == "da.ones((1,550, 1,550), chunks=50).sum()"
    rows, info = bench_dispatch.run(tasks=40, repeats=1, progress=False, sizes=(1,),
                                    workloads=["array sum"])
    (row,) = rows
    assert row.workload == "array sum" and set(info["workloads"]) == {"array sum"}
    counts = {config: [r["tasks"] for r in runs] for config, runs in row.runs.items()}
    assert len(set(map(tuple, counts.values()))) == 1 and counts["stock"][0] > 0, counts


def test_table_and_plots_written(bench_run):
    out, _, record = bench_run
    table = (out / "table.md").read_text()
    assert table.startswith("**Note:** a tiny test run\n")
    assert "## Isolated state machine" in table and "## End to end" in table
    assert "| 2x1     | transfers" in table
    assert "## Low-latency dispatch" in table and "| 2       | tree (fan-in 8) |" in table
    for name in ("lifecycle.png", "e2e.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name


def test_report_rebuilds_the_same_table(bench_run, tmp_path):
    out, _, _ = bench_run
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "report.py"),
         str(out / "results.json"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "table.md").read_text() == (out / "table.md").read_text()
    assert (tmp_path / "results.json").read_bytes() == (out / "results.json").read_bytes()
    assert (tmp_path / "e2e.png").read_bytes().startswith(PNG_MAGIC)


def test_levels_table_puts_the_four_levels_side_by_side(bench_run):
    """Each end-to-end workload beside the isolated scenario of its shape: isolated,
    live state machine, worker CPU and tasks/s, stock / fastworker, with ratios."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import report

    _, proc, record = bench_run
    assert report.levels_table(record) == ""  # chain has no end-to-end counterpart
    assert "Four levels" not in proc.stdout
    record = json.loads(json.dumps(record))
    for r in record["rows"]:
        r["case"] = "independent"  # stands in for the map's shape
    table = report.levels_table(record).splitlines()
    (line,) = [x for x in table if "map no-op" in x]
    e2e = next(r for r in record["e2e"]["rows"] if r["workload"] == "map no-op")
    iso = min(record["rows"], key=lambda r: abs(r["n"] - 10_000))
    s, f = e2e["stock_median"], e2e["fastworker_median"]
    assert f"independent ({iso['n']:,})" in line
    assert f"({iso['stock_median'] / iso['fastworker_median']:.1f}x)" in line
    assert f"{s['sm_us_per_task']:,.0f} / {f['sm_us_per_task']:,.0f}" in line
    assert f"{s['cpu_us_per_task']:,.0f} / {f['cpu_us_per_task']:,.0f} ({e2e['cpu_ratio']:.2f}x)" in line
    assert f"{f['tasks_per_s'] / s['tasks_per_s']:.2f}x" in line
    assert "Four levels per workload" in report.text_report(record)
    assert "## Four levels per workload" in report.markdown_report(record)


@pytest.mark.parametrize("impl", ["stock", "fastworker"])
@pytest.mark.parametrize("shape", ["chain", "fill", "unpause"])
def test_callgrind_driver_runs_each_shape_once(impl, shape):
    """benchmarks/callgrind_ratios.py's driver (what runs under valgrind) plays each
    shape to its end on both implementations and reports the units it counted."""
    script = os.path.join(ROOT, "benchmarks", "callgrind_ratios.py")
    proc = subprocess.run(
        [sys.executable, script, "--drive", impl, shape, "60"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = 2_000 if shape == "unpause" else 60
    assert f"UNITS {expected}" in proc.stdout.splitlines()


def test_wire_benchmark_measures_every_shape():
    """bench_wire writes each payload through both paths and reads it back through
    both; a payload the wire would leave to the comm must fail loudly, not hang."""
    out = subprocess.run(
        [sys.executable, "benchmarks/bench_wire.py", "--n", "20", "--repeats", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "µs" not in line]
    assert [r.split(" | ")[0][2:] for r in rows if not r.startswith("| ---")] == [
        "task-finished (worker -> scheduler)", "compute-task (scheduler -> worker)", "free-keys x4"]


def test_round_trip_segments_from_records():
    """benchmarks/round_trip.py's arithmetic on hand-made records of one task."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import round_trip
    finally:
        sys.path.pop(0)
    scheduler = [("write", 1.0, 1.1, ["a"]), ("finished", 1.9, 1.95, "a"),
                 ("write", 2.0, 2.1, ["b"])]
    worker = [("compute", 1.2, 1.25, "a"), ("run", 1.3, None, "a"),
              ("success", 1.5, 1.55, "a"), ("write", 1.7, 1.75, ["a"])]
    rows, counts = round_trip.segments(worker, scheduler)
    assert counts == {"tasks": 1, "scheduler writes with compute-task": 2,
                      "worker writes with task-finished": 1}
    got = [round(values[0]) for _, values in rows]
    assert got == [200_000, 100_000, 200_000, 50_000, 200_000, 200_000, 50_000,
                   100_000, 900_000]


def test_round_trip_runs_on_a_real_cluster():
    out = subprocess.run(
        [sys.executable, "benchmarks/round_trip.py", "--tasks", "200"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "200 tasks, " in out.stdout.splitlines()[0]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")][2:]
    assert len(rows) == 9 and rows[-1].startswith("| a task's lifetime")

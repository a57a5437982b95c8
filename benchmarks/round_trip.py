"""Where a task's lifetime goes on a cluster of fastworker workers with the plugin.

    python benchmarks/round_trip.py [--workload map|tree] [--tasks 5000] [--threads 2]

One ``dask spec`` cluster (one fastworker worker process, the scheduler with
``--preload fastworker``), a warm-up run, then one timed run of the workload with
timestamps taken in every process by wrappers installed for this run only:

- the scheduler: around ``fastworker.wire.write`` (each write's ``compute-task``
  keys) and its ``task-finished`` stream handler;
- the worker: around ``fastworker.wire.write`` (each write's ``task-finished``
  keys), the worker's ``handle_stimulus`` (``ComputeTaskEvent`` and
  ``ExecuteSuccessEvent``) and the pool thread's run of each task.

Every timestamp is ``time.perf_counter()`` (CLOCK_MONOTONIC, one clock for the
processes of one machine). It prints the median, mean and 90th percentile of each
segment of a task's round trip, in µs. The wrappers cost time themselves (a run
with them is about a fifth slower), so read the segments against each other, and
the tasks/s only against another run of this script. The wire must be on
(``fastworker.dispatch.wire``, the default): the writes are timed there.
"""
from __future__ import annotations

import argparse
import bisect
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_dispatch  # noqa: E402
from bench_e2e import _map_noop, _settle, _tree  # noqa: E402

WORKLOADS = {"map": _map_noop, "tree": _tree}


def _time_wire_writes(wire, records: list, op: str) -> None:
    """Wrap ``wire.write`` in this process: each write that carries ``op`` messages is
    recorded with their keys."""
    write = wire.write
    clock = time.perf_counter

    def timed_write(comm, payload):
        start = clock()
        nbytes = write(comm, payload)
        keys = [m["key"] for m in payload if isinstance(m, dict) and m.get("op") == op]
        if keys:
            records.append(("write", start, clock(), keys))
        return nbytes

    wire.write = timed_write


def _install_on_worker(dask_worker) -> bool:
    from distributed.worker_state_machine import ComputeTaskEvent, ExecuteSuccessEvent

    from fastworker import runner, wire

    records = dask_worker._fastworker_round_trip = []
    clock = time.perf_counter
    _time_wire_writes(wire, records, "task-finished")
    handle_stimulus = dask_worker.handle_stimulus

    def timed_handle_stimulus(*events):
        start = clock()
        result = handle_stimulus(*events)
        stop = clock()
        for ev in events:
            if isinstance(ev, ComputeTaskEvent):
                records.append(("compute", start, stop, ev.key))
            elif isinstance(ev, ExecuteSuccessEvent):
                records.append(("success", start, stop, ev.key))
        return result

    run = runner.run_task_metered

    def timed_run(run_spec, data, execution_state, key, *args):
        records.append(("run", clock(), None, key))
        return run(run_spec, data, execution_state, key, *args)

    dask_worker.handle_stimulus = timed_handle_stimulus
    runner.run_task_metered = timed_run
    return True


def _install_on_scheduler(dask_scheduler) -> bool:
    from fastworker import wire

    records = dask_scheduler._fastworker_round_trip = []
    clock = time.perf_counter
    _time_wire_writes(wire, records, "compute-task")
    handler = dask_scheduler.stream_handlers["task-finished"]

    def timed_handler(*args, **kwargs):
        start = clock()
        result = handler(*args, **kwargs)
        records.append(("finished", start, clock(), kwargs.get("key")))
        return result

    dask_scheduler.stream_handlers["task-finished"] = timed_handler
    return True


def _records(dask_worker=None, dask_scheduler=None) -> list:
    server = dask_worker if dask_worker is not None else dask_scheduler
    records = list(server._fastworker_round_trip)
    server._fastworker_round_trip.clear()
    return records


def _clear(dask_worker=None, dask_scheduler=None) -> None:
    (dask_worker if dask_worker is not None else dask_scheduler)._fastworker_round_trip.clear()


def segments(worker_records: list, scheduler_records: list) -> tuple[list, dict]:
    """The segments of each task's round trip, µs, from the two processes' records:
    ``[(label, [values])]`` and a few counts."""
    sent, finished, finished_end, writes = {}, {}, {}, []
    for kind, start, stop, keys in scheduler_records:
        if kind == "write":
            writes.append(start)
            for key in keys:
                sent.setdefault(key, start)
        else:
            finished.setdefault(keys, start)
            finished_end.setdefault(keys, stop)
    received, started, success, reported = {}, {}, {}, {}
    worker_writes = 0
    for kind, start, stop, keys in worker_records:
        if kind == "compute":
            received.setdefault(keys, start)
        elif kind == "run":
            started.setdefault(keys, start)
        elif kind == "success":
            success.setdefault(keys, (start, stop))
        else:
            worker_writes += 1
            for key in keys:
                reported.setdefault(key, start)
    keys = [k for k in sent if k in received and k in started and k in success
            and k in reported and k in finished]

    def next_write(key):
        i = bisect.bisect_left(writes, finished[key])
        return writes[i] - finished[key] if i < len(writes) else None

    table = [
        ("scheduler writes compute-task -> the worker's state machine gets it",
         lambda k: received[k] - sent[k]),
        ("-> a pool thread starts it", lambda k: started[k] - received[k]),
        ("pool thread starts it -> its ExecuteSuccessEvent is handled",
         lambda k: success[k][0] - started[k]),
        ("that event's handling (inside handle_stimulus)",
         lambda k: success[k][1] - success[k][0]),
        ("that event's handling starts -> the worker writes task-finished",
         lambda k: reported[k] - success[k][0]),
        ("the worker writes -> the scheduler's handler starts",
         lambda k: finished[k] - reported[k]),
        ("the scheduler's handler", lambda k: finished_end[k] - finished[k]),
        ("the handler starts -> the scheduler's next compute-task write", next_write),
        ("a task's lifetime (scheduler's write to its handler)",
         lambda k: finished[k] - sent[k]),
    ]
    rows = []
    for label, f in table:
        values = [v for v in map(f, keys) if v is not None]
        rows.append((label, [1e6 * v for v in values]))
    counts = {
        "tasks": len(keys),
        "scheduler writes with compute-task": len(writes),
        "worker writes with task-finished": worker_writes,
    }
    return rows, counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="map")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]
    cluster, client = bench_dispatch.start_cluster("fastworker", True, 1, args.threads)
    try:
        workers = sorted(client.scheduler_info()["workers"])
        workload(client, 500, workers)()
        _settle(client)
        client.run(_install_on_worker)
        client.run_on_scheduler(_install_on_scheduler)
        workload(client, 200, workers)()
        _settle(client)
        client.run(_clear)
        client.run_on_scheduler(_clear)
        go = workload(client, args.tasks, workers)
        start = time.perf_counter()
        go()
        wall = time.perf_counter() - start
        (worker_records,) = client.run(_records).values()
        scheduler_records = client.run_on_scheduler(_records)
    finally:
        client.close()
        cluster.close()
    rows, counts = segments(worker_records, scheduler_records)
    if not counts["tasks"]:
        print("no task's round trip was recorded (is fastworker.dispatch.wire off?)",
              file=sys.stderr)
        return 1
    print(f"{args.workload}, 1 worker x {args.threads} threads, {args.tasks} tasks: "
          f"{args.tasks / wall:,.0f} tasks/s with the wrappers; "
          + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    print()
    print("| segment | median µs | mean µs | p90 µs |")
    print("| --- | ---: | ---: | ---: |")
    for label, values in rows:
        values.sort()
        print(f"| {label} | {statistics.median(values):,.0f} | {statistics.mean(values):,.0f} "
              f"| {values[int(0.9 * (len(values) - 1))]:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

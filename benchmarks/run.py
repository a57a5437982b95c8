"""`make bench`: stock distributed vs fastworker, side by side, in one run.

Two parts, each timing stock and fastworker alternately in the same run:

- isolated state machine: TaskState operations (ns each) and whole task lifecycles
  through one WorkerState (µs per task) at N = 1,000 and 10,000 (``--full``: also
  100,000), medians of ``--repeats`` (default 5); the gather path (GatherDep
  scheduling for 100-5,000 fetch tasks over 5-250 peers, filling ``data_needed``
  while paused, an unpause that changes nothing), bench_gather.py;
- end to end: LocalClusters with worker processes (1 worker x 2 threads, 2 workers x
  1 thread) running a no-op map, an array sum, a fan-in-8 tree and a graph with
  worker-to-worker transfers: wall time, tasks/s, worker CPU per task and the share
  of worker time inside the state machine (quick: ~2,000 tasks each, 3 repeats;
  ``--full``: ~20,000 tasks, 5 repeats);
- low-latency dispatch: a no-op map and a fan-in-8 tree on 1, 2, 4, 8 and 16 worker
  processes (1 thread each, scheduler in a process of its own): tasks/s and
  scheduler CPU per task for stock, stock workers with ``fastworker.SchedulerPlugin``,
  fastworker workers, and fastworker workers with the plugin (quick: ~1,000 tasks,
  3 repeats; ``--full``: ~10,000 tasks, 5 repeats).

Prints both tables (progress on stderr while it runs, unless ``--quiet``) and writes,
into the folder ``--out`` (default ``bench-results/<date>-<time>/``): ``results.json``
(every raw repeat, the options, versions and machine), ``table.md`` (the tables as
markdown) and the plots ``lifecycle.png`` and ``e2e.png`` (see report.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_dispatch  # noqa: E402
import bench_e2e  # noqa: E402
import bench_gather  # noqa: E402
import bench_heap  # noqa: E402
import bench_lifecycle  # noqa: E402
import bench_taskstate  # noqa: E402
import report  # noqa: E402
from common import environment, row_record  # noqa: E402

GROUPS = ("taskstate", "lifecycle", "gather", "heap", "e2e", "dispatch")
DEFAULT_GROUPS = ("taskstate", "lifecycle", "gather", "e2e", "dispatch")


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000,
                        help="operations per TaskState/heap case (default 20,000)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="repeats per isolated case; medians are reported (default 5)")
    parser.add_argument("--out", help="results folder (default bench-results/<date>-<time>)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--full", action="store_true",
                        help="the long matrix: lifecycles also at N = 100,000; end to end "
                        f"~{bench_e2e.FULL_TASKS:,} tasks per workload, 5 repeats")
    parser.add_argument("--only", action="append", choices=GROUPS,
                        help="run only this group (repeatable; default: "
                        f"{', '.join(DEFAULT_GROUPS)}; heap runs only when named)")
    parser.add_argument("--scenario", help="lifecycle scenarios whose name contains this")
    parser.add_argument("--sizes", type=_ints,
                        help="lifecycle N values, comma-separated (default 1000,10000; "
                        "--full: 1000,10000,100000)")
    parser.add_argument("--e2e-tasks", type=int,
                        help=f"task budget per end-to-end workload (default {bench_e2e.QUICK_TASKS:,}; "
                        f"--full: {bench_e2e.FULL_TASKS:,})")
    parser.add_argument("--e2e-repeats", type=int, help="end-to-end repeats (default 3; --full: 5)")
    parser.add_argument("--e2e-configs", type=lambda s: s.split(","),
                        help=f"cluster shapes, comma-separated (default {','.join(bench_e2e.CONFIGS)})")
    parser.add_argument("--workload", help="end-to-end and dispatch workloads whose name contains "
                        "this (the dispatch rows run the array sum only when asked: --workload array)")
    parser.add_argument("--dispatch-sizes", type=_ints,
                        help="worker processes of the dispatch clusters, comma-separated "
                        f"(default {','.join(map(str, bench_dispatch.SIZES))})")
    parser.add_argument("--dispatch-tasks", type=int,
                        help=f"task budget per dispatch workload (default {bench_dispatch.QUICK_TASKS:,}; "
                        f"--full: {bench_dispatch.FULL_TASKS:,})")
    parser.add_argument("--dispatch-repeats", type=int, help="dispatch repeats (default 3; --full: 5)")
    parser.add_argument("--dispatch-threads", type=int, default=1,
                        help="threads per dispatch worker process (default 1)")
    parser.add_argument("--dispatch-inline", action="store_true",
                        help="dispatch rows also for fastworker workers opted in to the "
                        "event-loop executor")
    parser.add_argument("--dispatch-one-at-a-time", action="store_true",
                        help="only the measured configuration's cluster alive, started for "
                        "each repeat (many workers on few cores)")
    parser.add_argument("--note", help="a remark about this run (e.g. what else the machine "
                        "was doing), kept in results.json and shown above the tables in table.md")
    args = parser.parse_args(argv)
    args.only = args.only or list(DEFAULT_GROUPS)
    args.sizes = args.sizes or ([1_000, 10_000, 100_000] if args.full else [1_000, 10_000])
    args.e2e_tasks = args.e2e_tasks or (bench_e2e.FULL_TASKS if args.full else bench_e2e.QUICK_TASKS)
    args.e2e_repeats = args.e2e_repeats or (5 if args.full else 3)
    args.e2e_configs = args.e2e_configs or list(bench_e2e.CONFIGS)
    for c in args.e2e_configs:
        if c not in bench_e2e.CONFIGS:
            parser.error(f"unknown cluster shape {c!r}; choose from {', '.join(bench_e2e.CONFIGS)}")
    args.dispatch_sizes = args.dispatch_sizes or list(bench_dispatch.SIZES)
    args.dispatch_tasks = args.dispatch_tasks or (
        bench_dispatch.FULL_TASKS if args.full else bench_dispatch.QUICK_TASKS)
    args.dispatch_repeats = args.dispatch_repeats or (5 if args.full else 3)
    args.out = args.out or os.path.join("bench-results", time.strftime("%Y%m%d-%H%M%S"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = not args.quiet
    command = "benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    print(f"fastworker benchmark ({'full' if args.full else 'quick'}): {', '.join(args.only)}; "
          f"results in {args.out}/", flush=True)
    env = environment()  # at the start: the commit and date of the code that runs
    start = time.perf_counter()
    rows = []
    if "taskstate" in args.only:
        say(f"TaskState operations, n={args.n:,}, {args.repeats} repeats")
        rows += bench_taskstate.run(n=args.n, repeats=args.repeats, progress=progress)
    if "lifecycle" in args.only:
        say(f"Task lifecycles, N = {', '.join(f'{n:,}' for n in args.sizes)}, {args.repeats} repeats")
        rows += bench_lifecycle.run(
            sizes=tuple(args.sizes), repeats=args.repeats, progress=progress, only=args.scenario
        )
    if "gather" in args.only:
        say(f"Gather path (GatherDep scheduling, data_needed, no-op unpause), {args.repeats} repeats")
        rows += bench_gather.run(repeats=args.repeats, progress=progress, only=args.scenario)
    if "heap" in args.only:
        say(f"HeapSet operations, n={args.n:,}, {args.repeats} repeats")
        rows += bench_heap.run(n=args.n, repeats=args.repeats, progress=progress)
    record = {
        "schema": 1,
        "command": command,
        "note": args.note,
        "options": {k: v for k, v in vars(args).items()},
        "repeats": args.repeats,
        "rows": [row_record(r) for r in rows],
    }
    if "e2e" in args.only:
        workloads = [w for w in bench_e2e.WORKLOADS if not args.workload or args.workload in w]
        say(f"End to end: {', '.join(args.e2e_configs)}; {len(workloads)} workloads, "
            f"~{args.e2e_tasks:,} tasks each, {args.e2e_repeats} repeats")
        e2e_rows, info = bench_e2e.run(
            tasks=args.e2e_tasks, repeats=args.e2e_repeats, progress=progress,
            configs=args.e2e_configs, workloads=workloads,
        )
        record["e2e"] = {"info": info, "rows": [bench_e2e.row_record(r) for r in e2e_rows]}
    if "dispatch" in args.only:
        workloads = [w for w in bench_dispatch.WORKLOADS if not args.workload or args.workload in w]
        # the optional ones only by name (--workload array)
        workloads += [w for w in bench_dispatch.OPTIONAL_WORKLOADS if args.workload and args.workload in w]
        say(f"Low-latency dispatch: {', '.join(map(str, args.dispatch_sizes))} worker processes; "
            f"{len(workloads)} workloads, ~{args.dispatch_tasks:,} tasks each, {args.dispatch_repeats} repeats")
        d_rows, info = bench_dispatch.run(
            tasks=args.dispatch_tasks, repeats=args.dispatch_repeats, progress=progress,
            sizes=tuple(args.dispatch_sizes), workloads=workloads,
            threads=args.dispatch_threads, inline=args.dispatch_inline,
            one_at_a_time=args.dispatch_one_at_a_time,
        )
        record["dispatch"] = {"info": info, "rows": [bench_dispatch.row_record(r) for r in d_rows]}
    record["elapsed_s"] = time.perf_counter() - start
    record["environment"] = {**env, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(record, f, indent=1)
    written = report.write_all(record, args.out)
    print()
    print(report.text_report(record))
    print(f"{len(rows)} isolated cases, {len(record.get('e2e', {}).get('rows', []))} end-to-end "
          f"and {len(record.get('dispatch', {}).get('rows', []))} dispatch rows in {record['elapsed_s']:.0f} s; raw repeats in {os.path.join(args.out, 'results.json')}; "
          f"also {', '.join(os.path.basename(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

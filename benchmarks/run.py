"""`make bench`: stock distributed vs fastworker, side by side, in one run.

Prints a table of medians over several repeats and the speedup of fastworker over
stock for each case, and writes every raw repeat, with versions and machine, to a
JSON file under the results folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_heap  # noqa: E402
import bench_lifecycle  # noqa: E402
import bench_taskstate  # noqa: E402
from common import format_table, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="operations per case (default 20,000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per case; medians are reported (default 5)")
    parser.add_argument("--out", default="bench-results", help="folder for the JSON record (default bench-results)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--full", action="store_true", help="lifecycles also at N = 100,000 (slow)")
    parser.add_argument(
        "--only", choices=["taskstate", "lifecycle", "heap"],
        help="run one group (heap, the queue micro-benchmarks, runs only when named)",
    )
    parser.add_argument("--scenario", help="lifecycle scenarios whose name contains this")
    args = parser.parse_args(argv)

    print(f"fastworker benchmark: n={args.n:,}, {args.repeats} repeats, medians; "
          "speedup = stock time / fastworker time", flush=True)
    start = time.perf_counter()
    rows = []
    if args.only in (None, "taskstate"):
        rows += bench_taskstate.run(n=args.n, repeats=args.repeats, progress=not args.quiet)
    if args.only in (None, "lifecycle"):
        sizes = (1_000, 10_000, 100_000) if args.full else (1_000, 10_000)
        rows += bench_lifecycle.run(
            sizes=sizes, repeats=args.repeats, progress=not args.quiet, only=args.scenario
        )
    if args.only == "heap":
        rows += bench_heap.run(n=args.n, repeats=args.repeats, progress=not args.quiet)
    print(format_table(rows))
    path = os.path.join(args.out, time.strftime("bench-%Y%m%d-%H%M%S.json"))
    write_json(path, rows, args.repeats)
    print(f"\n{len(rows)} cases in {time.perf_counter() - start:.0f} s; raw repeats in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

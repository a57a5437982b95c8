"""HeapSet benchmark: stock ``distributed.collections.HeapSet`` vs fastworker's
``PriorityHeapSet``, both keyed by ``attrgetter("priority")`` as the worker's
``ready`` / ``constrained`` / ``data_needed`` queues are.

Each case runs N operations on N elements with random 4-tuple int priorities, laid
out like a worker's (-user priority, scheduler generation, order, -worker
generation). Stock and fastworker are timed alternately within each repeat, in one
process (see common.py); the table shows medians in ns per operation and the speedup
(stock time / fastworker time). Only the named operations are timed: filling a heap
for the pop cases is done beforehand.

    python benchmarks/bench_heap.py --n 100000 --repeats 7
"""
from __future__ import annotations

import argparse
import operator
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from distributed.collections import HeapSet  # noqa: E402

from common import Row, format_table, measure  # noqa: E402
from fastworker.heap import PriorityHeapSet  # noqa: E402

PRIORITY = operator.attrgetter("priority")


class Element:
    """A minimal task stand-in: identity hash, weakref-able, a ``.priority``."""

    __slots__ = ("priority", "__weakref__")

    def __init__(self, priority):
        self.priority = priority


def _stock_taskstate(i, priority):
    from distributed.worker_state_machine import TaskState

    ts = TaskState(f"task-{i}")
    ts.priority = priority
    return ts


def _fast_taskstate(i, priority):
    from fastworker import TaskState

    ts = TaskState(f"task-{i}")
    ts.priority = priority
    return ts


def priorities(n: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = random.Random(seed)
    return [
        (-rng.randint(0, 3), rng.randint(0, 1_000), rng.randrange(n), -rng.randint(0, 10))
        for _ in range(n)
    ]


def implementations(elements: str):
    """{name: (heap factory, element factory)}."""
    if elements == "taskstate":
        # each implementation with its own TaskState, as its WorkerState would use
        return {
            "stock": (lambda: HeapSet(key=PRIORITY), _stock_taskstate),
            "fastworker": (lambda: PriorityHeapSet(key=PRIORITY), _fast_taskstate),
        }
    plain = lambda i, p: Element(p)  # noqa: E731
    return {
        "stock": (lambda: HeapSet(key=PRIORITY), plain),
        "fastworker": (lambda: PriorityHeapSet(key=PRIORITY), plain),
    }


# Each case: (heap factory, elements) -> the timed callable. The heap is new for
# every run; the elements are built once per implementation and reused.


def case_add(new_heap, elements):
    heap = new_heap()

    def run():
        add = heap.add
        for e in elements:
            add(e)

    return run


def case_pop(new_heap, elements):
    heap = new_heap()
    for e in elements:
        heap.add(e)

    def run():
        pop = heap.pop
        for _ in range(len(elements)):
            pop()

    return run


def case_add_pop(new_heap, elements):
    heap = new_heap()

    def run():
        add, pop = heap.add, heap.pop
        for e in elements:
            add(e)
        for _ in range(len(elements)):
            pop()

    return run


def case_peek_pop(new_heap, elements):
    """The worker's pattern: look at the top, then take it (counted as one op)."""
    heap = new_heap()
    for e in elements:
        heap.add(e)

    def run():
        peek, pop = heap.peek, heap.pop
        for _ in range(len(elements)):
            peek()
            pop()

    return run


def case_discard_pop(new_heap, elements):
    """Discard a random half (stale entries), then pop the rest."""
    heap = new_heap()
    for e in elements:
        heap.add(e)
    victims = random.Random(0).sample(elements, len(elements) // 2)

    def run():
        discard, pop = heap.discard, heap.pop
        for e in victims:
            discard(e)
        while heap:
            pop()

    return run


def case_membership(new_heap, elements):
    """``ts in heap`` and ``len(heap)``, as the transitions test them."""
    heap = new_heap()
    for e in elements[::2]:
        heap.add(e)

    def run():
        for e in elements:
            if e in heap and len(heap):
                pass

    return run


CASES = {
    "add": case_add,
    "pop": case_pop,
    "add + pop": case_add_pop,
    "peek + pop": case_peek_pop,
    "discard half + pop rest": case_discard_pop,
    "contains + len": case_membership,
}


def run(
    n: int = 100_000,
    repeats: int = 7,
    progress: bool = True,
    elements: str = "plain",
    seed: int = 42,
) -> list[Row]:
    """Time every case on N elements; one Row per case."""
    prios = priorities(n, seed)
    built = {
        name: (new_heap, [make(i, p) for i, p in enumerate(prios)])
        for name, (new_heap, make) in implementations(elements).items()
    }
    group = "HeapSet" if elements == "plain" else "HeapSet[TaskState]"
    rows = []
    for name, case in CASES.items():
        rows.append(
            measure(
                group,
                name,
                n,
                stock=lambda case=case: case(*built["stock"]),
                fast=lambda case=case: case(*built["fastworker"]),
                repeats=repeats,
                progress=progress,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="elements per case (default 100,000)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats per case; medians are reported (default 7)")
    parser.add_argument(
        "--elements",
        choices=["plain", "taskstate", "both"],
        default="plain",
        help="plain: one minimal element class for both; taskstate: each with its own "
        "TaskState; both (default plain)",
    )
    parser.add_argument("--seed", type=int, default=42, help="priorities' random seed")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)

    print(
        f"HeapSet benchmark: n={args.n:,}, {args.repeats} repeats, medians in ns per "
        "operation; speedup = stock time / fastworker time",
        flush=True,
    )
    start = time.perf_counter()
    kinds = ["plain", "taskstate"] if args.elements == "both" else [args.elements]
    rows = []
    for kind in kinds:
        rows += run(args.n, args.repeats, not args.quiet, kind, args.seed)
    print(format_table(rows))
    print(f"\n{len(rows)} cases in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

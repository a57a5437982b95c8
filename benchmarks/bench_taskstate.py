"""TaskState micro-benchmarks: construction, attribute access, repr, nbytes, pickle.

Each case times N operations on N distinct tasks, as a worker creates and touches
one TaskState per task. Reported in ns per operation.
"""
from __future__ import annotations

import pickle

import distributed.worker_state_machine as stock_wsm

import fastworker
from common import Row, measure

IMPLEMENTATIONS = {"stock": stock_wsm.TaskState, "fastworker": fastworker.TaskState}


def _keys(n: int) -> list[str]:
    return [f"inc-{i:08x}" for i in range(n)]


def construct_key_only(cls, n):
    keys = _keys(n)

    def run():
        for k in keys:
            cls(k)

    return run


def construct_with_fields(cls, n):
    keys = _keys(n)
    prio = (0, 1, 2, -3)

    def run():
        for i, k in enumerate(keys):
            cls(k, run_id=i, priority=prio, nbytes=100, state="waiting")

    return run


def _tasks(cls, n):
    return [cls(k, priority=(0, 1, i), nbytes=8) for i, k in enumerate(_keys(n))]


def read_state(cls, n):
    tasks = _tasks(cls, n)

    def run():
        for ts in tasks:
            ts.state

    return run


def read_fields(cls, n):
    tasks = _tasks(cls, n)

    def run():
        for ts in tasks:
            ts.key, ts.priority, ts.nbytes, ts.done, ts.dependencies, ts.run_id

    return run


def write_state(cls, n):
    tasks = _tasks(cls, n)

    def run():
        for ts in tasks:
            ts.state = "memory"

    return run


def get_nbytes(cls, n):
    tasks = _tasks(cls, n)
    for ts in tasks[::2]:
        ts.nbytes = None  # half take the default-data-size path

    def run():
        for ts in tasks:
            ts.get_nbytes()

    return run


def hash_in_set(cls, n):
    tasks = _tasks(cls, n)

    def run():
        s = set()
        for ts in tasks:
            s.add(ts)
        for ts in tasks:
            s.discard(ts)

    return run


def repr_(cls, n):
    tasks = _tasks(cls, n)

    def run():
        for ts in tasks:
            repr(ts)

    return run


def pickle_round_trip(cls, n):
    tasks = _tasks(cls, n)

    def run():
        pickle.loads(pickle.dumps(tasks))

    return run


CASES = {
    "construct TaskState(key)": construct_key_only,
    "construct with 4 kwargs": construct_with_fields,
    "read .state": read_state,
    "read 6 fields": read_fields,
    "write .state": write_state,
    "get_nbytes()": get_nbytes,
    "set add+discard": hash_in_set,
    "repr()": repr_,
    "pickle round trip": pickle_round_trip,
}


def run(n: int = 100_000, repeats: int = 7, progress: bool = True) -> list[Row]:
    rows = []
    for name, case in CASES.items():
        rows.append(
            measure(
                "TaskState",
                name,
                n,
                stock=lambda: case(IMPLEMENTATIONS["stock"], n),
                fast=lambda: case(IMPLEMENTATIONS["fastworker"], n),
                repeats=repeats,
                progress=progress,
            )
        )
    return rows

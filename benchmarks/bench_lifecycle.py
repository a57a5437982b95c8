"""Whole task lifecycles through a WorkerState, stock against fastworker.

Each scenario drives a fresh ``WorkerState(validate=False)`` with distributed's own
events, one stimulus per ``handle_stimulus`` call as the Worker's stream handler
does, and answers its instructions as a Worker would: an ``Execute`` is followed by
an ``ExecuteSuccessEvent``, a ``GatherDep`` by a ``GatherDepSuccessEvent`` carrying
the requested keys. Priorities have the scheduler's shape (-user priority,
generation, order). Only the time inside ``handle_stimulus`` is counted, garbage
collector on; reported as microseconds per task. Every run is checked to have
ended with every task where it should be.
"""
from __future__ import annotations

import random
import time
from collections import deque

import distributed.worker_state_machine as stock_wsm
from distributed.worker_state_machine import (
    AcquireReplicasEvent,
    ComputeTaskEvent,
    Execute,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepSuccessEvent,
)

import fastworker
from common import Row, measure

IMPLEMENTATIONS = {"stock": stock_wsm.WorkerState, "fastworker": fastworker.WorkerState}
PEERS = [f"tcp://10.0.{i // 250}.{i % 250}:8786" for i in range(50)]


class Driver:
    """Feeds stimuli to a WorkerState, times them, and plays the Worker's part."""

    def __init__(self, cls, nthreads=2):
        self.ws = cls(address="tcp://127.0.0.1:1", nthreads=nthreads, validate=False)
        self.elapsed = 0.0
        self.pending: deque = deque()  # instructions still to answer, FIFO
        self.n = 0

    def send(self, ev) -> None:
        start = time.perf_counter()
        instructions = self.ws.handle_stimulus(ev)
        self.elapsed += time.perf_counter() - start
        self.pending.extend(
            inst for inst in instructions if isinstance(inst, (Execute, GatherDep))
        )

    def answer_all(self) -> None:
        while self.pending:
            inst = self.pending.popleft()
            self.n += 1
            if isinstance(inst, Execute):
                ev = ExecuteSuccessEvent(
                    key=inst.key, run_id=self.ws.tasks[inst.key].run_id, value=None,
                    start=0.0, stop=0.001, nbytes=16, type=type(None),
                    stimulus_id=f"exec-{self.n}",
                )
            else:
                ev = GatherDepSuccessEvent(
                    worker=inst.worker, data={k: None for k in inst.to_gather},
                    total_nbytes=inst.total_nbytes, stimulus_id=f"gather-{self.n}",
                )
            self.send(ev)

    def free(self, keys) -> None:
        for i, key in enumerate(keys):
            self.send(FreeKeysEvent(keys=[key], stimulus_id=f"free-{key}"))

    def expect_empty(self) -> float:
        assert not self.ws.tasks, f"{len(self.ws.tasks)} tasks left behind"
        return self.elapsed


def compute(key, run_id, priority, who_has=None, nbytes=None):
    who_has = who_has or {}
    return ComputeTaskEvent(
        key=key, run_id=run_id, who_has=who_has,
        nbytes=nbytes if nbytes is not None else {k: 16 for k in who_has},
        priority=priority, run_spec=None, resource_restrictions={},
        actor=False, annotations={}, span_id=None, stimulus_id=f"compute-{key}",
    )


def independent(cls, n):
    events = [compute(f"inc-{i}", i, (0, 1, i)) for i in range(n)]

    def run():
        d = Driver(cls)
        for ev in events:
            d.send(ev)
            d.answer_all()
        d.free([ev.key for ev in events])
        return d.expect_empty()

    return run


def independent_batched(cls, n):
    events = [compute(f"inc-{i}", i, (0, 1, i)) for i in range(n)]

    def run():
        d = Driver(cls)
        start = time.perf_counter()
        instructions = d.ws.handle_stimulus(*events)
        d.elapsed += time.perf_counter() - start
        d.pending.extend(i for i in instructions if isinstance(i, Execute))
        d.answer_all()
        d.free([ev.key for ev in events])
        return d.expect_empty()

    return run


def _tree(n, fan_in=8):
    """Tasks of a fan-in tree reduction, leaves first: (key, dependency keys)."""
    level = [(f"leaf-{i}", ()) for i in range(n)]
    tasks = list(level)
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [
            (f"sum-{depth}-{j}", tuple(k for k, _ in level[i : i + fan_in]))
            for j, i in enumerate(range(0, len(level), fan_in))
        ]
        tasks += level
    return tasks


def tree(cls, n):
    """Local dependencies: waiting -> ready as inputs finish; ~n(1 + 1/7) tasks."""
    tasks = _tree(n)
    order = {key: i for i, (key, _) in enumerate(tasks)}
    events = [
        compute(key, i, (0, 1, i), nbytes={d: 16 for d in deps})
        for i, (key, deps) in enumerate(tasks)
    ]

    def run():
        d = Driver(cls)
        for ev in events:
            d.send(ev)
            d.answer_all()
        d.free(sorted(d.ws.tasks, key=order.get, reverse=True))
        return d.expect_empty()

    return run, len(tasks)


def chain(cls, n):
    events = [
        compute(f"step-{i}", i, (0, 1, i), nbytes={f"step-{i - 1}": 16} if i else {})
        for i in range(n)
    ]

    def run():
        d = Driver(cls)
        for i, ev in enumerate(events):
            d.send(ev)
            d.answer_all()
            if i:  # the scheduler frees a link once its successor is done
                d.send(FreeKeysEvent(keys=[f"step-{i - 1}"], stimulus_id=f"free-{i}"))
        d.free([events[-1].key])
        return d.expect_empty()

    return run


def remote_deps(cls, n):
    """Each task needs two inputs held by 2 of 50 peers: fetch, flight, gather."""
    rng = random.Random(42)
    events = []
    for i in range(n):
        deps = {f"in-{i}-{j}": rng.sample(PEERS, 2) for j in range(2)}
        events.append(compute(f"task-{i}", i, (0, 1, i), who_has=deps))

    def run():
        d = Driver(cls)
        for ev in events:
            d.send(ev)
            d.answer_all()
        d.free([k for ev in events for k in (ev.key, *ev.who_has)])
        return d.expect_empty()

    return run


def acquire_replicas(cls, n):
    rng = random.Random(7)
    events = [
        AcquireReplicasEvent(
            who_has={f"replica-{i}": [rng.choice(PEERS)]}, nbytes={f"replica-{i}": 16},
            stimulus_id=f"acquire-{i}",
        )
        for i in range(n)
    ]

    def run():
        d = Driver(cls)
        for ev in events:
            d.send(ev)
            d.answer_all()
        d.free([f"replica-{i}" for i in range(n)])
        return d.expect_empty()

    return run


def deep_ready_queue(cls, n):
    """n tasks queue up behind a busy thread, random priorities, then drain."""
    rng = random.Random(1)
    blocker = compute("blocker", 0, (-10, 0, 0))
    events = [compute(f"q-{i}", i + 1, (rng.randint(-5, 5), 1, rng.random())) for i in range(n)]

    def run():
        d = Driver(cls, nthreads=1)
        d.send(blocker)  # occupies the only thread: everything else waits in ready
        for ev in events:
            d.send(ev)
        assert len(d.ws.ready) == n
        d.answer_all()
        d.free(["blocker"] + [ev.key for ev in events])
        return d.expect_empty()

    return run


SCENARIOS = {
    "independent": independent,
    "independent, batched": independent_batched,
    "tree (fan-in 8)": tree,
    "chain": chain,
    "remote deps (50 peers)": remote_deps,
    "acquire replicas": acquire_replicas,
    "deep ready queue": deep_ready_queue,
}


def run(sizes=(1_000, 10_000), repeats=5, progress=True, only=None) -> list[Row]:
    rows = []
    for name, scenario in SCENARIOS.items():
        if only and only not in name:
            continue
        for n in sizes:
            setups = {}
            ntasks = n
            for impl, cls in IMPLEMENTATIONS.items():
                built = scenario(cls, n)
                if isinstance(built, tuple):
                    built, ntasks = built
                setups[impl] = built
            rows.append(
                measure(
                    "lifecycle", name, ntasks,
                    stock=lambda: setups["stock"], fast=lambda: setups["fastworker"],
                    repeats=repeats, unit="us", progress=progress, gc_enabled=True,
                )
            )
    return rows

"""Differential test: the same random stimulus streams into stock and fastworker.

Each stream is built from a seed, step by step, from what the stock machine last
asked for (an ``Execute`` is later answered by a success, failure, reschedule or
secede; a ``GatherDep`` by a success with some keys missing, busy, network failure
or failure), mixed with scheduler messages (compute-task with local and remote
dependencies, resources and mixed priorities; free-keys, cancel, steal, acquire and
remove replicas, remove-worker, pause/unpause, refresh-who-has, find-missing,
scatter). After every stimulus both machines must return equal instructions, hold
every task in the same state, have written the same log (timestamps aside) and
the same counters; an exception in one must be the same exception in the other,
and ``validate_state()`` must agree.

Sets of tasks iterate in hash order; both implementations hash tasks by creation
number here (``use_serial_hash``) so that equal inputs give equal orders.

Budget: ``FASTWORKER_STREAMS`` streams (default 150) of ``FASTWORKER_STREAM_STEPS``
stimuli (default 80). A long run (2,000 streams: about 130,000 stimuli, 10 minutes)::

    FASTWORKER_STREAMS=2000 .venv/bin/python -m pytest tests/test_random_streams.py -s --timeout=0
"""
from __future__ import annotations

import itertools
import os
import random

import pytest

import dask
import distributed.worker_state_machine as stock_wsm
from distributed.protocol.serialize import Serialize
from distributed.worker_state_machine import (
    AcquireReplicasEvent,
    CancelComputeEvent,
    ComputeTaskEvent,
    Execute,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FindMissingEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepBusyEvent,
    GatherDepFailureEvent,
    GatherDepNetworkFailureEvent,
    GatherDepSuccessEvent,
    PauseEvent,
    RefreshWhoHasEvent,
    RemoveReplicasEvent,
    RemoveWorkerEvent,
    RescheduleEvent,
    RetryBusyWorkerEvent,
    SecedeEvent,
    StealRequestEvent,
    UnpauseEvent,
    UpdateDataEvent,
)

import fastworker
from fastworker.taskstate import use_serial_hash

STREAMS = int(os.environ.get("FASTWORKER_STREAMS", 150))
STEPS = int(os.environ.get("FASTWORKER_STREAM_STEPS", 80))
PEERS = [f"127.0.0.{i}:1" for i in range(2, 7)]
EXCEPTION = Serialize(ValueError("boom"))
TRACEBACK = Serialize(None)


@pytest.fixture(scope="module")
def serial_hashes():
    """Hash both implementations' tasks by creation number (see module docstring)."""
    serials: dict[int, int] = {}
    counter = [itertools.count()]
    cls = stock_wsm.TaskState
    original_post_init, original_hash = cls.__post_init__, cls.__hash__

    def post_init(self):
        original_post_init(self)
        serials[id(self)] = next(counter[0])

    cls.__post_init__ = post_init
    cls.__hash__ = lambda self: serials.get(id(self), id(self))

    def restart():
        serials.clear()
        counter[0] = itertools.count()
        use_serial_hash(True, 0)

    yield restart
    cls.__post_init__, cls.__hash__ = original_post_init, original_hash
    use_serial_hash(False)


class Stream:
    """Random, mostly plausible stimuli, driven by the stock machine's instructions."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.executing: set = set()
        self.gathers: dict[str, tuple] = {}
        self.busy: set[str] = set()
        self.n = 0

    def next_event(self, ws, step: int):
        rng, sid = self.rng, f"s{step}"
        keys = list(ws.tasks)
        r = rng.random()
        if r < 0.25 or not keys:
            self.n += 1
            key = f"t-{self.n}"
            deps = rng.sample(keys, min(len(keys), rng.choice([0, 0, 1, 2])))
            who_has = {}
            for dep in deps:
                if ws.tasks[dep].state != "memory" or rng.random() < 0.3:
                    who_has[dep] = rng.sample(PEERS, rng.choice([1, 1, 2]))
            if rng.random() < 0.3:
                who_has[f"r-{self.n}"] = rng.sample(PEERS, 1)
            return ComputeTaskEvent.dummy(
                key,
                who_has=who_has,
                priority=(rng.choice([0, -1, 1.5]), rng.randint(0, 3)),
                resource_restrictions={"R": 1} if rng.random() < 0.2 else {},
                stimulus_id=sid,
                run_id=self.n,
            )
        if r < 0.45 and self.executing:
            key = rng.choice(sorted(self.executing, key=str))
            self.executing.discard(key)
            ts = ws.tasks.get(key)
            run_id = ts.run_id if ts else 0
            c = rng.random()
            if c < 0.75:
                return ExecuteSuccessEvent(
                    key=key, run_id=run_id, value=key, start=0.0, stop=1.0, nbytes=8,
                    type=str, stimulus_id=sid,
                )
            if c < 0.9:
                return ExecuteFailureEvent(
                    key=key, run_id=run_id, start=0.0, stop=1.0, exception=EXCEPTION,
                    traceback=TRACEBACK, exception_text="e", traceback_text="t",
                    stimulus_id=sid,
                )
            return RescheduleEvent(key=key, stimulus_id=sid)
        if r < 0.6 and self.gathers:
            worker = rng.choice(sorted(self.gathers))
            to_gather, nbytes = self.gathers.pop(worker)
            c = rng.random()
            if c < 0.7:
                data = {k: k for k in to_gather if rng.random() < 0.85}
                return GatherDepSuccessEvent(
                    worker=worker, data=data, total_nbytes=nbytes, stimulus_id=sid
                )
            if c < 0.8:
                self.busy.add(worker)
                return GatherDepBusyEvent(worker=worker, total_nbytes=nbytes, stimulus_id=sid)
            if c < 0.9:
                return GatherDepNetworkFailureEvent(
                    worker=worker, total_nbytes=nbytes, stimulus_id=sid
                )
            return GatherDepFailureEvent(
                worker=worker, total_nbytes=nbytes, exception=EXCEPTION,
                traceback=TRACEBACK, exception_text="e", traceback_text="t",
                stimulus_id=sid,
            )
        c, key = rng.random(), rng.choice(keys)
        # The scheduler frees or cancels a task once nothing here still needs it.
        releasable = [
            k for k in keys
            if all(d.state in ("memory", "error") for d in ws.tasks[k].dependents)
        ]
        if c < 0.2 and releasable:
            return FreeKeysEvent(
                keys=rng.sample(releasable, min(3, len(releasable))), stimulus_id=sid
            )
        if c < 0.3 and releasable:
            return CancelComputeEvent(key=rng.choice(releasable), stimulus_id=sid)
        if c < 0.4:
            return StealRequestEvent(key=key, stimulus_id=sid)
        if c < 0.47:
            new = f"a-{step}"
            return AcquireReplicasEvent(
                who_has={new: [rng.choice(PEERS)]}, nbytes={new: 5}, stimulus_id=sid
            )
        if c < 0.52 and releasable:
            return RemoveReplicasEvent(keys=[rng.choice(releasable)], stimulus_id=sid)
        if c < 0.57:
            return PauseEvent(stimulus_id=sid)
        if c < 0.65:
            return UnpauseEvent(stimulus_id=sid)
        if c < 0.7:
            return RemoveWorkerEvent(worker=rng.choice(PEERS), stimulus_id=sid)
        if c < 0.75:
            return FindMissingEvent(stimulus_id=sid)
        if c < 0.82:
            return RefreshWhoHasEvent(
                who_has={key: rng.sample(PEERS, rng.choice([0, 1]))}, stimulus_id=sid
            )
        if c < 0.87:
            return UpdateDataEvent(data={f"u-{step}": step}, stimulus_id=sid)
        if c < 0.92 and self.busy:
            return RetryBusyWorkerEvent(worker=self.busy.pop(), stimulus_id=sid)
        if self.executing:
            return SecedeEvent(
                key=rng.choice(sorted(self.executing, key=str)), compute_duration=1.0,
                stimulus_id=sid,
            )
        return FindMissingEvent(stimulus_id=sid)

    def saw(self, instructions):
        for inst in instructions:
            if isinstance(inst, Execute):
                self.executing.add(inst.key)
            elif isinstance(inst, GatherDep):
                self.gathers[inst.worker] = (inst.to_gather, inst.total_nbytes)


def snapshot(ws) -> dict:
    """Everything compared after each stimulus (timestamps left out)."""
    return {
        "tasks": {
            key: (
                ts.state, ts.previous, ts.next, ts.priority, sorted(ts.who_has), ts.done,
                ts.coming_from, ts.nbytes, ts.run_id, ts.exception_text,
                sorted(d.key for d in ts.waiting_for_data),
                sorted(d.key for d in ts.dependents),
            )
            for key, ts in ws.tasks.items()
        },
        "log": [entry[:-1] for entry in ws.log],
        "stimulus_log": [
            {k: v for k, v in ev._to_dict().items() if k != "handled"} for ev in ws.stimulus_log
        ],
        "counters": (
            ws.executing_count, ws.in_flight_tasks_count, ws.transfer_incoming_bytes,
            ws.transfer_incoming_count, ws.transfer_incoming_count_total,
            ws.transition_counter, ws.nbytes, ws.fetch_count, ws.executed_count,
            ws.generation, ws.running,
        ),
        "queues": (
            [ts.key for ts in ws.ready.sorted()], [ts.key for ts in ws.constrained.sorted()],
            sorted(ts.key for ts in ws.waiting), sorted(ts.key for ts in ws.missing_dep_flight),
            {w: [ts.key for ts in h.sorted()] for w, h in ws.data_needed.items()},
            {w: sorted(keys) for w, keys in ws.has_what.items()},
            {w: sorted(keys) for w, keys in ws.in_flight_workers.items()},
            sorted(ws.busy_workers),
        ),
        "resources": dict(ws.available_resources),
        "task_counts": dict(ws.task_counter.current_count()),
        "data": dict(ws.data),
    }


def comparable(instructions) -> list:
    """Instructions as comparable values. A "disk-write" startstop is appended when
    storing a result took over 5 ms: wall-clock noise (a GC pause, a busy machine),
    which may hit one implementation and not the other, so it is left out."""
    import dataclasses

    out = []
    for inst in instructions:
        fields = {f.name: getattr(inst, f.name) for f in dataclasses.fields(inst)}
        if "startstops" in fields:
            fields["startstops"] = [
                ss for ss in fields["startstops"] if ss.get("action") != "disk-write"
            ]
        out.append((type(inst).__name__, fields))
    return out


def outcome(call):
    try:
        return call(), None
    except Exception as e:  # compared below: same type, same message
        return None, e


def first_difference(a: dict, b: dict) -> str:
    for name in a:
        if a[name] != b[name]:
            return f"{name}:\n  stock      {a[name]!r}\n  fastworker {b[name]!r}"
    return ""


def run_stream(seed: int, steps: int) -> int:
    """Feed one stream to both; returns how many stimuli were compared."""
    rng = random.Random(seed)
    nthreads = rng.choice([1, 2, 3])
    with dask.config.set({"distributed.admin.low-level-log-length": None}):
        machines = [
            cls(address="127.0.0.1:1", nthreads=nthreads, resources={"R": 2}, validate=True)
            for cls in (stock_wsm.WorkerState, fastworker.WorkerState)
        ]
    if rng.random() < 0.3:  # limits rebound on live states, as tests do
        for ws in machines:
            ws.transfer_message_bytes_limit = 100
            ws.transfer_incoming_count_limit = 2
    stock, fast = machines
    stream = Stream(seed)
    for step in range(steps):
        ev = stream.next_event(stock, step)
        where = f"seed={seed} step={step} event={ev!r}"
        (got_stock, err_stock), (got_fast, err_fast) = (
            outcome(lambda: stock.handle_stimulus(ev)),
            outcome(lambda: fast.handle_stimulus(ev)),
        )
        assert type(err_stock) is type(err_fast), f"{where}: {err_stock!r} vs {err_fast!r}"
        if err_stock is not None:
            assert str(err_stock) == str(err_fast), where
            return step + 1  # both refused the same way; the stream ends here
        assert comparable(got_stock) == comparable(got_fast), (
            f"{where}\n  stock      {got_stock}\n  fastworker {got_fast}"
        )
        a, b = snapshot(stock), snapshot(fast)
        assert a == b, f"{where}\n{first_difference(a, b)}"
        (_, bad_stock), (_, bad_fast) = (
            outcome(stock.validate_state), outcome(fast.validate_state)
        )
        assert (bad_stock is None) == (bad_fast is None), f"{where}: validate {bad_stock!r} vs {bad_fast!r}"
        if bad_stock is not None:
            return step + 1
        stream.saw(got_stock)
    return steps


def test_random_streams(serial_hashes):
    compared = 0
    for seed in range(STREAMS):
        serial_hashes()
        compared += run_stream(seed, STEPS)
    print(f"\n{compared:,} stimuli compared over {STREAMS} streams")
    assert compared >= STREAMS  # every stream compared at least one stimulus

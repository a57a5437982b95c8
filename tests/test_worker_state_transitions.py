"""Parity tests, one per entry of stock's ``WorkerState._TRANSITIONS_TABLE``.

For every ``(start, finish)`` pair of the table there is at least one scenario that
drives a task into ``start`` with events, then makes it go to ``finish``, and asserts
stock's resulting states and instructions. The parametrization iterates the table of
the installed stock distributed, so an entry added by a new release fails at once
(no scenario). Each scenario runs on both implementations; afterwards the harness
checks that the pair really was taken (a plugin saw ``transition(key, start,
finish)`` and the log holds the entry).

Two entries cannot be reached through events in stock; their scenarios build the
situation with events and then call ``_transitions`` directly (see their comments).
Further tests cover the indirect routes ``start -> released -> finish`` taken for
pairs not in the table, and some cancelled/resumed/forgotten flows.
"""
from __future__ import annotations

from collections import defaultdict

import pytest

from dask.utils import typename
from distributed.protocol import pickle
from distributed.protocol.serialize import Serialize
from distributed.sizeof import safe_sizeof
from distributed.worker_state_machine import (
    AcquireReplicasEvent,
    AddKeysMsg,
    ComputeTaskEvent,
    Execute,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepBusyEvent,
    GatherDepFailureEvent,
    GatherDepNetworkFailureEvent,
    GatherDepSuccessEvent,

    RefreshWhoHasEvent,
    ReleaseWorkerDataMsg,
    RemoveWorkerEvent,
    RequestRefreshWhoHasMsg,
    RescheduleEvent,
    RescheduleMsg,
    RetryBusyWorkerEvent,
    RetryBusyWorkerLater,
    SecedeEvent,
    TaskErredMsg,
    TaskFinishedMsg,
    UpdateDataEvent,
)
from distributed.worker_state_machine import WorkerState as StockWorkerState

from helpers import long_running_msg, strip  # noqa: E402

ADDR = "127.0.0.1:1"
W2 = "127.0.0.2:1"
W3 = "127.0.0.3:1"
LOCAL = "127.0.0.1:2"
COMPUTE = {"action": "compute", "start": 0.0, "stop": 1.0}
EXC = Serialize(ValueError("boom"))
TB = Serialize(None)


# --------------------------------------------------------------------------- helpers


class RecordingPlugin:
    def __init__(self):
        self.calls = []

    def transition(self, key, start, finish, **kwargs):
        self.calls.append((key, start, finish))




def finished(key, *, sid, run_id=1, nbytes=1, typ=type(None), startstops=(COMPUTE,)):
    return TaskFinishedMsg(
        key=key, run_id=run_id, nbytes=nbytes, type=pickle.dumps(typ),
        typename=typename(typ), metadata={}, thread=None, startstops=list(startstops),
        stimulus_id=sid,
    )


def erred(key, *, sid, run_id, exception=EXC, traceback=TB, exception_text="boom",
          traceback_text="tb", startstops=()):
    return TaskErredMsg(
        key=key, run_id=run_id, exception=exception, traceback=traceback,
        exception_text=exception_text, traceback_text=traceback_text, thread=None,
        startstops=list(startstops), stimulus_id=sid,
    )


def compute(key, sid, **kwargs):
    kwargs.setdefault("run_id", 1)
    return ComputeTaskEvent.dummy(key, stimulus_id=sid, **kwargs)


def success(key, sid, value=None, run_id=1):
    return ExecuteSuccessEvent.dummy(key, value, run_id=run_id, stimulus_id=sid)


def failure(key, sid, run_id=1):
    return ExecuteFailureEvent(
        key=key, run_id=run_id, start=None, stop=None, exception=EXC, traceback=TB,
        exception_text="boom", traceback_text="tb", stimulus_id=sid,
    )


def gather_failure(worker, sid, total_nbytes=1):
    return GatherDepFailureEvent(
        worker=worker, total_nbytes=total_nbytes, exception=EXC, traceback=TB,
        exception_text="boom", traceback_text="tb", stimulus_id=sid,
    )


def acquire(key, holders, sid, nbytes=1):
    return AcquireReplicasEvent(
        who_has={key: list(holders)}, nbytes={key: nbytes}, stimulus_id=sid
    )


def free(sid, *keys):
    return FreeKeysEvent(keys=list(keys or ["x"]), stimulus_id=sid)


def gathered(worker, sid, **data):
    return GatherDepSuccessEvent(
        worker=worker, total_nbytes=len(data) or 1, data=data, stimulus_id=sid
    )


def state_of(ws, key="x"):
    ts = ws.tasks.get(key)
    if ts is None:
        return "forgotten"
    if ts.state in ("cancelled", "resumed"):
        return (ts.state, ts.previous, ts.next)
    return ts.state


# --------------------------------------------------------------------------- start states


def to_executing(ws, key="x"):
    assert ws.handle_stimulus(compute(key, "b1")) == [Execute(key=key, stimulus_id="b1")]


def to_long_running(ws):
    to_executing(ws)
    assert ws.handle_stimulus(SecedeEvent(key="x", compute_duration=2.0, stimulus_id="b2")) == [
        long_running_msg(key="x", run_id=1, compute_duration=2.0, stimulus_id="b2")
    ]


def to_cancelled_executing(ws):
    to_executing(ws)
    assert ws.handle_stimulus(free("b3")) == []
    assert state_of(ws) == ("cancelled", "executing", None)


def to_cancelled_long_running(ws):
    to_long_running(ws)
    assert ws.handle_stimulus(free("b3")) == []
    assert state_of(ws) == ("cancelled", "long-running", None)


def to_flight(ws, holders=(W2,)):
    instructions = ws.handle_stimulus(acquire("x", holders, "b1"))
    assert instructions == [GatherDep.match(to_gather={"x"}, total_nbytes=1)]
    assert state_of(ws) == "flight"
    return instructions[0].worker


def to_cancelled_flight(ws):
    to_flight(ws)
    assert ws.handle_stimulus(free("b2")) == []
    assert state_of(ws) == ("cancelled", "flight", None)


def to_resumed_executing(ws):
    to_cancelled_executing(ws)
    assert ws.handle_stimulus(acquire("x", [W2], "b4")) == []
    assert state_of(ws) == ("resumed", "executing", "fetch")


def to_resumed_long_running(ws):
    to_cancelled_long_running(ws)
    assert ws.handle_stimulus(acquire("x", [W2], "b4")) == []
    assert state_of(ws) == ("resumed", "long-running", "fetch")


def to_resumed_flight(ws):
    to_cancelled_flight(ws)
    assert ws.handle_stimulus(compute("x", "b3", run_id=7)) == []
    assert state_of(ws) == ("resumed", "flight", "waiting")


def to_fetch(ws):
    """In fetch because the only holder answered busy."""
    to_flight(ws)
    assert ws.handle_stimulus(GatherDepBusyEvent(worker=W2, total_nbytes=1, stimulus_id="b2")) == [
        RetryBusyWorkerLater(worker=W2, stimulus_id="b2"),
        RequestRefreshWhoHasMsg(keys=["x"], stimulus_id="b2"),
    ]
    assert state_of(ws) == "fetch"


def to_missing(ws):
    assert ws.handle_stimulus(acquire("x", [ADDR], "b1")) == []
    assert state_of(ws) == "missing"


def to_memory(ws):
    to_executing(ws)
    assert ws.handle_stimulus(success("x", "b2")) == [finished("x", sid="b2")]


def to_error(ws):
    to_executing(ws)
    assert ws.handle_stimulus(failure("x", "b2")) == [erred("x", sid="b2", run_id=1)]


def to_waiting(ws):
    assert ws.handle_stimulus(compute("x", "b1", who_has={"a": [W2]})) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="b1")
    ]
    assert state_of(ws) == "waiting"


def to_ready(ws):
    to_executing(ws, "blocker")
    assert ws.handle_stimulus(compute("x", "b2")) == []
    assert state_of(ws) == "ready"


def to_constrained(ws):
    ws.handle_stimulus(compute("blocker", "b1", resource_restrictions={"R": 1}))
    assert ws.handle_stimulus(compute("x", "b2", resource_restrictions={"R": 1})) == []
    assert state_of(ws) == "constrained"


# --------------------------------------------------------------------------- scenarios

SCENARIOS = defaultdict(list)


def scenario(start, finish):
    def decorator(func):
        SCENARIOS[start, finish].append(func)
        return func

    return decorator


@scenario("cancelled", "error")
def cancelled_executing_fails(ws):
    to_cancelled_executing(ws)
    assert ws.handle_stimulus(failure("x", "s1")) == []
    assert state_of(ws) == "forgotten"
    assert ws.executed_count == 1
    assert strip(ws.story("x"))[-2:] == [
        ("x", "cancelled", "error", "released", {"x": "forgotten"}, "s1"),
        ("x", "released", "forgotten", "forgotten", {}, "s1"),
    ]


@scenario("cancelled", "error")
def cancelled_flight_gather_fails(ws):
    to_cancelled_flight(ws)
    assert ws.handle_stimulus(gather_failure(W2, "s1")) == []
    assert state_of(ws) == "forgotten"
    assert ws.in_flight_workers == {} and ws.transfer_incoming_bytes == 0


@scenario("cancelled", "fetch")
def cancelled_executing_acquired(ws):
    to_cancelled_executing(ws)
    assert ws.handle_stimulus(acquire("x", [W2], "s1")) == []
    assert state_of(ws) == ("resumed", "executing", "fetch")
    assert ws.tasks["x"].who_has == {W2}
    assert ws.executing == {ws.tasks["x"]}
    assert strip(ws.story("x"))[-1] == ("x", "cancelled", "fetch", "resumed", {}, "s1")


@scenario("cancelled", "fetch")
def cancelled_flight_acquired_back_to_flight(ws):
    to_cancelled_flight(ws)
    assert ws.handle_stimulus(acquire("x", [W2], "s1")) == []
    assert state_of(ws) == "flight"
    assert ws.tasks["x"].previous is None
    assert ws.tasks["x"].priority == (1,)


@scenario("cancelled", "fetch")
def cancelled_flight_key_missing_from_reply(ws):
    to_cancelled_flight(ws)
    assert ws.handle_stimulus(gathered(W2, "s1")) == []
    assert state_of(ws) == "forgotten"
    assert strip(ws.story("x"))[-4:] == [
        ("x", "missing-dep", "s1"),
        ("x", "cancelled", "fetch", "cancelled", {"x": "released"}, "s1"),
        ("x", "cancelled", "released", "released", {"x": "forgotten"}, "s1"),
        ("x", "released", "forgotten", "forgotten", {}, "s1"),
    ]


@scenario("cancelled", "long-running")
def cancelled_executing_secedes(ws):
    to_cancelled_executing(ws)
    ws.handle_stimulus(compute("y", "s1"))
    assert state_of(ws, "y") == "ready"
    # no LongRunningMsg: the scheduler forgot the task; the thread is freed though
    assert ws.handle_stimulus(SecedeEvent(key="x", compute_duration=3.0, stimulus_id="s2")) == [
        Execute(key="y", stimulus_id="s2")
    ]
    assert state_of(ws) == ("cancelled", "long-running", None)
    assert ws.long_running == {ws.tasks["x"]}
    assert ws.executing == {ws.tasks["y"]}


@scenario("cancelled", "long-running")
def cancelled_long_running_secedes_again(ws):
    to_cancelled_long_running(ws)
    assert ws.handle_stimulus(SecedeEvent(key="x", compute_duration=3.0, stimulus_id="s1")) == []
    assert state_of(ws) == ("cancelled", "long-running", None)


@scenario("cancelled", "memory")
def cancelled_executing_succeeds(ws):
    to_cancelled_executing(ws)
    assert ws.handle_stimulus(success("x", "s1", 5)) == []
    assert state_of(ws) == "forgotten"
    assert ws.data == {}
    assert ws.nbytes == 0


@scenario("cancelled", "memory")
def cancelled_flight_arrives(ws):
    to_cancelled_flight(ws)
    assert ws.handle_stimulus(gathered(W2, "s1", x=5)) == []
    assert state_of(ws) == "forgotten"
    assert ws.data == {}


@scenario("cancelled", "missing")
def cancelled_flight_recommended_missing(ws):
    # Not reachable through events in stock: "missing" is only ever recommended for
    # tasks in fetch (data_needed, refresh-who-has, remove-worker) or by flight->fetch
    # itself, never for a cancelled task. Build cancelled(flight) with events, then
    # recommend directly.
    to_cancelled_flight(ws)
    ts = ws.tasks["x"]
    assert ws._transitions({ts: "missing"}, stimulus_id="s1") == []
    assert state_of(ws) == ("cancelled", "flight", None)  # not done: nothing happens
    assert strip(ws.story("x"))[-1] == ("x", "cancelled", "missing", "cancelled", {}, "s1")


@scenario("cancelled", "released")
def cancelled_executing_freed_again(ws):
    to_cancelled_executing(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == ("cancelled", "executing", None)
    assert strip(ws.story("x"))[-1] == ("x", "cancelled", "released", "cancelled", {}, "s1")


@scenario("cancelled", "released")
def cancelled_flight_freed_again(ws):
    to_cancelled_flight(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == ("cancelled", "flight", None)


@scenario("cancelled", "rescheduled")
def cancelled_executing_rescheduled(ws):
    to_cancelled_executing(ws)
    assert ws.handle_stimulus(RescheduleEvent(key="x", stimulus_id="s1")) == []
    assert state_of(ws) == "forgotten"


@scenario("cancelled", "waiting")
def cancelled_executing_recomputed(ws):
    to_cancelled_executing(ws)
    assert ws.handle_stimulus(compute("x", "s1", run_id=2)) == []
    assert state_of(ws) == "executing"
    assert ws.tasks["x"].run_id == 2
    assert ws.tasks["x"].priority == (0, -1)


@scenario("cancelled", "waiting")
def cancelled_long_running_recomputed(ws):
    to_cancelled_long_running(ws)
    assert ws.handle_stimulus(compute("x", "s1", run_id=2)) == [
        long_running_msg(key="x", run_id=2, compute_duration=None, stimulus_id="s1")
    ]
    assert state_of(ws) == "long-running"


@scenario("cancelled", "waiting")
def cancelled_flight_recomputed(ws):
    to_cancelled_flight(ws)
    assert ws.handle_stimulus(compute("x", "s1", run_id=2)) == []
    assert state_of(ws) == ("resumed", "flight", "waiting")
    assert ws.in_flight_tasks == {ws.tasks["x"]}


@scenario("resumed", "error")
def resumed_executing_fails(ws):
    to_resumed_executing(ws)
    # the failure is discarded; the task goes on to be fetched
    assert ws.handle_stimulus(failure("x", "s1")) == [
        GatherDep(worker=W2, to_gather={"x"}, total_nbytes=1, stimulus_id="s1")
    ]
    assert state_of(ws) == "flight"
    assert ws.tasks["x"].exception is None
    assert strip(ws.story("x"))[-4:] == [
        ("x", "resumed", "error", "released", {"x": "fetch"}, "s1"),
        ("x", "released", "fetch", "fetch", {}, "s1"),
        ("gather-dependencies", W2, {"x"}, "s1"),
        ("x", "fetch", "flight", "flight", {}, "s1"),
    ]


@scenario("resumed", "error")
def resumed_flight_gather_fails(ws):
    to_resumed_flight(ws)
    assert ws.handle_stimulus(gather_failure(W2, "s1")) == [Execute(key="x", stimulus_id="s1")]
    assert state_of(ws) == "executing"
    assert ws.tasks["x"].run_id == 7


@scenario("resumed", "fetch")
def resumed_flight_network_failure(ws):
    to_resumed_flight(ws)
    ev = GatherDepNetworkFailureEvent(worker=W2, total_nbytes=1, stimulus_id="s1")
    assert ws.handle_stimulus(ev) == [Execute(key="x", stimulus_id="s1")]
    assert state_of(ws) == "executing"
    assert strip(ws.story("x"))[-5:] == [
        ("x", "missing-dep", "s1"),
        ("x", "resumed", "fetch", "released", {"x": "waiting"}, "s1"),
        ("x", "released", "waiting", "waiting", {"x": "ready"}, "s1"),
        ("x", "waiting", "ready", "ready", {"x": "executing"}, "s1"),
        ("x", "ready", "executing", "executing", {}, "s1"),
    ]


@scenario("resumed", "fetch")
def resumed_flight_acquired_back_to_flight(ws):
    to_resumed_flight(ws)
    assert ws.handle_stimulus(acquire("x", [W2], "s1")) == []
    # the compute request is forgotten: plain flight again
    assert state_of(ws) == "flight"
    ts = ws.tasks["x"]
    assert ts.previous is None and ts.next is None
    assert ts.run_id == 7


@scenario("resumed", "fetch")
def resumed_executing_acquired_again(ws):
    to_resumed_executing(ws)
    assert ws.handle_stimulus(acquire("x", [W2, W3], "s1")) == []
    assert state_of(ws) == ("resumed", "executing", "fetch")
    assert ws.tasks["x"].who_has == {W2, W3}


@scenario("resumed", "long-running")
def resumed_executing_secedes(ws):
    to_resumed_executing(ws)
    assert ws.handle_stimulus(SecedeEvent(key="x", compute_duration=1.0, stimulus_id="s1")) == []
    assert state_of(ws) == ("resumed", "long-running", "fetch")
    assert ws.long_running == {ws.tasks["x"]} and ws.executing == set()


@scenario("resumed", "memory")
def resumed_executing_succeeds(ws):
    to_resumed_executing(ws)
    assert ws.handle_stimulus(success("x", "s1", 3)) == [
        AddKeysMsg(keys=["x"], stimulus_id="s1")
    ]
    assert state_of(ws) == "memory"
    assert ws.data == {"x": 3}
    assert ws.tasks["x"].previous is None and ws.tasks["x"].next is None


@scenario("resumed", "memory")
def resumed_long_running_succeeds(ws):
    to_resumed_long_running(ws)
    assert ws.handle_stimulus(success("x", "s1", 3)) == [
        AddKeysMsg(keys=["x"], stimulus_id="s1")
    ]
    assert state_of(ws) == "memory"


@scenario("resumed", "memory")
def resumed_flight_arrives(ws):
    to_resumed_flight(ws)
    # the scheduler expects a computation: task-finished with the compute run_id
    assert ws.handle_stimulus(gathered(W2, "s1", x=3)) == [
        finished("x", sid="s1", run_id=7, nbytes=1, typ=int, startstops=())
    ]
    assert state_of(ws) == "memory"


@scenario("resumed", "released")
def resumed_executing_freed(ws):
    to_resumed_executing(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == ("cancelled", "executing", None)


@scenario("resumed", "released")
def resumed_flight_freed(ws):
    to_resumed_flight(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == ("cancelled", "flight", None)


@scenario("resumed", "rescheduled")
def resumed_executing_rescheduled(ws):
    to_resumed_executing(ws)
    assert ws.handle_stimulus(RescheduleEvent(key="x", stimulus_id="s1")) == [
        GatherDep(worker=W2, to_gather={"x"}, total_nbytes=1, stimulus_id="s1")
    ]
    assert state_of(ws) == "flight"


@scenario("constrained", "executing")
def constrained_starts(ws):
    to_constrained(ws)
    assert ws.handle_stimulus(success("blocker", "s1")) == [
        finished("blocker", sid="s1"),
        Execute(key="x", stimulus_id="s1"),
    ]
    assert state_of(ws) == "executing"
    assert ws.available_resources == {"R": 0}


@scenario("constrained", "released")
def constrained_freed(ws):
    to_constrained(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == "forgotten"
    assert len(ws.constrained) == 0
    assert ws.available_resources == {"R": 0}  # still held by the blocker


@scenario("error", "released")
def error_freed(ws):
    to_error(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == "forgotten"


@scenario("executing", "error")
def executing_fails(ws):
    to_executing(ws)
    assert ws.handle_stimulus(failure("x", "s1", run_id=4)) == [
        erred("x", sid="s1", run_id=4)
    ]
    assert state_of(ws) == "error"


@scenario("executing", "long-running")
def executing_secedes(ws):
    to_executing(ws)
    assert ws.handle_stimulus(SecedeEvent(key="x", compute_duration=0.5, stimulus_id="s1")) == [
        long_running_msg(key="x", run_id=1, compute_duration=0.5, stimulus_id="s1")
    ]
    assert state_of(ws) == "long-running"


@scenario("executing", "memory")
def executing_succeeds(ws):
    to_executing(ws)
    assert ws.handle_stimulus(success("x", "s1", "abc")) == [
        finished("x", sid="s1", typ=str)
    ]
    assert ws.data == {"x": "abc"}
    assert ws.nbytes == 1


@scenario("executing", "released")
def executing_freed(ws):
    to_executing(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == ("cancelled", "executing", None)


@scenario("executing", "rescheduled")
def executing_rescheduled(ws):
    to_executing(ws)
    assert ws.handle_stimulus(RescheduleEvent(key="x", stimulus_id="s1")) == [
        RescheduleMsg(key="x", stimulus_id="s1")
    ]
    assert state_of(ws) == "forgotten"


@scenario("fetch", "flight")
def fetch_retried(ws):
    to_fetch(ws)
    assert ws.handle_stimulus(RetryBusyWorkerEvent(worker=W2, stimulus_id="s1")) == [
        GatherDep(worker=W2, to_gather={"x"}, total_nbytes=1, stimulus_id="s1")
    ]
    assert state_of(ws) == "flight"
    assert ws.tasks["x"].coming_from == W2


@scenario("fetch", "missing")
def fetch_holder_removed(ws):
    to_fetch(ws)
    assert ws.handle_stimulus(RemoveWorkerEvent(worker=W2, stimulus_id="s1")) == []
    assert state_of(ws) == "missing"
    assert ws.busy_workers == {W2}  # not cleared by remove-worker
    assert ws.fetch_count == 0


@scenario("fetch", "missing")
def fetch_holders_refreshed_to_none(ws):
    to_fetch(ws)
    ev = RefreshWhoHasEvent(who_has={"x": []}, stimulus_id="s1")
    assert ws.handle_stimulus(ev) == []
    assert state_of(ws) == "missing"


@scenario("fetch", "released")
def fetch_freed(ws):
    to_fetch(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == "forgotten"
    assert ws.fetch_count == 0
    assert dict(ws.has_what) == {W2: set()}


@scenario("flight", "error")
def flight_gather_fails(ws):
    to_flight(ws)
    assert ws.handle_stimulus(gather_failure(W2, "s1")) == [erred("x", sid="s1", run_id=-1)]
    assert state_of(ws) == "error"


@scenario("flight", "fetch")
def flight_key_missing_other_holder(ws):
    assert to_flight(ws, holders=(W2, LOCAL)) == LOCAL
    assert ws.handle_stimulus(gathered(LOCAL, "s1")) == [
        GatherDep(worker=W2, to_gather={"x"}, total_nbytes=1, stimulus_id="s1")
    ]
    assert ws.tasks["x"].who_has == {W2}


@scenario("flight", "fetch")
def flight_busy(ws):
    to_fetch(ws)


@scenario("flight", "memory")
def flight_arrives(ws):
    to_flight(ws)
    assert ws.handle_stimulus(gathered(W2, "s1", x=[1])) == [
        AddKeysMsg(keys=["x"], stimulus_id="s1")
    ]
    assert ws.data == {"x": [1]}
    assert ws.tasks["x"].nbytes == 1 and ws.tasks["x"].type is list


@scenario("flight", "missing")
def flight_network_failure(ws):
    to_flight(ws)
    ev = GatherDepNetworkFailureEvent(worker=W2, total_nbytes=1, stimulus_id="s1")
    assert ws.handle_stimulus(ev) == []
    assert state_of(ws) == "missing"
    assert strip(ws.story("x"))[-2:] == [
        ("x", "flight", "fetch", "flight", {"x": "missing"}, "s1"),
        ("x", "flight", "missing", "missing", {}, "s1"),
    ]


@scenario("flight", "released")
def flight_freed(ws):
    to_flight(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == ("cancelled", "flight", None)


@scenario("long-running", "error")
def long_running_fails(ws):
    to_long_running(ws)
    assert ws.handle_stimulus(failure("x", "s1")) == [erred("x", sid="s1", run_id=1)]
    assert state_of(ws) == "error"
    assert ws.long_running == set()


@scenario("long-running", "memory")
def long_running_succeeds(ws):
    to_long_running(ws)
    assert ws.handle_stimulus(success("x", "s1")) == [finished("x", sid="s1")]


@scenario("long-running", "rescheduled")
def long_running_rescheduled(ws):
    to_long_running(ws)
    assert ws.handle_stimulus(RescheduleEvent(key="x", stimulus_id="s1")) == [
        RescheduleMsg(key="x", stimulus_id="s1")
    ]
    assert state_of(ws) == "forgotten"


@scenario("long-running", "released")
def long_running_freed(ws):
    to_long_running(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == ("cancelled", "long-running", None)


@scenario("memory", "released")
def memory_freed(ws):
    to_memory(ws)
    assert ws.handle_stimulus(free("s1")) == [ReleaseWorkerDataMsg(key="x", stimulus_id="s1")]
    assert state_of(ws) == "forgotten"
    assert ws.data == {} and ws.nbytes == 0


@scenario("missing", "error")
def missing_recommended_error(ws):
    # Not reachable through events in stock: "error" is recommended only for tasks
    # that were executing or in flight, or by a failed store into ``data`` (whose
    # start states exclude missing). Build missing with events, recommend directly.
    to_missing(ws)
    ts = ws.tasks["x"]
    rec = ("error", EXC, TB, "boom", "tb", 3)
    assert ws._transitions({ts: rec}, stimulus_id="s1") == [erred("x", sid="s1", run_id=3)]
    assert state_of(ws) == "error"
    # stock leaves the task in missing_dep_flight (validate_state would fail)
    assert ws.missing_dep_flight == {ts}
    assert ws.handle_stimulus(free("s2")) == []
    assert ws.missing_dep_flight == set()


@scenario("missing", "fetch")
def missing_refreshed(ws):
    to_missing(ws)
    ev = RefreshWhoHasEvent(who_has={"x": [W2]}, stimulus_id="s1")
    assert ws.handle_stimulus(ev) == [
        GatherDep(worker=W2, to_gather={"x"}, total_nbytes=1, stimulus_id="s1")
    ]
    assert state_of(ws) == "flight"


@scenario("missing", "released")
def missing_freed(ws):
    to_missing(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == "forgotten"
    assert ws.missing_dep_flight == set()


@scenario("missing", "waiting")
def missing_computed(ws):
    to_missing(ws)
    assert ws.handle_stimulus(compute("x", "s1")) == [Execute(key="x", stimulus_id="s1")]
    assert strip(ws.story("x"))[-4:] == [
        ("x", "compute-task", "missing", "s1"),
        ("x", "missing", "waiting", "waiting", {"x": "ready"}, "s1"),
        ("x", "waiting", "ready", "ready", {"x": "executing"}, "s1"),
        ("x", "ready", "executing", "executing", {}, "s1"),
    ]
    assert ws.missing_dep_flight == set()


@scenario("ready", "executing")
def ready_starts(ws):
    to_ready(ws)
    assert ws.handle_stimulus(success("blocker", "s1")) == [
        finished("blocker", sid="s1"),
        Execute(key="x", stimulus_id="s1"),
    ]


@scenario("ready", "released")
def ready_freed(ws):
    to_ready(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == "forgotten"
    assert len(ws.ready) == 0


class FailingStore(dict):
    def __setitem__(self, key, value):
        raise OSError("disk full")


@scenario("released", "error")
def released_scatter_store_fails(ws):
    ws.data = FailingStore()  # rebound on a live state, as test_worker_memory does
    instructions = ws.handle_stimulus(UpdateDataEvent(data={"x": 1}, stimulus_id="s1"))
    (msg,) = instructions
    assert msg == TaskErredMsg.match(
        key="x", run_id=-1, exception_text="OSError('disk full')", stimulus_id="s1"
    )
    assert state_of(ws) == "error"
    assert strip(ws.story("x")) == [
        ("x", "receive-from-scatter", "released", "s1"),
        ("x", "released", "memory", "released", {"x": "error"}, "s1"),
        ("x", "released", "error", "error", {}, "s1"),
    ]
    assert ws.nbytes == 0


@scenario("released", "fetch")
def released_acquired(ws):
    to_flight(ws)
    assert strip(ws.story("x"))[1] == ("x", "released", "fetch", "fetch", {}, "b1")


@scenario("released", "forgotten")
def released_forgotten(ws):
    to_ready(ws)
    ws.handle_stimulus(free("s1"))
    assert strip(ws.story("x"))[-2:] == [
        ("x", "ready", "released", "released", {"x": "forgotten"}, "s1"),
        ("x", "released", "forgotten", "forgotten", {}, "s1"),
    ]


@scenario("released", "memory")
def released_scattered(ws):
    assert ws.handle_stimulus(UpdateDataEvent(data={"x": 2}, stimulus_id="s1")) == []
    assert state_of(ws) == "memory"
    assert ws.tasks["x"].nbytes == safe_sizeof(2)


@scenario("released", "missing")
def released_without_holders(ws):
    to_missing(ws)


@scenario("released", "waiting")
def released_computed(ws):
    to_executing(ws)


@scenario("waiting", "constrained")
def waiting_constrained(ws):
    assert ws.handle_stimulus(compute("x", "s1", resource_restrictions={"R": 1})) == [
        Execute(key="x", stimulus_id="s1")
    ]
    assert ws.available_resources == {"R": 0}


@scenario("waiting", "ready")
def waiting_dependency_arrives(ws):
    to_waiting(ws)
    assert ws.handle_stimulus(gathered(W2, "s1", a=1)) == [
        AddKeysMsg(keys=["a"], stimulus_id="s1"),
        Execute(key="x", stimulus_id="s1"),
    ]


@scenario("waiting", "released")
def waiting_freed(ws):
    to_waiting(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert state_of(ws) == "forgotten"
    assert state_of(ws, "a") == ("cancelled", "flight", None)


TABLE = sorted(StockWorkerState._TRANSITIONS_TABLE)


def _params():
    for edge in TABLE:
        funcs = SCENARIOS.get(edge) or [None]
        for func in funcs:
            name = getattr(func, "__name__", "none")
            yield pytest.param(edge, func, id=f"{edge[0]}-{edge[1]}-{name}")


def test_every_table_entry_has_a_scenario():
    assert set(SCENARIOS) == set(TABLE)


@pytest.mark.parametrize("edge,func", list(_params()))
def test_table_transition(make_ws, edge, func):
    assert func is not None, f"no scenario for {edge}"
    plugin = RecordingPlugin()
    ws = make_ws(plugins={"rec": plugin}, resources={"R": 1})
    func(ws)
    taken = {(start, finish) for _, start, finish in plugin.calls}
    assert edge in taken
    assert any(len(e) == 7 and (e[1], e[2]) == edge for e in ws.log)


# --------------------------------------------------------------------------- through released


def test_compute_on_flight_task_resumes(make_ws):
    plugin = RecordingPlugin()
    ws = make_ws(plugins={"rec": plugin})
    to_flight(ws)
    plugin.calls.clear()
    assert ws.handle_stimulus(compute("x", "s1", run_id=3)) == []
    assert state_of(ws) == ("resumed", "flight", "waiting")
    assert plugin.calls == [("x", "flight", "released"), ("x", "cancelled", "waiting")]
    assert strip(ws.story("x"))[-4:] == [
        ("x", "compute-task", "flight", "s1"),
        ("x", "flight", "released", "cancelled", {}, "s1"),
        ("x", "cancelled", "waiting", "resumed", {}, "s1"),
        ("x", "flight", "waiting", "resumed", {}, "s1"),
    ]
    assert ws.handle_stimulus(gathered(W2, "s2", x=1)) == [
        finished("x", sid="s2", run_id=3, typ=int, startstops=())
    ]


def test_acquire_on_executing_task_resumes(ws):
    to_executing(ws)
    assert ws.handle_stimulus(acquire("x", [W2], "s1")) == []
    assert state_of(ws) == ("resumed", "executing", "fetch")
    assert strip(ws.story("x"))[-3:] == [
        ("x", "executing", "released", "cancelled", {}, "s1"),
        ("x", "cancelled", "fetch", "resumed", {}, "s1"),
        ("x", "executing", "fetch", "resumed", {}, "s1"),
    ]
    assert ws.handle_stimulus(success("x", "s2")) == [AddKeysMsg(keys=["x"], stimulus_id="s2")]


def test_acquire_on_long_running_task_resumes(ws):
    to_long_running(ws)
    assert ws.handle_stimulus(acquire("x", [W2], "s1")) == []
    assert state_of(ws) == ("resumed", "long-running", "fetch")
    # compute-task again: back to long-running, the scheduler hears it in arrears
    assert ws.handle_stimulus(compute("x", "s2", run_id=5)) == [
        long_running_msg(key="x", run_id=5, compute_duration=None, stimulus_id="s2")
    ]
    assert state_of(ws) == "long-running"
    assert strip(ws.story("x"))[-4:] == [
        ("x", "compute-task", "resumed", "s2"),
        ("x", "resumed", "released", "cancelled", {}, "s2"),
        ("x", "cancelled", "waiting", "long-running", {}, "s2"),
        ("x", "resumed", "waiting", "long-running", {}, "s2"),
    ]


@pytest.mark.parametrize(
    "to_state", [to_ready, to_constrained, to_error], ids=["ready", "constrained", "error"]
)
def test_acquire_on_idle_task_goes_missing(make_ws, to_state):
    """The handler sets who_has first; the leg to released then purges it, so the
    fetch finds no holder and the task ends up missing."""
    ws = make_ws(resources={"R": 1})
    to_state(ws)
    state = state_of(ws)
    assert ws.handle_stimulus(acquire("x", [W2], "s1", nbytes=4)) == []
    assert state_of(ws) == "missing"
    ts = ws.tasks["x"]
    assert ts.who_has == set()
    assert ts.nbytes is None  # purged as well
    assert dict(ws.has_what) == {W2: set()}
    assert ws.missing_dep_flight == {ts}
    assert strip(ws.story("x"))[-5:] == [
        ("x", "ensure-task-exists", state, "s1"),
        ("x", state, "released", "released", {"x": "forgotten"}, "s1"),
        ("x", "released", "fetch", "released", {"x": "missing"}, "s1"),
        ("x", state, "fetch", "released", {"x": "missing"}, "s1"),
        ("x", "released", "missing", "missing", {}, "s1"),
    ]


def test_acquire_on_waiting_task_releases_its_dependencies(ws):
    to_waiting(ws)
    assert ws.handle_stimulus(acquire("x", [W2], "s1")) == []
    assert state_of(ws) == "missing"
    assert state_of(ws, "a") == ("cancelled", "flight", None)
    assert ws.waiting == set()
    assert strip(ws.story("x"))[-4:] == [
        ("x", "waiting", "released", "released", {"a": "released", "x": "forgotten"}, "s1"),
        ("x", "released", "fetch", "released", {"x": "missing"}, "s1"),
        ("x", "waiting", "fetch", "released", {"a": "released", "x": "missing"}, "s1"),
        ("x", "released", "missing", "missing", {}, "s1"),
    ]
    assert ws.handle_stimulus(gathered(W2, "s2", a=1)) == []
    # x was not forgotten (the path skips that leg), so it still lists a as a
    # dependency, and a stays released instead of being forgotten
    assert state_of(ws, "a") == "released"
    assert ws.tasks["a"].dependents == {ws.tasks["x"]}
    assert ws.data == {}


@pytest.mark.parametrize(
    "to_state", [to_waiting, to_ready, to_missing], ids=["waiting", "ready", "missing"]
)
def test_scatter_over_queued_task(ws, to_state):
    to_state(ws)
    state = state_of(ws)
    assert ws.handle_stimulus(UpdateDataEvent(data={"x": 9}, stimulus_id="s1")) == []
    assert state_of(ws) == "memory"
    assert ws.data["x"] == 9
    story = strip(ws.story("x"))
    assert story[-5] == ("x", "receive-from-scatter", state, "s1")
    assert story[-4][:4] == ("x", state, "released", "released")
    assert story[-3:-1] == [
        ("x", "put-in-memory", "s1"),
        ("x", "released", "memory", "memory", {}, "s1"),
    ]
    assert story[-1][:4] == ("x", state, "memory", "memory")
    assert ws.tasks["x"].priority is not None  # kept from the compute/acquire


def test_scatter_over_executing_task_fails_assertion(ws):
    """executing->memory is in the table, but a scatter has no run_id: stock trips
    ``assert run_id != RUN_ID_SENTINEL`` after storing the value."""
    to_executing(ws)
    with pytest.raises(AssertionError):
        ws.handle_stimulus(UpdateDataEvent(data={"x": 9}, stimulus_id="s1"))
    assert ws.tasks["x"].state == "memory"
    assert ws.data == {"x": 9}
    assert strip(ws.story("x"))[-1] == ("x", "put-in-memory", "s1")
    ws.validate = False


def test_forgetting_cascades_to_released_dependency(ws):
    ws.handle_stimulus(UpdateDataEvent(data={"a": 1}, stimulus_id="s1"))
    ws.handle_stimulus(compute("x", "s2", who_has={"a": [ADDR]}))
    assert ws.handle_stimulus(free("s3", "a")) == [ReleaseWorkerDataMsg(key="a", stimulus_id="s3")]
    assert state_of(ws, "a") == "released"  # x still depends on it
    assert ws.handle_stimulus(free("s4", "x")) == []
    assert state_of(ws) == ("cancelled", "executing", None)
    assert ws.handle_stimulus(success("x", "s5")) == []
    assert ws.tasks == {}
    assert strip(ws.story("a"))[-1] == ("a", "released", "forgotten", "forgotten", {}, "s5")
    entry = ("x", "released", "forgotten", "forgotten", {"a": "forgotten"}, "s5")
    assert entry in strip(ws.story("x"))


def test_resumed_flight_full_cycle_keeps_counters(ws):
    to_resumed_flight(ws)
    assert ws.handle_stimulus(free("s1")) == []
    assert ws.handle_stimulus(compute("x", "s2", run_id=8)) == []
    assert state_of(ws) == ("resumed", "flight", "waiting")
    assert ws.handle_stimulus(gathered(W2, "s3", x=1)) == [
        finished("x", sid="s3", run_id=8, typ=int, startstops=())
    ]
    assert dict(ws.task_counter.current_count()) == {("x", "memory"): 1}
    assert ws.in_flight_tasks == set()
    assert ws.transfer_incoming_bytes == 0


def test_rescheduled_is_never_a_state(ws):
    to_executing(ws)
    ws.handle_stimulus(compute("y", "s0"))
    ws.handle_stimulus(RescheduleEvent(key="x", stimulus_id="s1"))
    assert all(entry[3] != "rescheduled" for entry in ws.log if len(entry) == 7)

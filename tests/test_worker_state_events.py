"""Parity tests, one stimulus class at a time: every event stock's WorkerState handles.

Each test body runs once on stock distributed and once on fastworker (``ws`` /
``make_ws`` fixtures) and asserts stock's exact behaviour: the instruction lists
(distributed's own Instruction classes), task states, ``story()`` contents with the
timestamps stripped, counters and collections.

Where stock iterates a set of TaskStates (hashed by ``id``) or of strings (hashed
with the per-process seed) the order is not reproducible, and the test compares
orderless (sets, sorted lists, dict equality) instead of pinning an accident.
"""
from __future__ import annotations

import random

import pytest

import dask
from dask.utils import typename
from distributed.protocol import pickle
from distributed.sizeof import safe_sizeof
from distributed.worker_state_machine import (
    AcquireReplicasEvent,
    AddKeysMsg,
    CancelComputeEvent,
    ComputeTaskEvent,
    Execute,
    ExecuteDoneEvent,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FindMissingEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepBusyEvent,
    GatherDepDoneEvent,
    GatherDepFailureEvent,
    GatherDepNetworkFailureEvent,
    GatherDepSuccessEvent,
    InvalidTransition,

    PauseEvent,
    RefreshWhoHasEvent,
    ReleaseWorkerDataMsg,
    RemoveReplicasEvent,
    RemoveWorkerEvent,
    RequestRefreshWhoHasMsg,
    RescheduleEvent,
    RescheduleMsg,
    RetryBusyWorkerEvent,
    RetryBusyWorkerLater,
    SecedeEvent,
    StateMachineEvent,
    StealRequestEvent,
    StealResponseMsg,
    TaskErredMsg,
    TaskFinishedMsg,
    TransitionCounterMaxExceeded,
    UnpauseEvent,
    UpdateDataEvent,
)

from helpers import long_running_msg, strip  # noqa: E402

ADDR = "127.0.0.1:1"  # the ws fixture's own address
W2 = "127.0.0.2:1"  # peers on other hosts
W3 = "127.0.0.3:1"
W4 = "127.0.0.4:1"
LOCAL = "127.0.0.1:2"  # a peer on our own host
COMPUTE = {"action": "compute", "start": 0.0, "stop": 1.0}  # ExecuteSuccessEvent.dummy


# --------------------------------------------------------------------------- helpers




def finished(key, *, sid, run_id=0, nbytes=1, typ=type(None), startstops=(COMPUTE,),
             thread=None, metadata=None):
    return TaskFinishedMsg(
        key=key,
        run_id=run_id,
        nbytes=nbytes,
        type=pickle.dumps(typ),
        typename=typename(typ),
        metadata={} if metadata is None else metadata,
        thread=thread,
        startstops=list(startstops),
        stimulus_id=sid,
    )


def compute(key, sid, **kwargs):
    return ComputeTaskEvent.dummy(key, stimulus_id=sid, **kwargs)


def success(key, sid, value=None, **kwargs):
    kwargs.setdefault("run_id", 0)
    return ExecuteSuccessEvent.dummy(key, value, stimulus_id=sid, **kwargs)


def acquire(sid, **who_has_nbytes):
    """acquire("s1", a=([W2], 5)) -> AcquireReplicasEvent for key "a"."""
    return AcquireReplicasEvent(
        who_has={k: list(v[0]) for k, v in who_has_nbytes.items()},
        nbytes={k: v[1] for k, v in who_has_nbytes.items()},
        stimulus_id=sid,
    )


def freeze_fetching(ws):
    """What ``distributed.utils_test.freeze_data_fetching`` does to a live state."""
    ws.transfer_incoming_count_limit = 0
    ws.transfer_incoming_bytes_throttle_threshold = 0


def keys_of(tasks):
    return {ts.key for ts in tasks}


def data_needed_keys(ws):
    return {w: keys_of(h) for w, h in ws.data_needed.items() if h}


def rng_after(n):
    r = random.Random(0)
    for _ in range(n):
        r.random()
    return r.getstate()


# --------------------------------------------------------------------------- compute-task


def test_compute_task_without_dependencies(ws):
    instructions = ws.handle_stimulus(compute("x", "s1"))
    assert instructions == [Execute(key="x", stimulus_id="s1")]
    ts = ws.tasks["x"]
    assert ts.state == "executing"
    assert ts.priority == (0, 0)
    assert ts.run_id == 0
    assert ws.generation == -1
    assert ws.executing == {ts}
    assert ws.all_running_tasks == {ts}
    assert ws.executing_count == 1
    assert ws.transition_counter == 3
    assert dict(ws.task_counter.current_count()) == {("x", "executing"): 1}
    assert dict(ws.task_counter.current_count(by_prefix=False)) == {"executing": 1}
    assert strip(ws.story("x")) == [
        ("x", "compute-task", "released", "s1"),
        ("x", "released", "waiting", "waiting", {"x": "ready"}, "s1"),
        ("x", "waiting", "ready", "ready", {"x": "executing"}, "s1"),
        ("x", "ready", "executing", "executing", {}, "s1"),
    ]


def test_compute_task_with_local_dependency(ws):
    assert ws.handle_stimulus(UpdateDataEvent(data={"a": 123}, stimulus_id="s1")) == []
    assert ws.tasks["a"].priority is None
    # The scheduler lists this worker itself among the holders: dropped from who_has
    instructions = ws.handle_stimulus(
        compute("x", "s2", who_has={"a": [ADDR, W2]}, nbytes={"a": 7})
    )
    assert instructions == [Execute(key="x", stimulus_id="s2")]
    a, x = ws.tasks["a"], ws.tasks["x"]
    assert a.state == "memory"
    assert a.nbytes == safe_sizeof(123)  # not overwritten: already in memory
    assert a.who_has == {W2}
    assert dict(ws.has_what) == {W2: {"a"}}
    assert a.priority == x.priority == (0, 0)  # a scattered key gets its dependent's
    assert x.dependencies == {a} and a.dependents == {x}
    assert not x.waiting_for_data
    assert strip(ws.story("a")) == [
        ("a", "receive-from-scatter", "released", "s1"),
        ("a", "put-in-memory", "s1"),
        ("a", "released", "memory", "memory", {}, "s1"),
        ("a", "ensure-task-exists", "memory", "s2"),
    ]
    assert strip(ws.story("x")) == [
        ("x", "compute-task", "released", "s2"),
        ("x", "released", "waiting", "waiting", {"x": "ready"}, "s2"),
        ("x", "waiting", "ready", "ready", {"x": "executing"}, "s2"),
        ("x", "ready", "executing", "executing", {}, "s2"),
    ]


def test_compute_task_with_only_self_as_holder_goes_missing(ws):
    instructions = ws.handle_stimulus(compute("x", "s1", who_has={"a": [ADDR]}))
    assert instructions == []
    a = ws.tasks["a"]
    assert a.state == "missing"
    assert a.who_has == set()
    assert ws.missing_dep_flight == {a}
    assert dict(ws.has_what) == {}
    assert strip(ws.story("a")) == [
        ("a", "ensure-task-exists", "released", "s1"),
        ("a", "released", "fetch", "released", {"a": "missing"}, "s1"),
        ("a", "released", "missing", "missing", {}, "s1"),
    ]


def test_compute_task_with_remote_dependencies(ws):
    instructions = ws.handle_stimulus(
        compute("x", "s1", who_has={"a": [W2], "b": [W2]}, nbytes={"a": 5, "b": 6})
    )
    assert instructions == [
        GatherDep(worker=W2, to_gather={"a", "b"}, total_nbytes=11, stimulus_id="s1")
    ]
    a, b, x = ws.tasks["a"], ws.tasks["b"], ws.tasks["x"]
    assert (a.state, b.state, x.state) == ("flight", "flight", "waiting")
    assert a.priority == b.priority == x.priority == (0, 0)
    assert a.coming_from == W2
    assert (a.nbytes, b.nbytes) == (5, 6)
    assert x.waiting_for_data == {a, b}
    assert a.waiters == {x} and b.waiters == {x}
    assert ws.waiting == {x}
    assert ws.in_flight_workers == {W2: {"a", "b"}}
    assert ws.in_flight_tasks == {a, b}
    assert ws.in_flight_tasks_count == 2
    assert ws.transfer_incoming_bytes == 11
    assert ws.transfer_incoming_count == 1
    assert ws.transfer_incoming_count_total == 1
    assert ws.fetch_count == 0
    assert dict(ws.has_what) == {W2: {"a", "b"}}
    assert strip(ws.story("a")) == [
        ("a", "ensure-task-exists", "released", "s1"),
        ("a", "released", "fetch", "fetch", {}, "s1"),
        ("gather-dependencies", W2, {"a", "b"}, "s1"),
        ("a", "fetch", "flight", "flight", {}, "s1"),
    ]
    assert strip(ws.story("x")) == [
        ("x", "compute-task", "released", "s1"),
        ("x", "released", "waiting", "waiting", {"a": "fetch", "b": "fetch"}, "s1"),
    ]

    instructions = ws.handle_stimulus(
        GatherDepSuccessEvent(
            worker=W2, total_nbytes=11, data={"a": 1, "b": 2}, stimulus_id="s2"
        )
    )
    # The two AddKeysMsg come in the order of a set of strings
    assert sorted(instructions[:2], key=lambda i: i.keys) == [
        AddKeysMsg(keys=["a"], stimulus_id="s2"),
        AddKeysMsg(keys=["b"], stimulus_id="s2"),
    ]
    assert instructions[2:] == [Execute(key="x", stimulus_id="s2")]
    assert ws.data == {"a": 1, "b": 2}
    assert ws.nbytes == 11  # the nbytes announced by the scheduler, not sizeof
    assert ws.transfer_incoming_bytes == 0
    assert ws.in_flight_workers == {}
    assert a.done and a.coming_from is None


def test_compute_task_on_scattered_key_sends_task_finished(ws):
    ws.handle_stimulus(UpdateDataEvent(data={"x": 123}, stimulus_id="s1"))
    instructions = ws.handle_stimulus(compute("x", "s2", run_id=5))
    assert instructions == [
        finished("x", sid="s2", run_id=5, nbytes=safe_sizeof(123), typ=int, startstops=())
    ]
    ts = ws.tasks["x"]
    assert ts.state == "memory"
    assert ts.run_id == 5
    assert ts.priority is None
    assert ws.generation == 0  # not decremented in this branch
    assert strip(ws.story("x"))[-1] == ("x", "compute-task", "memory", "s2")


def test_compute_task_on_computed_key_sends_task_finished_again(ws):
    ws.handle_stimulus(compute("x", "s1", run_id=1))
    ws.threads["x"] = 7  # shared by reference with the Worker
    assert ws.handle_stimulus(success("x", "s2", 3, run_id=1)) == [
        finished("x", sid="s2", run_id=1, typ=int, thread=7)
    ]
    assert ws.handle_stimulus(compute("x", "s3", run_id=2)) == [
        finished("x", sid="s3", run_id=2, typ=int, thread=7)
    ]
    assert ws.tasks["x"].run_id == 2
    assert ws.generation == -1


def _to_waiting(ws, key="x"):
    ws.handle_stimulus(compute(key, "prep", who_has={"dep": [W2]}))
    assert ws.tasks[key].state == "waiting"


def _to_ready(ws, key="x"):
    ws.handle_stimulus(compute("blocker", "prep-1", priority=(-1,)))
    ws.handle_stimulus(compute(key, "prep-2"))
    assert ws.tasks[key].state == "ready"


def _to_constrained(ws, key="x"):
    ws.total_resources = {"R": 1}
    ws.available_resources = {"R": 1}
    ws.handle_stimulus(compute("blocker", "prep-1", resource_restrictions={"R": 1}))
    ws.handle_stimulus(compute(key, "prep-2", resource_restrictions={"R": 1}))
    assert ws.tasks[key].state == "constrained"


def _to_executing(ws, key="x"):
    ws.handle_stimulus(compute(key, "prep"))
    assert ws.tasks[key].state == "executing"


def _to_long_running(ws, key="x"):
    ws.handle_stimulus(
        compute(key, "prep-1"),
        SecedeEvent(key=key, compute_duration=1.0, stimulus_id="prep-2"),
    )
    assert ws.tasks[key].state == "long-running"


@pytest.mark.parametrize(
    "to_state",
    [_to_waiting, _to_ready, _to_constrained, _to_executing, _to_long_running],
    ids=["waiting", "ready", "constrained", "executing", "long-running"],
)
def test_compute_task_on_active_task_only_updates_run_id(ws, to_state):
    to_state(ws)
    ts = ws.tasks["x"]
    state, priority, generation, counter = (
        ts.state, ts.priority, ws.generation, ws.transition_counter,
    )
    assert ws.handle_stimulus(compute("x", "again", run_id=9, priority=(-5,))) == []
    assert ts.state == state
    assert ts.run_id == 9
    assert ts.priority == priority
    assert ws.generation == generation
    assert ws.transition_counter == counter
    assert strip(ws.story("x"))[-1] == ("x", "compute-task", state, "again")


def test_compute_task_priority_generation_is_lifo(ws):
    assert ws.handle_stimulus(compute("a", "s1")) == [Execute(key="a", stimulus_id="s1")]
    for i, key in enumerate("bcd", start=2):
        assert ws.handle_stimulus(compute(key, f"s{i}")) == []
    assert [ws.tasks[k].priority for k in "abcd"] == [(0, 0), (0, -1), (0, -2), (0, -3)]
    assert ws.generation == -4
    assert ws.handle_stimulus(success("a", "s5")) == [
        finished("a", sid="s5"),
        Execute(key="d", stimulus_id="s5"),
    ]
    assert ws.handle_stimulus(success("d", "s6")) == [
        finished("d", sid="s6"),
        Execute(key="c", stimulus_id="s6"),
    ]
    assert ws.handle_stimulus(success("c", "s7")) == [
        finished("c", sid="s7"),
        Execute(key="b", stimulus_id="s7"),
    ]


def test_ready_order_mixed_length_and_float_priorities(ws):
    ws.handle_stimulus(compute("blocker", "s0", priority=(-100,)))
    priorities = {
        "p1": (0, 1, 2),
        "p2": (0, 1),
        "p3": (-2.5,),
        "p4": (0.5,),
        "p5": (0, 1, 2),
        "p6": (0, 1.0, 2),
        "p7": (1,),
        "p8": (0, 1, 2, 3, 4),
        "p9": (-2.5, 0),
    }
    for i, (key, prio) in enumerate(priorities.items(), start=1):
        assert ws.handle_stimulus(compute(key, f"c{i}", priority=prio)) == []
    assert ws.tasks["p6"].priority == (0, 1.0, 2, -6)
    assert [ts.key for ts in ws.ready.sorted()] == [
        "p3", "p9", "p2", "p6", "p5", "p1", "p8", "p4", "p7",
    ]
    order = []
    running = "blocker"
    for i in range(len(priorities)):
        instructions = ws.handle_stimulus(success(running, f"d{i}"))
        assert instructions[0] == finished(running, sid=f"d{i}")
        (execute,) = instructions[1:]
        running = execute.key
        order.append(running)
    assert order == ["p3", "p9", "p2", "p6", "p5", "p1", "p8", "p4", "p7"]
    assert ws.handle_stimulus(success(running, "last")) == [finished(running, sid="last")]


def test_compute_task_actor(ws):
    ws.handle_stimulus(compute("x", "s1", actor=True))
    assert ws.actors == {"x": None}

    class Counter:
        pass

    obj = Counter()
    assert ws.handle_stimulus(success("x", "s2", obj)) == [
        finished("x", sid="s2", typ=Counter)
    ]
    assert ws.actors == {"x": obj}
    assert ws.actors["x"] is obj
    assert "x" not in ws.data
    assert ws.nbytes == 1
    assert ws.handle_stimulus(FreeKeysEvent(keys=["x"], stimulus_id="s3")) == [
        ReleaseWorkerDataMsg(key="x", stimulus_id="s3")
    ]
    assert ws.actors == {}
    assert ws.nbytes == 0


def test_compute_task_resource_restrictions(make_ws):
    ws = make_ws(nthreads=2, resources={"R": 1})
    assert ws.handle_stimulus(compute("x", "s1", resource_restrictions={"R": 1})) == [
        Execute(key="x", stimulus_id="s1")
    ]
    assert ws.available_resources == {"R": 0}
    assert ws.total_resources == {"R": 1}
    assert strip(ws.story("x")) == [
        ("x", "compute-task", "released", "s1"),
        ("x", "released", "waiting", "waiting", {"x": "ready"}, "s1"),
        ("x", "waiting", "ready", "waiting", {"x": "constrained"}, "s1"),
        ("x", "waiting", "constrained", "constrained", {"x": "executing"}, "s1"),
        ("x", "constrained", "executing", "executing", {}, "s1"),
    ]
    assert ws.handle_stimulus(compute("y", "s2", resource_restrictions={"R": 1})) == []
    y = ws.tasks["y"]
    assert y.state == "constrained"
    assert ws.constrained.peek() is y
    assert y.resource_restrictions == {"R": 1}
    # a free thread runs unrestricted work past the blocked constrained task
    assert ws.handle_stimulus(compute("z", "s3")) == [Execute(key="z", stimulus_id="s3")]
    assert ws.handle_stimulus(success("x", "s4")) == [
        finished("x", sid="s4"),
        Execute(key="y", stimulus_id="s4"),
    ]
    assert ws.available_resources == {"R": 0}
    ws.handle_stimulus(success("y", "s5"), success("z", "s6"))
    assert ws.available_resources == {"R": 1}


def test_constrained_head_of_line_blocking(make_ws):
    ws = make_ws(nthreads=3, resources={"R": 1, "S": 1})
    ws.handle_stimulus(compute("x", "s1", resource_restrictions={"R": 1}))
    # y is the constrained head (better priority) and cannot run: v waits behind it
    # although S is free
    ws.handle_stimulus(compute("y", "s2", priority=(-1,), resource_restrictions={"R": 1}))
    assert ws.handle_stimulus(compute("v", "s3", resource_restrictions={"S": 1})) == []
    assert ws.tasks["v"].state == "constrained"
    assert ws.available_resources == {"R": 0, "S": 1}
    # Both start on the same stimulus, in LIFO order of the recommendations
    assert ws.handle_stimulus(success("x", "s4")) == [
        finished("x", sid="s4"),
        Execute(key="v", stimulus_id="s4"),
        Execute(key="y", stimulus_id="s4"),
    ]
    assert ws.available_resources == {"R": 0, "S": 0}


def test_ready_beats_better_constrained_head_when_resources_lack(make_ws):
    ws = make_ws(nthreads=2, resources={"R": 1})
    ws.handle_stimulus(compute("x", "s1", resource_restrictions={"R": 1}))
    ws.handle_stimulus(compute("y", "s2", priority=(-1,), resource_restrictions={"R": 1}))
    assert ws.handle_stimulus(compute("z", "s3", priority=(5,))) == [
        Execute(key="z", stimulus_id="s3")
    ]
    assert ws.tasks["y"].state == "constrained"


# --------------------------------------------------------------------------- execute done


def test_execute_success(ws):
    ws.handle_stimulus(compute("x", "s1", run_id=3))
    ev = ExecuteSuccessEvent(
        key="x", run_id=4, value=[1, 2], start=1.0, stop=2.5, nbytes=100, type=list,
        stimulus_id="s2",
    )
    # The message carries the event's run_id, not the task's
    assert ws.handle_stimulus(ev) == [
        finished(
            "x", sid="s2", run_id=4, nbytes=100, typ=list,
            startstops=[{"action": "compute", "start": 1.0, "stop": 2.5}],
        )
    ]
    ts = ws.tasks["x"]
    assert ts.state == "memory"
    assert ts.type is list
    assert ts.nbytes == 100
    assert ts.run_id == 3
    assert ts.done is True
    assert ws.data == {"x": [1, 2]}
    assert ws.nbytes == 100
    assert ws.executed_count == 1
    assert ws.executing == set()
    assert strip(ws.story("x"))[-2:] == [
        ("x", "put-in-memory", "s2"),
        ("x", "executing", "memory", "memory", {}, "s2"),
    ]


def test_execute_failure(ws):
    ws.handle_stimulus(compute("x", "s1", run_id=3))
    ev = ExecuteFailureEvent.from_exception(
        ValueError("boom"), key="x", run_id=3, start=1.0, stop=2.0, stimulus_id="s2"
    )
    assert ws.handle_stimulus(ev) == [
        TaskErredMsg(
            key="x",
            run_id=3,
            exception=ev.exception,
            traceback=ev.traceback,
            exception_text=ev.exception_text,
            traceback_text=ev.traceback_text,
            thread=None,
            startstops=[{"action": "compute", "start": 1.0, "stop": 2.0}],
            stimulus_id="s2",
        )
    ]
    ts = ws.tasks["x"]
    assert ts.state == "error"
    assert ts.exception is ev.exception
    assert ts.exception_text == "ValueError('boom')"
    assert ws.executed_count == 1
    assert ws.data == {}
    assert strip(ws.story("x"))[-1] == ("x", "executing", "error", "error", {}, "s2")

    # computing it again resets the error, through released
    assert ws.handle_stimulus(compute("x", "s3", run_id=4)) == [
        Execute(key="x", stimulus_id="s3")
    ]
    assert ts.exception is None and ts.exception_text == "" and ts.traceback is None
    assert strip(ws.story("x"))[-6:] == [
        ("x", "compute-task", "error", "s3"),
        ("x", "error", "released", "released", {"x": "forgotten"}, "s3"),
        ("x", "released", "waiting", "waiting", {"x": "ready"}, "s3"),
        ("x", "error", "waiting", "waiting", {"x": "ready"}, "s3"),
        ("x", "waiting", "ready", "ready", {"x": "executing"}, "s3"),
        ("x", "ready", "executing", "executing", {}, "s3"),
    ]


def test_execute_failure_without_timings(ws):
    ws.handle_stimulus(compute("x", "s1"))
    ev = ExecuteFailureEvent.dummy("x", run_id=0, stimulus_id="s2")
    (msg,) = ws.handle_stimulus(ev)
    assert msg == TaskErredMsg.match(key="x", run_id=0, startstops=[], stimulus_id="s2")
    assert ws.tasks["x"].startstops == []


def test_reschedule(ws):
    ws.handle_stimulus(compute("x", "s1"), compute("y", "s2"))
    assert ws.tasks["y"].state == "ready"
    assert ws.handle_stimulus(RescheduleEvent(key="x", stimulus_id="s3")) == [
        RescheduleMsg(key="x", stimulus_id="s3"),
        Execute(key="y", stimulus_id="s3"),
    ]
    assert "x" not in ws.tasks
    assert ws.executed_count == 1
    # The task never shows "rescheduled" as its state
    assert strip(ws.story("x"))[-2:] == [
        ("x", "executing", "rescheduled", "released", {"x": "forgotten"}, "s3"),
        ("x", "released", "forgotten", "forgotten", {}, "s3"),
    ]


# --------------------------------------------------------------------------- cancel / free


@pytest.mark.parametrize(
    "to_state", [_to_waiting, _to_ready, _to_constrained], ids=["waiting", "ready", "constrained"]
)
def test_cancel_compute_releases_and_forgets(ws, to_state):
    to_state(ws)
    assert ws.handle_stimulus(CancelComputeEvent(key="x", stimulus_id="cc")) == []
    assert "x" not in ws.tasks
    story = strip(ws.story("x"))
    assert story[-3] == ("x", "cancel-compute", "cc")
    assert story[-1] == ("x", "released", "forgotten", "forgotten", {}, "cc")


def test_cancel_compute_waiting_cancels_its_flight_dependency(ws):
    _to_waiting(ws)
    ws.handle_stimulus(CancelComputeEvent(key="x", stimulus_id="cc"))
    dep = ws.tasks["dep"]
    assert dep.state == "cancelled"
    assert dep.previous == "flight"
    assert strip(ws.story("x")) [-2:] == [
        ("x", "waiting", "released", "released", {"dep": "released", "x": "forgotten"}, "cc"),
        ("x", "released", "forgotten", "forgotten", {}, "cc"),
    ]


@pytest.mark.parametrize(
    "to_state", [_to_executing, _to_long_running], ids=["executing", "long-running"]
)
def test_cancel_compute_running_is_noop(ws, to_state):
    to_state(ws)
    before = strip(ws.log)
    assert ws.handle_stimulus(CancelComputeEvent(key="x", stimulus_id="cc")) == []
    assert ws.handle_stimulus(CancelComputeEvent(key="nope", stimulus_id="cc2")) == []
    assert strip(ws.log) == before


def test_free_keys_memory_and_unknown(ws):
    ws.handle_stimulus(compute("x", "s1"), success("x", "s2"))
    ev = FreeKeysEvent(keys=["x", "unknown"], stimulus_id="s3")
    assert ws.handle_stimulus(ev) == [ReleaseWorkerDataMsg(key="x", stimulus_id="s3")]
    assert ws.tasks == {}
    assert ws.data == {}
    assert ws.nbytes == 0
    assert dict(ws.task_counter.current_count()) == {}
    assert strip(ws.story("x"))[-3:] == [
        ("free-keys", ["x", "unknown"], "s3"),
        ("x", "memory", "released", "released", {"x": "forgotten"}, "s3"),
        ("x", "released", "forgotten", "forgotten", {}, "s3"),
    ]


def test_free_keys_executing_is_cancelled_until_done(ws):
    ws.handle_stimulus(compute("x", "s1"))
    assert ws.handle_stimulus(FreeKeysEvent(keys=["x"], stimulus_id="s2")) == []
    ts = ws.tasks["x"]
    assert (ts.state, ts.previous, ts.next) == ("cancelled", "executing", None)
    assert ws.executing == {ts}
    # freeing again is a no-op, but logged
    assert ws.handle_stimulus(FreeKeysEvent(keys=["x"], stimulus_id="s3")) == []
    assert ws.handle_stimulus(success("x", "s4", 1)) == []
    assert "x" not in ws.tasks
    assert ws.data == {}
    assert ws.executed_count == 1
    assert strip(ws.story("x"))[-6:] == [
        ("free-keys", ["x"], "s2"),
        ("x", "executing", "released", "cancelled", {}, "s2"),
        ("free-keys", ["x"], "s3"),
        # a table transition that changes nothing is still logged
        ("x", "cancelled", "released", "cancelled", {}, "s3"),
        ("x", "cancelled", "memory", "released", {"x": "forgotten"}, "s4"),
        ("x", "released", "forgotten", "forgotten", {}, "s4"),
    ]


def test_remove_replicas(ws):
    ws.handle_stimulus(
        compute("x", "s1"), success("x", "s2"), compute("y", "s3")
    )
    ev = RemoveReplicasEvent(keys=["x", "y", "nope"], stimulus_id="s4")
    assert ws.handle_stimulus(ev) == [ReleaseWorkerDataMsg(key="x", stimulus_id="s4")]
    assert "x" not in ws.tasks
    assert ws.tasks["y"].state == "executing"
    assert strip(ws.story("x"))[-3:] == [
        ("x", "remove-replica", "s4"),
        ("x", "memory", "released", "released", {"x": "forgotten"}, "s4"),
        ("x", "released", "forgotten", "forgotten", {}, "s4"),
    ]


def test_remove_replicas_of_dependency_of_executing_task_raises(ws):
    ws.handle_stimulus(UpdateDataEvent(data={"a": 1}, stimulus_id="s1"))
    ws.handle_stimulus(compute("x", "s2", who_has={"a": [ADDR]}))
    n = len(ws.stimulus_log)
    with pytest.raises(
        RuntimeError, match="Cannot remove replica of 'a' while 'x' in state 'executing'"
    ):
        ws.handle_stimulus(RemoveReplicasEvent(keys=["a"], stimulus_id="s3"))
    assert len(ws.stimulus_log) == n + 1  # logged before it was handled
    assert ws.tasks["a"].state == "memory"


# --------------------------------------------------------------------------- replicas / gather


def test_acquire_replicas(ws):
    assert ws.handle_stimulus(acquire("s1", a=([W2], 50))) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=50, stimulus_id="s1")
    ]
    a = ws.tasks["a"]
    assert a.priority == (1,)
    assert a.state == "flight"
    assert a.nbytes == 50
    assert ws.generation == 0

    # in memory already: who_has refreshed, nothing fetched, nbytes kept
    ws.handle_stimulus(UpdateDataEvent(data={"b": 1}, stimulus_id="s2"))
    assert ws.handle_stimulus(acquire("s3", b=([W3], 99))) == []
    b = ws.tasks["b"]
    assert b.state == "memory" and b.who_has == {W3} and b.nbytes == safe_sizeof(1)
    assert b.priority == (1,)
    assert dict(ws.has_what) == {W2: {"a"}, W3: {"b"}}

    # already in flight: priority kept, nbytes overwritten, nothing else happens
    assert ws.handle_stimulus(acquire("s4", a=([W2], 70))) == []
    assert a.state == "flight" and a.priority == (1,) and a.nbytes == 70
    assert ws.transfer_incoming_bytes == 50
    assert strip(ws.story("a"))[-2:] == [
        ("a", "ensure-task-exists", "flight", "s4"),
        ("a", "flight", "fetch", "flight", {}, "s4"),
    ]


def test_acquire_replicas_keeps_dependency_priority(ws):
    ws.handle_stimulus(compute("x", "s1", who_has={"a": [W2]}))
    ws.handle_stimulus(acquire("s2", a=([W2], 1)))
    assert ws.tasks["a"].priority == (0, 0)


def test_gather_dep_success_with_missing_key(ws):
    assert ws.handle_stimulus(acquire("s1", a=([W2], 1), b=([W2], 1))) == [
        GatherDep(worker=W2, to_gather={"a", "b"}, total_nbytes=2, stimulus_id="s1")
    ]
    ev = GatherDepSuccessEvent(worker=W2, total_nbytes=2, data={"a": 10}, stimulus_id="s2")
    assert ws.handle_stimulus(ev) == [AddKeysMsg(keys=["a"], stimulus_id="s2")]
    a, b = ws.tasks["a"], ws.tasks["b"]
    assert a.state == "memory" and a.who_has == {W2}
    assert b.state == "missing" and b.who_has == set()
    assert ws.missing_dep_flight == {b}
    assert dict(ws.has_what) == {W2: {"a"}}
    assert ws.transfer_incoming_bytes == 0
    assert ws.in_flight_workers == {}
    assert ws.in_flight_tasks == set()
    assert strip(ws.story("b"))[-3:] == [
        ("b", "missing-dep", "s2"),
        ("b", "flight", "fetch", "flight", {"b": "missing"}, "s2"),
        ("b", "flight", "missing", "missing", {}, "s2"),
    ]


def test_gather_dep_busy_all_holders(ws):
    ws.handle_stimulus(acquire("s1", a=([W2], 1)))
    ev = GatherDepBusyEvent(worker=W2, total_nbytes=1, stimulus_id="s2")
    assert ws.handle_stimulus(ev) == [
        RetryBusyWorkerLater(worker=W2, stimulus_id="s2"),
        RequestRefreshWhoHasMsg(keys=["a"], stimulus_id="s2"),
    ]
    a = ws.tasks["a"]
    assert a.state == "fetch"
    assert ws.busy_workers == {W2}
    assert data_needed_keys(ws) == {W2: {"a"}}
    assert ws.fetch_count == 1
    # a new stimulus does not pick the busy peer
    assert ws.handle_stimulus(FindMissingEvent(stimulus_id="s3")) == []
    assert ws.handle_stimulus(RetryBusyWorkerEvent(worker=W3, stimulus_id="s4")) == []
    assert ws.handle_stimulus(RetryBusyWorkerEvent(worker=W2, stimulus_id="s5")) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s5")
    ]
    assert ws.busy_workers == set()


def test_gather_dep_busy_other_holder(ws):
    # local peers are preferred
    assert ws.handle_stimulus(acquire("s1", a=([W2, LOCAL], 1))) == [
        GatherDep(worker=LOCAL, to_gather={"a"}, total_nbytes=1, stimulus_id="s1")
    ]
    ev = GatherDepBusyEvent(worker=LOCAL, total_nbytes=1, stimulus_id="s2")
    assert ws.handle_stimulus(ev) == [
        RetryBusyWorkerLater(worker=LOCAL, stimulus_id="s2"),
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s2"),
    ]
    assert strip(ws.story("a"))[-3:] == [
        ("a", "flight", "fetch", "fetch", {}, "s2"),
        ("gather-dependencies", W2, {"a"}, "s2"),
        ("a", "fetch", "flight", "flight", {}, "s2"),
    ]
    assert ws.busy_workers == {LOCAL}


def test_gather_dep_network_failure(ws):
    assert ws.handle_stimulus(acquire("s1", a=([W2], 1))) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s1")
    ]
    assert ws.handle_stimulus(acquire("s2", b=([W2], 1))) == []
    assert ws.handle_stimulus(acquire("s3", c=([W3], 1))) == [
        GatherDep(worker=W3, to_gather={"c"}, total_nbytes=1, stimulus_id="s3")
    ]
    assert ws.handle_stimulus(acquire("s4", d=([W2, W3], 1))) == []
    ev = GatherDepNetworkFailureEvent(worker=W2, total_nbytes=1, stimulus_id="s5")
    assert ws.handle_stimulus(ev) == []
    a, b, c, d = (ws.tasks[k] for k in "abcd")
    assert (a.state, b.state, c.state, d.state) == ("missing", "missing", "flight", "fetch")
    assert a.who_has == b.who_has == set()
    assert d.who_has == {W3}
    assert dict(ws.has_what) == {W3: {"c", "d"}}
    assert data_needed_keys(ws) == {W3: {"d"}}
    assert ws.missing_dep_flight == {a, b}
    assert ws.fetch_count == 1
    assert strip(ws.story("a")) == [
        ("a", "ensure-task-exists", "released", "s1"),
        ("a", "released", "fetch", "fetch", {}, "s1"),
        ("gather-dependencies", W2, {"a"}, "s1"),
        ("a", "fetch", "flight", "flight", {}, "s1"),
        ("a", "missing-dep", "s5"),
        ("a", "flight", "fetch", "flight", {"a": "missing"}, "s5"),
        ("a", "flight", "missing", "missing", {}, "s5"),
    ]
    assert strip(ws.story("b"))[-1] == ("b", "fetch", "missing", "missing", {}, "s5")

    ev = GatherDepSuccessEvent(worker=W3, total_nbytes=1, data={"c": 1}, stimulus_id="s6")
    assert ws.handle_stimulus(ev) == [
        AddKeysMsg(keys=["c"], stimulus_id="s6"),
        GatherDep(worker=W3, to_gather={"d"}, total_nbytes=1, stimulus_id="s6"),
    ]


def test_gather_dep_failure(ws):
    ws.handle_stimulus(compute("x", "s1", who_has={"a": [W2]}))
    ev = GatherDepFailureEvent.from_exception(
        Exception("boom"), worker=W2, total_nbytes=1, stimulus_id="s2"
    )
    assert ws.handle_stimulus(ev) == [
        TaskErredMsg(
            key="a",
            run_id=-1,  # a dependency never had a run_id
            exception=ev.exception,
            traceback=ev.traceback,
            exception_text=ev.exception_text,
            traceback_text=ev.traceback_text,
            thread=None,
            startstops=[],
            stimulus_id="s2",
        )
    ]
    assert ws.tasks["a"].state == "error"
    assert ws.tasks["x"].state == "waiting"  # stuck until the scheduler intervenes
    assert ws.tasks["x"].waiting_for_data == {ws.tasks["a"]}
    assert ws.transfer_incoming_bytes == 0
    ws.handle_stimulus(FreeKeysEvent(keys=["x"], stimulus_id="s3"))
    assert ws.tasks == {}


def test_remove_worker(ws):
    ws.handle_stimulus(acquire("s1", a=([W2], 1)))
    ws.handle_stimulus(acquire("s2", b=([W2], 1)))
    assert ws.handle_stimulus(RemoveWorkerEvent(worker=W2, stimulus_id="s3")) == []
    a, b = ws.tasks["a"], ws.tasks["b"]
    assert a.state == "flight" and a.who_has == set()  # in flight: left alone...
    assert b.state == "missing" and b.who_has == set()
    assert dict(ws.has_what) == {}
    assert ws.in_flight_workers == {W2: {"a"}}
    assert strip(ws.story("b"))[-1] == ("b", "fetch", "missing", "missing", {}, "s3")
    # ...and still lands
    ev = GatherDepSuccessEvent(worker=W2, total_nbytes=1, data={"a": 5}, stimulus_id="s4")
    assert ws.handle_stimulus(ev) == [AddKeysMsg(keys=["a"], stimulus_id="s4")]
    assert a.state == "memory"
    assert ws.handle_stimulus(RemoveWorkerEvent(worker=W4, stimulus_id="s5")) == []


# --------------------------------------------------------------------------- secede / steal


def test_secede(ws):
    ws.handle_stimulus(compute("x", "s1", run_id=4), compute("y", "s2"))
    assert ws.handle_stimulus(SecedeEvent(key="x", compute_duration=1.5, stimulus_id="s3")) == [
        long_running_msg(key="x", run_id=4, compute_duration=1.5, stimulus_id="s3"),
        Execute(key="y", stimulus_id="s3"),
    ]
    x, y = ws.tasks["x"], ws.tasks["y"]
    assert x.state == "long-running"
    assert ws.long_running == {x}
    assert ws.executing == {y}
    assert ws.executing_count == 1
    assert ws.all_running_tasks == {x, y}
    counter = ws.transition_counter
    # seceding twice, or an unknown key: nothing at all
    assert ws.handle_stimulus(SecedeEvent(key="x", compute_duration=2, stimulus_id="s4")) == []
    assert ws.handle_stimulus(SecedeEvent(key="z", compute_duration=2, stimulus_id="s5")) == []
    assert ws.transition_counter == counter
    assert ws.story("s4") == [] and ws.story("s5") == []
    assert ws.handle_stimulus(success("x", "s6", run_id=4)) == [
        finished("x", sid="s6", run_id=4)
    ]
    assert ws.long_running == set()
    assert strip(ws.story("x"))[-1] == ("x", "long-running", "memory", "memory", {}, "s6")


def _steal_unknown(ws):
    pass


def _steal_memory(ws):
    ws.handle_stimulus(compute("x", "prep-1"), success("x", "prep-2"))


def _steal_fetch(ws):
    freeze_fetching(ws)
    ws.handle_stimulus(acquire("prep", x=([W2], 1)))
    assert ws.tasks["x"].state == "fetch"


def _steal_flight(ws):
    ws.handle_stimulus(acquire("prep", x=([W2], 1)))


def _steal_missing(ws):
    ws.handle_stimulus(acquire("prep", x=([ADDR], 1)))


def _steal_cancelled(ws):
    ws.handle_stimulus(compute("x", "prep-1"), FreeKeysEvent(keys=["x"], stimulus_id="prep-2"))


def _steal_resumed(ws):
    _steal_cancelled(ws)
    ws.handle_stimulus(acquire("prep-3", x=([W2], 1)))


def _steal_error(ws):
    ws.handle_stimulus(
        compute("x", "prep-1"), ExecuteFailureEvent.dummy("x", run_id=0, stimulus_id="prep-2")
    )


STEAL_CASES = {
    None: _steal_unknown,
    "waiting": _to_waiting,
    "ready": _to_ready,
    "constrained": _to_constrained,
    "executing": _to_executing,
    "long-running": _to_long_running,
    "memory": _steal_memory,
    "fetch": _steal_fetch,
    "flight": _steal_flight,
    "missing": _steal_missing,
    "cancelled": _steal_cancelled,
    "resumed": _steal_resumed,
    "error": _steal_error,
}


@pytest.mark.parametrize("state", list(STEAL_CASES), ids=str)
def test_steal_request(ws, state):
    STEAL_CASES[state](ws)
    ts = ws.tasks.get("x")
    assert (ts.state if ts else None) == state
    instructions = ws.handle_stimulus(StealRequestEvent(key="x", stimulus_id="steal"))
    assert instructions == [StealResponseMsg(key="x", state=state, stimulus_id="steal")]
    if state in ("waiting", "ready", "constrained"):
        assert "x" not in ws.tasks
        assert strip(ws.story("x"))[-1] == ("x", "released", "forgotten", "forgotten", {}, "steal")
    elif ts is not None:
        assert ws.tasks["x"] is ts and ts.state == state


# --------------------------------------------------------------------------- pause / busy / missing


def test_pause_unpause(ws):
    assert ws.handle_stimulus(PauseEvent(stimulus_id="s1")) == []
    assert ws.running is False
    assert ws.handle_stimulus(compute("x", "s2")) == []
    assert ws.handle_stimulus(acquire("s3", a=([W2], 1))) == []
    assert ws.tasks["x"].state == "ready"
    assert ws.tasks["a"].state == "fetch"
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s4")) == [
        Execute(key="x", stimulus_id="s4"),
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s4"),
    ]
    assert ws.running is True
    # paused while running: what runs finishes, nothing new starts
    ws.handle_stimulus(compute("y", "s5"))
    ws.handle_stimulus(PauseEvent(stimulus_id="s6"))
    assert ws.handle_stimulus(success("x", "s7")) == [finished("x", sid="s7")]
    assert ws.tasks["y"].state == "ready"
    ev = GatherDepSuccessEvent(worker=W2, total_nbytes=1, data={"a": 1}, stimulus_id="s8")
    assert ws.handle_stimulus(ev) == [AddKeysMsg(keys=["a"], stimulus_id="s8")]
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s9")) == [
        Execute(key="y", stimulus_id="s9")
    ]


def test_find_missing(ws):
    n = len(ws.stimulus_log)
    assert ws.handle_stimulus(FindMissingEvent(stimulus_id="s1")) == []
    ws.handle_stimulus(acquire("s2", a=([ADDR], 1), b=([ADDR], 1)))
    (msg,) = ws.handle_stimulus(FindMissingEvent(stimulus_id="s3"))
    assert type(msg) is RequestRefreshWhoHasMsg
    assert msg.stimulus_id == "s3"
    assert sorted(msg.keys) == ["a", "b"]
    assert isinstance(msg.keys, list)
    # FindMissingEvent is never stored in the stimulus log
    assert [type(ev) for ev in list(ws.stimulus_log)[n:]] == [AcquireReplicasEvent]


def test_refresh_who_has(ws):
    ws.handle_stimulus(acquire("s1", a=([ADDR], 1)))
    assert ws.tasks["a"].state == "missing"
    ev = RefreshWhoHasEvent(who_has={"a": [W2, ADDR], "unknown": [W2]}, stimulus_id="s2")
    assert ws.handle_stimulus(ev) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s2")
    ]
    assert ws.tasks["a"].who_has == {W2}
    assert strip(ws.story("a"))[-3:] == [
        ("a", "missing", "fetch", "fetch", {}, "s2"),
        ("gather-dependencies", W2, {"a"}, "s2"),
        ("a", "fetch", "flight", "flight", {}, "s2"),
    ]
    # fetch task losing all its holders goes missing
    ws.handle_stimulus(acquire("s3", b=([W2], 1)))
    assert ws.tasks["b"].state == "fetch"
    ev = RefreshWhoHasEvent(who_has={"b": []}, stimulus_id="s4")
    assert ws.handle_stimulus(ev) == []
    assert ws.tasks["b"].state == "missing"
    assert dict(ws.has_what) == {W2: {"a"}}
    # new replica while known holders are in flight: gathered from the new one
    ws.handle_stimulus(acquire("s5", c=([W2], 1)))
    ev = RefreshWhoHasEvent(who_has={"c": [W2, W3]}, stimulus_id="s6")
    assert ws.handle_stimulus(ev) == [
        GatherDep(worker=W3, to_gather={"c"}, total_nbytes=1, stimulus_id="s6")
    ]


def test_update_data(ws):
    data = {"x": 1, "y": "abc"}
    assert ws.handle_stimulus(UpdateDataEvent(data=data, stimulus_id="s1")) == []
    assert ws.data == data
    assert ws.tasks["x"].state == ws.tasks["y"].state == "memory"
    assert ws.tasks["x"].nbytes == safe_sizeof(1)
    assert ws.nbytes == safe_sizeof(1) + safe_sizeof("abc")
    assert ws.tasks["x"].run_id == -1
    assert ws.tasks["x"].type is int
    assert strip(ws.story("x")) == [
        ("x", "receive-from-scatter", "released", "s1"),
        ("x", "put-in-memory", "s1"),
        ("x", "released", "memory", "memory", {}, "s1"),
    ]
    logged = ws.stimulus_log[-1]
    assert type(logged) is UpdateDataEvent
    assert logged.data == {"x": None, "y": None}
    assert data == {"x": 1, "y": "abc"}
    assert isinstance(logged.handled, float)
    # scattering over a key in memory: a no-op transition, but logged
    assert ws.handle_stimulus(UpdateDataEvent(data={"x": 2}, stimulus_id="s2")) == []
    assert ws.data["x"] == 1
    assert strip(ws.story("x"))[-1] == ("x", "receive-from-scatter", "memory", "s2")


def test_update_data_satisfies_fetched_dependency(ws):
    freeze_fetching(ws)
    ws.handle_stimulus(compute("x", "s1", who_has={"a": [W2]}))
    assert ws.tasks["a"].state == "fetch"
    assert ws.handle_stimulus(UpdateDataEvent(data={"a": 1}, stimulus_id="s2")) == [
        Execute(key="x", stimulus_id="s2")
    ]
    assert ws.fetch_count == 0
    assert data_needed_keys(ws) == {}
    # the scatter went through released, which wiped who_has
    assert ws.tasks["a"].who_has == set()
    assert dict(ws.has_what) == {W2: set()}  # emptied, not removed
    assert strip(ws.story("a"))[-5:] == [
        ("a", "receive-from-scatter", "fetch", "s2"),
        ("a", "fetch", "released", "released", {}, "s2"),
        ("a", "put-in-memory", "s2"),
        ("a", "released", "memory", "memory", {"x": "ready"}, "s2"),
        ("a", "fetch", "memory", "memory", {"x": "ready"}, "s2"),
    ]


# --------------------------------------------------------------------------- gather selection


def test_data_needed_per_peer(ws):
    ws.handle_stimulus(PauseEvent(stimulus_id="s1"))
    ws.handle_stimulus(compute("x", "s2", who_has={"a": [W2, W3], "b": [W2]}))
    assert data_needed_keys(ws) == {W2: {"a", "b"}, W3: {"a"}}
    assert dict(ws.has_what) == {W2: {"a", "b"}, W3: {"a"}}
    assert ws.fetch_count == 2
    assert ws.rng.getstate() == rng_after(0)
    # W2 has more tasks: one message with both, and W3 has nothing left
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s3")) == [
        GatherDep(worker=W2, to_gather={"a", "b"}, total_nbytes=2, stimulus_id="s3")
    ]
    assert data_needed_keys(ws) == {}
    # Both heaps were dropped, then recreated empty by the validate-only assertion
    # `ts not in self.data_needed[w]` of fetch->flight (a defaultdict)
    assert set(ws.data_needed) == {W2, W3}
    assert ws.fetch_count == 0
    assert ws.rng.getstate() == rng_after(2)


def test_data_needed_emptied_heaps_dropped_without_validate(make_ws):
    ws = make_ws(validate=False)
    ws.handle_stimulus(PauseEvent(stimulus_id="s1"))
    ws.handle_stimulus(compute("x", "s2", who_has={"a": [W2, W3], "b": [W2]}))
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s3")) == [
        GatherDep(worker=W2, to_gather={"a", "b"}, total_nbytes=2, stimulus_id="s3")
    ]
    assert dict(ws.data_needed) == {}


def test_gather_message_bytes_limit(ws):
    ws.transfer_message_bytes_limit = 15
    # Equal priorities (1,): the heap ties break by insertion, which follows the
    # LIFO popping of the recommendations: c, b, a
    assert ws.handle_stimulus(acquire("s1", a=([W2], 10), b=([W2], 10), c=([W2], 10))) == [
        GatherDep(worker=W2, to_gather={"c"}, total_nbytes=10, stimulus_id="s1")
    ]
    ws.transfer_message_bytes_limit = 25  # re-read on the next stimulus
    ev = GatherDepSuccessEvent(worker=W2, total_nbytes=10, data={"c": 1}, stimulus_id="s2")
    assert ws.handle_stimulus(ev) == [
        AddKeysMsg(keys=["c"], stimulus_id="s2"),
        GatherDep(worker=W2, to_gather={"a", "b"}, total_nbytes=20, stimulus_id="s2"),
    ]


def test_gather_first_task_exceeding_message_limit_still_goes(ws):
    ws.transfer_message_bytes_limit = 15
    assert ws.handle_stimulus(acquire("s1", a=([W2], 100), b=([W2], 1))) == [
        GatherDep(worker=W2, to_gather={"b"}, total_nbytes=1, stimulus_id="s1")
    ]
    ev = GatherDepSuccessEvent(worker=W2, total_nbytes=1, data={"b": 1}, stimulus_id="s2")
    assert ws.handle_stimulus(ev) == [
        AddKeysMsg(keys=["b"], stimulus_id="s2"),
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=100, stimulus_id="s2"),
    ]


def test_gather_incoming_bytes_limit_rebound(ws):
    ws.transfer_incoming_bytes_limit = 15
    assert ws.handle_stimulus(acquire("s1", a=([W2], 10))) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=10, stimulus_id="s1")
    ]
    assert ws.handle_stimulus(acquire("s2", b=([W3], 10))) == []
    assert ws.tasks["b"].state == "fetch"
    ws.transfer_incoming_bytes_limit = 100
    assert ws.handle_stimulus(RetryBusyWorkerEvent(worker=W3, stimulus_id="s3")) == [
        GatherDep(worker=W3, to_gather={"b"}, total_nbytes=10, stimulus_id="s3")
    ]
    assert ws.transfer_incoming_bytes == 20
    # once the bytes limit is reached nothing is even considered
    ws.transfer_incoming_bytes_limit = 20
    assert ws.handle_stimulus(acquire("s4", c=([W4], 1))) == []
    assert ws.rng.getstate() == rng_after(3)


def test_gather_count_limit_rebound(ws):
    ws.transfer_incoming_count_limit = 1
    assert ws.handle_stimulus(acquire("s1", a=([W2], 1))) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s1")
    ]
    # below the 10 MB throttle threshold the count limit does not apply
    assert ws.handle_stimulus(acquire("s2", b=([W3], 1))) == [
        GatherDep(worker=W3, to_gather={"b"}, total_nbytes=1, stimulus_id="s2")
    ]
    ws.transfer_incoming_bytes_throttle_threshold = 0
    assert ws.handle_stimulus(acquire("s3", c=([W4], 1))) == []
    ev = GatherDepSuccessEvent(worker=W2, total_nbytes=1, data={"a": 1}, stimulus_id="s4")
    assert ws.handle_stimulus(ev) == [AddKeysMsg(keys=["a"], stimulus_id="s4")]
    ev = GatherDepSuccessEvent(worker=W3, total_nbytes=1, data={"b": 1}, stimulus_id="s5")
    assert ws.handle_stimulus(ev) == [
        AddKeysMsg(keys=["b"], stimulus_id="s5"),
        GatherDep(worker=W4, to_gather={"c"}, total_nbytes=1, stimulus_id="s5"),
    ]
    assert ws.transfer_incoming_count_total == 3


def test_gather_prefers_local_peer(ws):
    ws.handle_stimulus(PauseEvent(stimulus_id="s1"))
    ws.handle_stimulus(acquire("s2", a=([W2], 1)))
    ws.handle_stimulus(acquire("s3", b=([LOCAL], 1)))
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s4")) == [
        GatherDep(worker=LOCAL, to_gather={"b"}, total_nbytes=1, stimulus_id="s4"),
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s4"),
    ]


def test_gather_better_priority_beats_local_peer(ws):
    ws.handle_stimulus(PauseEvent(stimulus_id="s1"))
    ws.handle_stimulus(acquire("s2", b=([LOCAL], 1)))
    ws.handle_stimulus(compute("x", "s3", who_has={"a": [W2]}))
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s4")) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s4"),
        GatherDep(worker=LOCAL, to_gather={"b"}, total_nbytes=1, stimulus_id="s4"),
    ]


def test_gather_seeded_random_choice_among_peers(ws):
    peers = [f"10.0.0.{i}:1" for i in range(1, 5)]
    ws.handle_stimulus(PauseEvent(stimulus_id="p"))
    for i, peer in enumerate(peers, start=1):
        ws.handle_stimulus(acquire(f"a{i}", **{f"k{i}": ([peer], 1)}))
    freeze_fetching(ws)
    ws.transfer_incoming_count_limit = 1
    # Random(0) draws 0.844, 0.758, 0.421, 0.259 for peers 1..4: peer 4 wins
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="u")) == [
        GatherDep(worker=peers[3], to_gather={"k4"}, total_nbytes=1, stimulus_id="u")
    ]
    assert ws.rng.getstate() == rng_after(4)
    # Throttled right after yielding it: the emptied heap of peer 4 is left behind
    # (also without validation)
    assert peers[3] in ws.data_needed
    assert len(ws.data_needed[peers[3]]) == 0
    # Next round, draws 0.511, 0.405, 0.784 for peers 1..3: peer 2
    ev = GatherDepSuccessEvent(worker=peers[3], total_nbytes=1, data={"k4": 4}, stimulus_id="g")
    assert ws.handle_stimulus(ev) == [
        AddKeysMsg(keys=["k4"], stimulus_id="g"),
        GatherDep(worker=peers[1], to_gather={"k2"}, total_nbytes=1, stimulus_id="g"),
    ]
    assert ws.rng.getstate() == rng_after(7)
    assert peers[3] not in ws.data_needed


def test_gather_all_peers_in_random_order(ws):
    peers = [f"10.0.0.{i}:1" for i in range(1, 5)]
    ws.handle_stimulus(PauseEvent(stimulus_id="p"))
    for i, peer in enumerate(peers, start=1):
        ws.handle_stimulus(acquire(f"a{i}", **{f"k{i}": ([peer], 1)}))
    instructions = ws.handle_stimulus(UnpauseEvent(stimulus_id="u"))
    assert [i.worker for i in instructions] == [peers[3], peers[2], peers[1], peers[0]]
    assert data_needed_keys(ws) == {}
    assert set(ws.data_needed) == set(peers)  # recreated empty by validation


# --------------------------------------------------------------------------- plugins


class RecordingPlugin:
    def __init__(self):
        self.calls = []

    def transition(self, key, start, finish, **kwargs):
        self.calls.append((key, start, finish, kwargs))


class FailingPlugin:
    def transition(self, key, start, finish, **kwargs):
        raise ValueError("plugin failure is swallowed")


def test_plugins_notified_of_requested_finish(make_ws):
    plugin = RecordingPlugin()
    plugins = {"failing": FailingPlugin(), "no-transition": object()}
    ws = make_ws(plugins=plugins, resources={"R": 1})
    assert ws.plugins is plugins
    plugins["rec"] = plugin  # added to the shared dict after construction
    ws.handle_stimulus(compute("x", "s1", resource_restrictions={"R": 1}))
    assert plugin.calls == [
        ("x", "released", "waiting", {}),
        ("x", "waiting", "ready", {}),  # requested, though x stayed waiting
        ("x", "waiting", "constrained", {}),
        ("x", "constrained", "executing", {}),
    ]


def test_plugins_notified_of_each_leg_through_released(make_ws):
    plugin = RecordingPlugin()
    ws = make_ws(plugins={"rec": plugin})
    ws.handle_stimulus(acquire("s1", a=([W2], 1)))
    ws.handle_stimulus(GatherDepBusyEvent(worker=W2, total_nbytes=1, stimulus_id="s2"))
    assert ws.tasks["a"].state == "fetch"
    plugin.calls.clear()
    counter = ws.transition_counter
    assert ws.handle_stimulus(compute("a", "s3")) == [Execute(key="a", stimulus_id="s3")]
    assert plugin.calls == [
        ("a", "fetch", "released", {}),
        ("a", "released", "waiting", {}),
        ("a", "waiting", "ready", {}),
        ("a", "ready", "executing", {}),
    ]
    assert ws.transition_counter == counter + 5
    assert strip(ws.story("a"))[-6:] == [
        ("a", "compute-task", "fetch", "s3"),
        ("a", "fetch", "released", "released", {"a": "forgotten"}, "s3"),
        ("a", "released", "waiting", "waiting", {"a": "ready"}, "s3"),
        ("a", "fetch", "waiting", "waiting", {"a": "ready"}, "s3"),
        ("a", "waiting", "ready", "ready", {"a": "executing"}, "s3"),
        ("a", "ready", "executing", "executing", {}, "s3"),
    ]
    assert ws.tasks["a"].priority == (0, 0)
    assert data_needed_keys(ws) == {}


# --------------------------------------------------------------------------- counters / errors


def test_transition_counter_max(ws):
    ws.transition_counter_max = 3  # rebound on a live state
    with pytest.raises(TransitionCounterMaxExceeded) as excinfo:
        ws.handle_stimulus(compute("x", "s1"))
    e = excinfo.value
    assert (e.key, e.start, e.finish) == ("x", "ready", "executing")
    assert strip(e.story) == [
        ("x", "compute-task", "released", "s1"),
        ("x", "released", "waiting", "waiting", {"x": "ready"}, "s1"),
        ("x", "waiting", "ready", "ready", {"x": "executing"}, "s1"),
    ]
    assert ws.transition_counter == 3
    assert e.to_event()[0] == "transition-counter-max-exceeded"
    assert isinstance(e, InvalidTransition)
    ws.validate = False  # the state is left mid-transition


def test_transition_counter_max_disabled(make_ws):
    ws = make_ws(transition_counter_max=False)
    ws.handle_stimulus(compute("x", "s1"), success("x", "s2"))
    assert ws.transition_counter == 4


def test_invalid_transition_raises_with_story(ws):
    ws.handle_stimulus(UpdateDataEvent(data={"a": 1}, stimulus_id="s1"))
    ws.handle_stimulus(compute("x", "s2", who_has={"a": [ADDR]}))
    assert ws.handle_stimulus(FreeKeysEvent(keys=["a"], stimulus_id="s3")) == [
        ReleaseWorkerDataMsg(key="a", stimulus_id="s3")
    ]
    a = ws.tasks["a"]
    assert a.state == "released"  # kept: x still depends on it
    counter = ws.transition_counter
    with pytest.raises(InvalidTransition) as excinfo:
        ws._transition(a, "executing", stimulus_id="s4")
    e = excinfo.value
    assert type(e) is InvalidTransition
    assert (e.key, e.start, e.finish) == ("a", "released", "executing")
    assert e.story == ws.story("a")
    assert strip(e.story)[-1] == ("a", "memory", "released", "released", {}, "s3")
    assert ws.transition_counter == counter + 1  # counted, not logged
    assert a.state == "released"
    assert e.to_event() == (
        "invalid-worker-transition",
        {"key": "a", "start": "released", "finish": "executing", "story": e.story},
    )


def test_invalid_transition_through_released(ws):
    ws.handle_stimulus(UpdateDataEvent(data={"a": 1}, stimulus_id="s1"))
    ws.handle_stimulus(compute("x", "s2", who_has={"a": [ADDR]}))
    a = ws.tasks["a"]
    with pytest.raises(InvalidTransition) as excinfo:
        ws._transition(a, "executing", stimulus_id="s3")
    e = excinfo.value
    assert (e.key, e.start, e.finish) == ("a", "memory", "executing")
    assert type(e.__cause__) is InvalidTransition
    assert (e.__cause__.start, e.__cause__.finish) == ("released", "executing")
    # the first leg happened and was logged before the second failed
    assert a.state == "released"
    assert strip(ws.story("a"))[-1] == ("a", "memory", "released", "released", {}, "s3")
    assert ws.data == {}
    ws.validate = False  # x executing without its dependency


def test_unknown_event_type(ws):
    ev = ExecuteDoneEvent(key="x", stimulus_id="s1")
    with pytest.raises(TypeError) as excinfo:
        ws.handle_stimulus(ev)
    assert excinfo.value.args == (ev,)
    assert list(ws.stimulus_log) == [ev]  # logged before dispatch
    with pytest.raises(TypeError):
        ws.handle_stimulus(GatherDepDoneEvent(worker=W2, total_nbytes=0, stimulus_id="s2"))
    with pytest.raises(TypeError):
        ws.handle_stimulus(StateMachineEvent(stimulus_id="s3"))
    with pytest.raises(TypeError):
        ws._handle_event(object())
    # not an event at all: fails on to_loggable before dispatch
    with pytest.raises(AttributeError):
        ws.handle_stimulus(object())
    assert len(ws.stimulus_log) == 3
    assert ws.tasks == {}


# --------------------------------------------------------------------------- logs


def test_logs_and_stimulus_story(ws):
    cev = compute("x", "s1", run_id=1)
    sev = success("x", "s2", 42, run_id=1)
    pev = PauseEvent(stimulus_id="s3")
    ws.handle_stimulus(cev, sev, pev, FindMissingEvent(stimulus_id="s4"))
    ws.handle_stimulus(FreeKeysEvent(keys=["x"], stimulus_id="s5"))
    assert [type(ev) for ev in ws.stimulus_log] == [
        ComputeTaskEvent, ExecuteSuccessEvent, PauseEvent, FreeKeysEvent,
    ]
    logged_c, logged_s, logged_p, logged_f = ws.stimulus_log
    # copies without the heavy payloads; all stimuli of one call share `handled`
    assert logged_c is not cev and logged_c.run_spec is None and cev.run_spec is not None
    assert logged_s is not sev and logged_s.value is None and sev.value == 42
    assert logged_p is pev  # no payload: the event itself, stamped
    assert pev.handled == logged_c.handled == logged_s.handled
    assert isinstance(logged_f.handled, float) and logged_f.handled >= pev.handled
    assert logged_c.key == "x" and logged_c.priority == (0,)
    # stimulus_story: events with a matching ``key`` attribute only
    assert ws.stimulus_story("x") == [logged_c, logged_s]
    assert ws.stimulus_story("nope") == []
    # story by stimulus id, by several keys, by TaskState
    assert strip(ws.story("s2")) == [
        ("x", "put-in-memory", "s2"),
        ("x", "executing", "memory", "memory", {}, "s2"),
    ]
    assert strip(ws.story("s5")) == [
        ("free-keys", ["x"], "s5"),
        ("x", "memory", "released", "released", {"x": "forgotten"}, "s5"),
        ("x", "released", "forgotten", "forgotten", {}, "s5"),
    ]
    ws.handle_stimulus(compute("y", "s6"))
    assert ws.story(ws.tasks["y"]) == ws.story("y")
    assert strip(ws.story("x", "y")) == strip(ws.story("x")) + strip(ws.story("y"))
    assert all(isinstance(entry[-1], float) for entry in ws.log)
    assert all(isinstance(entry, tuple) for entry in ws.log)
    assert ws.stimulus_story(ws.tasks["y"]) == ws.stimulus_story("y")



def test_unknown_finish_state_raises_invalid_transition(impl):
    """As distributed's test_invalid_transitions, which makes ``_handle_event``
    recommend a state that does not exist: the leg to released happens, the second
    leg fails, and the outer error names the requested pair."""

    class Sub(impl.WorkerState):
        recs = None

        def _handle_event(self, ev):
            if self.recs is not None:
                return self.recs, []
            return super()._handle_event(ev)

    with dask.config.set({"distributed.admin.low-level-log-length": None}):
        ws = Sub(address=ADDR, transition_counter_max=50_000)
    ws.handle_stimulus(compute("x", "s1"), success("x", "s2", 1))
    ts = ws.tasks["x"]
    ws.recs = {ts: "foo"}
    with pytest.raises(InvalidTransition) as excinfo:
        ws.handle_stimulus(PauseEvent(stimulus_id="s3"))
    e = excinfo.value
    assert (e.key, e.start, e.finish) == ("x", "memory", "foo")
    assert (e.__cause__.start, e.__cause__.finish) == ("released", "foo")
    assert ts.state == "released"
    assert ws.data == {}
    assert ws.running is True  # the real handler never ran
    assert strip(e.story)[-1] == ("x", "memory", "released", "released", {"x": "forgotten"}, "s3")
    # the stimulus aborted before the task counter was updated
    assert dict(ws.task_counter.current_count()) == {("x", "memory"): 1}

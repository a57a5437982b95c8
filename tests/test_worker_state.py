"""WorkerState parity: stories, ready order, plugins, errors, live limits, gathers.

The API, construction, dumps and pickling are in test_worker_state_api.py.

Each test body runs on stock's WorkerState and on fastworker's (``ws``/``impl``).
"""
from __future__ import annotations


import pytest

from distributed.diagnostics.plugin import WorkerPlugin
from distributed.worker_state_machine import (
    AcquireReplicasEvent,
    ComputeTaskEvent,
    Execute,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDep,
    InvalidTransition,
    PauseEvent,
    StateMachineEvent,
    TaskFinishedMsg,
    TransitionCounterMaxExceeded,
    UnpauseEvent,
    UpdateDataEvent,
)
















# --- behaviour ------------------------------------------------------------------------


def test_compute_execute_release(ws):
    instructions = ws.handle_stimulus(ComputeTaskEvent.dummy("x", stimulus_id="s1"))
    assert instructions == [Execute(key="x", stimulus_id="s1")]
    instructions = ws.handle_stimulus(ExecuteSuccessEvent.dummy("x", 123, stimulus_id="s2"))
    assert instructions == [TaskFinishedMsg.match(key="x", run_id=1, stimulus_id="s2")]
    assert ws.tasks["x"].state == "memory" and ws.data["x"] == 123
    ws.handle_stimulus(FreeKeysEvent(keys=["x"], stimulus_id="s3"))
    assert not ws.tasks and not ws.data
    story = [entry[:-1] for entry in ws.story("x")]
    assert story == [
        ("x", "compute-task", "released", "s1"),
        ("x", "released", "waiting", "waiting", {"x": "ready"}, "s1"),
        ("x", "waiting", "ready", "ready", {"x": "executing"}, "s1"),
        ("x", "ready", "executing", "executing", {}, "s1"),
        ("x", "put-in-memory", "s2"),
        ("x", "executing", "memory", "memory", {}, "s2"),
        ("free-keys", ["x"], "s3"),
        ("x", "memory", "released", "released", {"x": "forgotten"}, "s3"),
        ("x", "released", "forgotten", "forgotten", {}, "s3"),
    ]


def test_ready_order_mixed_priorities(impl):
    ws = impl.WorkerState(address="127.0.0.1:1", nthreads=1)
    ws.handle_stimulus(PauseEvent(stimulus_id="pause"))
    for key, prio in [("a", (1,)), ("b", (0, 5)), ("c", (0.5,)), ("d", (0, 5)), ("e", (-1, 2, 3))]:
        ws.handle_stimulus(ComputeTaskEvent.dummy(key, priority=prio, stimulus_id=key))
    assert [ts.key for ts in ws.ready.sorted()] == ["e", "d", "b", "c", "a"]  # later wins ties
    order = []
    out = ws.handle_stimulus(UnpauseEvent(stimulus_id="unpause"))
    for i in range(5):
        (inst,) = [x for x in out if isinstance(x, Execute)]
        order.append(inst.key)
        out = ws.handle_stimulus(ExecuteSuccessEvent.dummy(inst.key, stimulus_id=f"e{i}"))
    assert order == ["e", "d", "b", "c", "a"]


def test_plugins_notified_of_requested_transitions(impl):
    calls = []

    class Recorder(WorkerPlugin):
        def transition(self, key, start, finish, **kwargs):
            calls.append((key, start, finish))

    class Failing(WorkerPlugin):
        def transition(self, key, start, finish, **kwargs):
            raise RuntimeError("plugin bug")  # logged and swallowed

    class InstanceAttribute(WorkerPlugin):
        pass

    inst = InstanceAttribute()
    inst.transition = lambda *args: calls.append(("instance", *args))
    plugins = {"rec": Recorder(), "bad": Failing(), "noop": WorkerPlugin(), "inst": inst}
    ws = impl.WorkerState(address="127.0.0.1:1", plugins=plugins, resources={"R": 1})
    ws.handle_stimulus(
        ComputeTaskEvent.dummy("x", resource_restrictions={"R": 1}, stimulus_id="s")
    )
    assert calls == [
        ("x", "released", "waiting"), ("instance", "x", "released", "waiting"),
        ("x", "waiting", "ready"), ("instance", "x", "waiting", "ready"),
        ("x", "waiting", "constrained"), ("instance", "x", "waiting", "constrained"),
        ("x", "constrained", "executing"), ("instance", "x", "constrained", "executing"),
    ]






def test_invalid_transition_raises_with_story(ws):
    ws.handle_stimulus(UpdateDataEvent(data={"x": 1}, stimulus_id="s1"))
    ts = ws.tasks["x"]
    with pytest.raises(InvalidTransition) as info:
        ws._transition(ts, "executing", stimulus_id="s2")
    assert (info.value.key, info.value.start, info.value.finish) == ("x", "memory", "executing")
    assert ("x", "receive-from-scatter", "released", "s1") in [e[:-1] for e in info.value.story]
    ws.validate = False  # the refused transition left x mid-way, as in stock


def test_unknown_event_type_raises_type_error(ws):
    class Unknown(StateMachineEvent):
        __slots__ = ()

    with pytest.raises(TypeError):
        ws.handle_stimulus(Unknown(stimulus_id="s"))


def test_transition_counter_max(impl):
    ws = impl.WorkerState(address="127.0.0.1:1", transition_counter_max=3)
    with pytest.raises(TransitionCounterMaxExceeded):
        ws.handle_stimulus(ComputeTaskEvent.dummy("x", stimulus_id="s"))
    assert ws.transition_counter == 3


def test_limits_rebound_on_live_state_are_used(ws):
    ws.transfer_message_bytes_limit = 100
    ws.handle_stimulus(
        AcquireReplicasEvent(
            who_has={"a": ["127.0.0.1:2"], "b": ["127.0.0.1:2"], "c": ["127.0.0.1:2"]},
            nbytes={"a": 60, "b": 60, "c": 60},
            stimulus_id="s",
        )
    )
    gathers = [ts.key for ts in ws.tasks.values() if ts.state == "flight"]
    assert len(gathers) == 1  # 60 + 60 > 100: one key per message
    ws.nthreads = 0
    ws.handle_stimulus(ComputeTaskEvent.dummy("y", stimulus_id="s2"))
    assert ws.tasks["y"].state == "ready"  # no thread to run it on






def test_gather_dep_instruction(ws):
    out = ws.handle_stimulus(
        ComputeTaskEvent.dummy("z", who_has={"x": ["127.0.0.1:2"]}, stimulus_id="s")
    )
    assert out == [GatherDep(worker="127.0.0.1:2", to_gather={"x"}, total_nbytes=1, stimulus_id="s")]

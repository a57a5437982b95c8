"""WorkerState parity: API, construction, plugins, subclasses, errors, dumps, pickling.

Each test body runs on stock's WorkerState and on fastworker's (``ws``/``ws_impl``).
"""
from __future__ import annotations

import inspect
import pickle

import pytest

import dask
import distributed.worker_state_machine as stock_wsm
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.sizeof import sizeof
from distributed.utils import recursive_to_dict
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

import fastworker

# --- API parity, as cytoolz checks it mirrors toolz ---------------------------------

USED_PRIVATE = {"_handle_event", "_transition", "_transitions", "_to_dict"}


def public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


def test_class_members_match_stock():
    missing = (public(stock_wsm.WorkerState) | USED_PRIVATE) - set(dir(fastworker.WorkerState))
    assert not missing, f"fastworker.WorkerState lacks {sorted(missing)}"


def test_instance_members_match_stock():
    stock = stock_wsm.WorkerState(address="127.0.0.1:1")
    fast = fastworker.WorkerState(address="127.0.0.1:1")
    missing = public(stock) - set(dir(fast))
    assert not missing, f"fastworker.WorkerState instances lack {sorted(missing)}"
    for name in public(stock):
        assert callable(getattr(stock, name)) == callable(getattr(fast, name)), name


@pytest.mark.parametrize("name", ["WorkerState", "TaskState"])
def test_constructor_signature_matches_stock(name):
    stock = inspect.signature(getattr(stock_wsm, name)).parameters
    fast = inspect.signature(getattr(fastworker, name)).parameters
    if name == "TaskState":  # our one extra, keyword-only field
        fast = {k: v for k, v in fast.items() if k != "duration"}
    assert list(stock) == list(fast)
    for name, p in stock.items():
        assert p.kind == fast[name].kind, name
        assert p.default == fast[name].default, name


# --- construction ---------------------------------------------------------------------


def test_defaults(ws_impl):
    ws = ws_impl.WorkerState()
    with pytest.raises(AttributeError):
        ws.address  # unset until the Worker sets it
    assert not hasattr(ws, "address")
    ws.address = "tcp://127.0.0.1:5"
    assert ws.address == "tcp://127.0.0.1:5"
    assert (ws.nthreads, ws.validate, ws.running, ws.generation) == (1, True, True, 0)
    assert ws.transfer_incoming_count_limit == 9999
    assert ws.transfer_incoming_bytes_throttle_threshold == 10_000_000
    assert ws.transition_counter_max is False
    assert ws.tasks == {} and ws.data == {} and ws.threads == {} and ws.plugins == {}
    assert ws.log.maxlen == dask.config.get("distributed.admin.low-level-log-length")
    assert ws.rng.random() == __import__("random").Random(0).random()
    assert not hasattr(ws, "__dict__")


def test_shared_by_reference_and_resources_copied(ws_impl):
    data, threads, plugins, resources = {}, {}, {}, {"R": 2}
    ws = ws_impl.WorkerState(data=data, threads=threads, plugins=plugins, resources=resources)
    assert ws.data is data and ws.threads is threads and ws.plugins is plugins
    assert ws.total_resources == resources and ws.total_resources is not resources
    assert ws.available_resources == resources
    assert ws.available_resources is not ws.total_resources


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


def test_ready_order_mixed_priorities(ws_impl):
    ws = ws_impl.WorkerState(address="127.0.0.1:1", nthreads=1)
    ws.handle_stimulus(PauseEvent(stimulus_id="pause"))
    for key, prio in [("a", (1,)), ("b", (0, 5)), ("c", (0.5,)), ("d", (0, 5)), ("e", (-1, 2, 3))]:
        ws.handle_stimulus(ComputeTaskEvent.dummy(key, priority=prio, stimulus_id=key))
    assert [ts.key for ts in ws.ready.sorted()] == ["e", "d", "b", "c", "a"]  # later wins ties
    order = []
    for i in range(5):
        out = ws.handle_stimulus(UnpauseEvent(stimulus_id=f"u{i}")) if i == 0 else out
        (inst,) = [x for x in out if isinstance(x, Execute)]
        order.append(inst.key)
        out = ws.handle_stimulus(ExecuteSuccessEvent.dummy(inst.key, stimulus_id=f"e{i}"))
    assert order == ["e", "d", "b", "c", "a"]


def test_plugins_notified_of_requested_transitions(ws_impl):
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
    ws = ws_impl.WorkerState(address="127.0.0.1:1", plugins=plugins, resources={"R": 1})
    ws.handle_stimulus(
        ComputeTaskEvent.dummy("x", resource_restrictions={"R": 1}, stimulus_id="s")
    )
    assert calls == [
        ("x", "released", "waiting"), ("instance", "x", "released", "waiting"),
        ("x", "waiting", "ready"), ("instance", "x", "waiting", "ready"),
        ("x", "waiting", "constrained"), ("instance", "x", "waiting", "constrained"),
        ("x", "constrained", "executing"), ("instance", "x", "constrained", "executing"),
    ]


def test_subclass_overriding_transition_is_used(ws_impl):
    seen = []

    class Spy(ws_impl.WorkerState):
        def _transition(self, ts, finish, *args, stimulus_id):
            seen.append((ts.key, finish if isinstance(finish, str) else finish[0]))
            return super()._transition(ts, finish, *args, stimulus_id=stimulus_id)

    ws = Spy(address="127.0.0.1:1")
    ws.handle_stimulus(ComputeTaskEvent.dummy("x", stimulus_id="s"))
    assert seen == [("x", "waiting"), ("x", "ready"), ("x", "executing")]
    assert ws.tasks["x"].state == "executing"


def test_subclass_overriding_handle_event_is_used(ws_impl):
    class Ignoring(ws_impl.WorkerState):
        def _handle_event(self, ev):
            if isinstance(ev, FreeKeysEvent):
                return {}, []
            return super()._handle_event(ev)

    ws = Ignoring(address="127.0.0.1:1")
    ws.handle_stimulus(UpdateDataEvent(data={"x": 1}, stimulus_id="s1"))
    ws.handle_stimulus(FreeKeysEvent(keys=["x"], stimulus_id="s2"))
    assert ws.tasks["x"].state == "memory"


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


def test_transition_counter_max(ws_impl):
    ws = ws_impl.WorkerState(address="127.0.0.1:1", transition_counter_max=3)
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


def test_to_dict_equal_between_implementations():
    dumps = []
    for cls in (stock_wsm.WorkerState, fastworker.WorkerState):
        with dask.config.set({"distributed.admin.low-level-log-length": None}):
            ws = cls(address="127.0.0.1:1", transition_counter_max=50_000)
        ws.handle_stimulus(
            AcquireReplicasEvent(
                who_has={"x": ["127.0.0.1:1235"]}, nbytes={"x": 123}, stimulus_id="s1"
            )
        )
        ws.handle_stimulus(UpdateDataEvent(data={"y": object()}, stimulus_id="s2"))
        out = recursive_to_dict(ws)
        for entry in out["log"]:
            del entry[-1]
        for stim in out["stimulus_log"]:
            del stim["handled"]
        out["task_cumulative_elapsed"] = sorted(out["task_cumulative_elapsed"])
        dumps.append(out)
    stock, fast = dumps
    assert fast == stock
    assert fast["tasks"]["y"]["nbytes"] == sizeof(object())
    assert fast["tasks"]["x"] == {
        "coming_from": "127.0.0.1:1235", "key": "x", "run_id": -1, "nbytes": 123,
        "priority": [1], "state": "flight", "who_has": ["127.0.0.1:1235"],
    }


def test_pickle_round_trip(ws):
    ws.handle_stimulus(
        AcquireReplicasEvent(who_has={"x": ["127.0.0.1:1235"]}, nbytes={"x": 123}, stimulus_id="s1")
    )
    ws.handle_stimulus(UpdateDataEvent(data={"y": 123}, stimulus_id="s"))
    ws2 = pickle.loads(pickle.dumps(ws))
    assert ws2.tasks.keys() == {"x", "y"}
    assert ws2.data == {"y": 123}
    assert ws2.address == ws.address
    assert ws2.tasks["x"].state == "flight"
    assert [e[:-1] for e in ws2.log] == [e[:-1] for e in ws.log]


def test_gather_dep_instruction(ws):
    out = ws.handle_stimulus(
        ComputeTaskEvent.dummy("z", who_has={"x": ["127.0.0.1:2"]}, stimulus_id="s")
    )
    assert out == [GatherDep(worker="127.0.0.1:2", to_gather={"x"}, total_nbytes=1, stimulus_id="s")]

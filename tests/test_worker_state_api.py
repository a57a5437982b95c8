"""API parity of ``fastworker.WorkerState`` with stock's, as cytoolz checks it mirrors toolz.

Member-by-member comparisons take both classes; behavioural checks run once per
implementation (``ws`` / ``impl`` fixtures) and assert stock's behaviour: shared-by-reference collections,
attributes rebound on a live state and re-read, pickling, ``_to_dict``, subclassing.
"""
from __future__ import annotations

import inspect
import math
import pickle
import random
from collections import deque
from unittest import mock

import pytest

import dask
from distributed.utils import recursive_to_dict
from distributed.worker_state_machine import (
    AcquireReplicasEvent,
    ComputeTaskEvent,
    Execute,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepBusyEvent,
    GatherDepSuccessEvent,
    InvalidTaskState,
    PauseEvent,
    StateMachineEvent,
    TaskFinishedMsg,
    UnpauseEvent,
    UpdateDataEvent,
)
from distributed.worker_state_machine import WorkerState as StockWorkerState

from helpers import FASTWORKER, RELEASE_COMPUTE_FIELDS

ADDR = "127.0.0.1:1"
W2 = "127.0.0.2:1"
W3 = "127.0.0.3:1"
LOCAL = "127.0.0.1:2"

#: Private members that code outside the state machine relies on: worker.py
#: (``_to_dict``), utils_test / distributed's tests (``_handle_event`` patched,
#: ``_transition`` overridden in a subclass, ``_transitions`` driven directly),
#: Worker.validate_state (``validate_task`` via validate_state).
USED_PRIVATE = {"_handle_event", "_transition", "_transitions", "_to_dict", "validate_task"}


def public_members(obj) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


@pytest.fixture
def fast_cls():
    return FASTWORKER.WorkerState


def new_state(cls, **kwargs):
    kwargs.setdefault("address", ADDR)
    kwargs.setdefault("transition_counter_max", 50_000)
    with dask.config.set({"distributed.admin.low-level-log-length": None}):
        return cls(**kwargs)


def compute(key, sid, **kwargs):
    return ComputeTaskEvent.dummy(key, stimulus_id=sid, **kwargs)


def success(key, sid, value=None):
    return ExecuteSuccessEvent.dummy(key, value, run_id=0, stimulus_id=sid)


def acquire(key, holders, sid, nbytes=1):
    return AcquireReplicasEvent(
        who_has={key: list(holders)}, nbytes={key: nbytes}, stimulus_id=sid
    )


# --------------------------------------------------------------------------- members


def test_class_members(fast_cls):
    missing = (public_members(StockWorkerState) | USED_PRIVATE) - set(dir(fast_cls))
    assert not missing, f"fastworker.WorkerState lacks {sorted(missing)}"


def test_instance_members(fast_cls):
    stock_ws, fast_ws = new_state(StockWorkerState), new_state(fast_cls)
    missing = (public_members(stock_ws) | USED_PRIVATE) - set(dir(fast_ws))
    assert not missing, f"fastworker.WorkerState instances lack {sorted(missing)}"


def test_no_extra_public_members(fast_cls):
    extra = public_members(new_state(fast_cls)) - public_members(new_state(StockWorkerState))
    assert extra == set()


@pytest.mark.parametrize("name", sorted(public_members(StockWorkerState) | USED_PRIVATE))
def test_member_kinds_match(fast_cls, name):
    stock_ws, fast_ws = new_state(StockWorkerState), new_state(fast_cls)
    stock_attr, fast_attr = getattr(stock_ws, name), getattr(fast_ws, name)
    assert callable(stock_attr) == callable(fast_attr)
    # properties stay read-only, plain attributes stay writable
    stock_prop = isinstance(inspect.getattr_static(StockWorkerState, name, None), property)
    if stock_prop:
        with pytest.raises(AttributeError):
            setattr(fast_ws, name, stock_attr)
    plain = (dict, set, deque, bool, int, float, str, random.Random)
    if not callable(stock_attr) and not stock_prop and isinstance(stock_attr, plain):
        assert isinstance(fast_attr, type(stock_attr))


#: Where each constructor parameter of stock's WorkerState lands, and a value for it.
CONSTRUCTOR = {
    "nthreads": (3, ("nthreads",)),
    "address": ("127.0.0.9:9", ("address",)),
    "data": ({}, ("data",)),
    "threads": ({}, ("threads",)),
    "plugins": ({}, ("plugins",)),
    "resources": ({"GPU": 2}, ("total_resources", "available_resources")),
    "transfer_incoming_count_limit": (4, ("transfer_incoming_count_limit",)),
    "validate": (False, ("validate",)),
    "transition_counter_max": (77, ("transition_counter_max",)),
    "transfer_incoming_bytes_limit": (1234, ("transfer_incoming_bytes_limit",)),
    "transfer_message_bytes_limit": (567, ("transfer_message_bytes_limit",)),
}


def test_constructor_signature(fast_cls):
    """The signature shown is stock's; the tests below check that it describes the
    compiled constructor (which has no introspectable signature of its own)."""
    stock_sig = inspect.signature(StockWorkerState)
    fast_sig = inspect.signature(fast_cls)

    def shape(sig):
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    assert shape(fast_sig) == shape(stock_sig)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in stock_sig.parameters.values())


@pytest.mark.parametrize("name", list(inspect.signature(StockWorkerState).parameters))
def test_constructor_takes_each_stock_parameter(fast_cls, name):
    """Each of stock's parameters, passed alone to the compiled constructor, lands
    where it lands in stock; left out, its default gives stock's value."""
    assert name in CONSTRUCTOR, f"stock has a new constructor parameter {name!r}"
    value, attrs = CONSTRUCTOR[name]
    stock_ws, fast_ws = StockWorkerState(**{name: value}), fast_cls(**{name: value})
    for attr in attrs:
        assert getattr(fast_ws, attr) == getattr(stock_ws, attr) == value, attr
        if isinstance(value, dict) and name != "resources":
            assert getattr(fast_ws, attr) is value  # held by reference
    default = inspect.signature(fast_cls).parameters[name].default
    stock_ws, fast_ws = StockWorkerState(), fast_cls()
    for attr in attrs:
        if name == "address":  # left unset while None, in both
            assert not hasattr(stock_ws, attr) and not hasattr(fast_ws, attr)
            continue
        expected = getattr(stock_ws, attr)
        assert getattr(fast_ws, attr) == expected, attr
        if default is not None:
            assert expected == default, attr


def test_constructor_is_keyword_only(impl):
    with pytest.raises(TypeError):
        impl.WorkerState(1)
    with pytest.raises(TypeError):
        impl.WorkerState(bogus=1)


# --------------------------------------------------------------------------- construction


def test_constructor_defaults(impl):
    ws = impl.WorkerState()
    with pytest.raises(AttributeError):
        ws.address  # left unset when not given
    ws.address = ADDR  # as Worker.start_unsafe does
    assert ws.address == ADDR
    assert ws.nthreads == 1
    assert ws.validate is True
    assert ws.running is True
    assert ws.transition_counter_max is False
    assert ws.transfer_incoming_count_limit == 9999
    assert ws.transfer_incoming_bytes_limit == math.inf
    assert ws.transfer_message_bytes_limit == math.inf
    assert ws.transfer_incoming_bytes_throttle_threshold == 10_000_000
    assert type(ws.transfer_incoming_bytes_throttle_threshold) is int
    assert (ws.generation, ws.transition_counter, ws.fetch_count) == (0, 0, 0)
    assert (ws.nbytes, ws.executed_count, ws.transfer_incoming_bytes) == (0, 0, 0)
    assert ws.transfer_incoming_count_total == 0
    assert ws.data == {} and ws.threads == {} and ws.plugins == {}
    assert ws.total_resources == {} and ws.available_resources == {}
    assert ws.tasks == {} and ws.actors == {} and ws.has_what == {}
    assert ws.waiting == set() and ws.executing == set() and ws.long_running == set()
    assert ws.in_flight_tasks == set() and ws.missing_dep_flight == set()
    assert ws.busy_workers == set() and ws.in_flight_workers == {}
    assert len(ws.ready) == 0 and len(ws.constrained) == 0
    assert isinstance(ws.rng, random.Random)
    assert ws.rng.getstate() == random.Random(0).getstate()
    assert isinstance(ws.log, deque) and isinstance(ws.stimulus_log, deque)
    assert ws.log.maxlen == dask.config.get("distributed.admin.low-level-log-length")
    assert (ws.executing_count, ws.in_flight_tasks_count, ws.transfer_incoming_count) == (0, 0, 0)
    assert ws.all_running_tasks == set()
    assert ws.handle_stimulus() == []


def test_constructor_arguments(impl):
    resources = {"R": 2}
    ws = impl.WorkerState(
        nthreads=3, address=ADDR, resources=resources, transfer_incoming_count_limit=4,
        validate=False, transition_counter_max=99, transfer_incoming_bytes_limit=500,
        transfer_message_bytes_limit=50,
    )
    assert ws.nthreads == 3
    assert ws.total_resources == {"R": 2} and ws.total_resources is not resources
    assert ws.available_resources == {"R": 2}
    assert ws.available_resources is not ws.total_resources
    assert ws.transfer_incoming_count_limit == 4
    assert ws.validate is False
    assert ws.transition_counter_max == 99
    assert ws.transfer_incoming_bytes_limit == 500
    assert ws.transfer_message_bytes_limit == 50
    resources["R"] = 5
    assert ws.total_resources == {"R": 2}


def test_empty_address_left_unset(impl):
    ws = impl.WorkerState(address="")
    with pytest.raises(AttributeError):
        ws.address


def test_log_length_from_config(impl):
    with dask.config.set({"distributed.admin.low-level-log-length": 3}):
        ws = impl.WorkerState(address=ADDR)
    assert ws.log.maxlen == ws.stimulus_log.maxlen == 3
    ws.handle_stimulus(compute("x", "s1"), compute("y", "s2"))
    assert len(ws.log) == 3 and len(ws.stimulus_log) == 2
    assert [e[0] for e in ws.log] == ["y", "y", "y"]


def test_shared_by_reference(impl):
    data, threads, plugins = {}, {}, {}
    ws = impl.WorkerState(address=ADDR, data=data, threads=threads, plugins=plugins)
    assert ws.data is data and ws.threads is threads and ws.plugins is plugins
    ws.handle_stimulus(compute("x", "s1"))
    threads["x"] = 123
    (msg,) = ws.handle_stimulus(success("x", "s2", 7))
    assert msg.thread == 123
    assert data == {"x": 7}
    ws.handle_stimulus(FreeKeysEvent(keys=["x"], stimulus_id="s3"))
    assert data == {} and threads == {}  # purged in place


def test_empty_shared_collections_are_kept(impl):
    """An empty mapping passed in is used as is (``is not None``, not truthiness)."""
    data = {}
    assert impl.WorkerState(data=data).data is data
    a, b = impl.WorkerState(), impl.WorkerState()
    assert a.data is not b.data and a.threads is not b.threads


def test_no_arbitrary_attributes(ws):
    with pytest.raises(AttributeError):
        ws.not_an_attribute = 1


def test_properties(ws):
    ws.handle_stimulus(compute("x", "s1"))
    assert ws.all_running_tasks == ws.executing
    assert ws.all_running_tasks is not ws.executing
    for name in ("executing_count", "all_running_tasks", "in_flight_tasks_count",
                 "transfer_incoming_count"):
        with pytest.raises(AttributeError):
            setattr(ws, name, 0)


def test_task_counter_api(ws):
    ws.handle_stimulus(compute("x-1", "s1"), compute("x-2", "s2"))
    assert dict(ws.task_counter.current_count()) == {("x", "executing"): 1, ("x", "ready"): 1}
    assert dict(ws.task_counter.current_count(by_prefix=False)) == {"executing": 1, "ready": 1}
    assert set(ws.task_counter.cumulative_elapsed()) == {("x", "executing"), ("x", "ready")}
    assert set(ws.task_counter.cumulative_elapsed(by_prefix=False)) == {"executing", "ready"}


# --------------------------------------------------------------------------- rebinding


def test_resources_rebound_and_mutated(ws):
    ws.total_resources = {"R": 2}  # as distributed's ws_with_running_task does
    ws.available_resources = {"R": 2}
    assert ws.handle_stimulus(compute("x", "s1", resource_restrictions={"R": 2})) == [
        Execute(key="x", stimulus_id="s1")
    ]
    assert ws.available_resources == {"R": 0}
    ws.nthreads = 2
    assert ws.handle_stimulus(compute("y", "s2", resource_restrictions={"R": 1})) == []
    # Worker.set_resources mutates both dicts in place
    ws.total_resources["R"] = 3
    ws.available_resources["R"] += 1
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s3")) == [
        Execute(key="y", stimulus_id="s3")
    ]
    assert ws.available_resources == {"R": 0}


def test_nthreads_rebound(ws):
    ws.handle_stimulus(compute("a", "s1"), compute("b", "s2"), compute("c", "s3"))
    assert ws.executing_count == 1
    ws.nthreads = 3
    # c is popped first (generation LIFO), the recommendations run LIFO: b, c
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s4")) == [
        Execute(key="b", stimulus_id="s4"),
        Execute(key="c", stimulus_id="s4"),
    ]
    assert ws.executing_count == 3
    ws.nthreads = 1
    (msg,) = ws.handle_stimulus(success("a", "s5"))
    assert type(msg) is TaskFinishedMsg
    ws.handle_stimulus(compute("d", "s6"))
    assert ws.tasks["d"].state == "ready"


def test_transfer_limits_rebound(ws):
    """What utils_test.freeze_data_fetching does."""
    old = ws.transfer_incoming_count_limit, ws.transfer_incoming_bytes_throttle_threshold
    ws.transfer_incoming_count_limit = 0
    ws.transfer_incoming_bytes_throttle_threshold = 0
    assert ws.handle_stimulus(acquire("a", [W2], "s1")) == []
    assert ws.tasks["a"].state == "fetch"
    ws.transfer_incoming_count_limit, ws.transfer_incoming_bytes_throttle_threshold = old
    ws.handle_stimulus(PauseEvent(stimulus_id="s2"))
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s3")) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s3")
    ]
    ws.transfer_message_bytes_limit = 1
    ws.handle_stimulus(
        GatherDepBusyEvent(worker=W2, total_nbytes=1, stimulus_id="s4"),
        acquire("b", [W2], "s5"),
    )
    ws.busy_workers.clear()  # as RetryBusyWorkerEvent would
    # a and b tie on priority (1,): a was queued first; the message limit stops b
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s6")) == [
        GatherDep(worker=W2, to_gather={"a"}, total_nbytes=1, stimulus_id="s6")
    ]
    ws.transfer_incoming_bytes_limit = 0
    assert ws.handle_stimulus(acquire("c", [W3], "s7")) == []


def test_validate_rebound(impl):
    # a compute-task whose who_has and nbytes disagree trips a validate-only assert
    bad = ComputeTaskEvent.dummy("x", who_has={"a": [W2]}, stimulus_id="s1")
    bad.nbytes = {}  # dummy() would fill an empty nbytes in from who_has
    ws = new_state(impl.WorkerState)
    ws.validate = False
    assert ws.handle_stimulus(bad) == [Execute(key="x", stimulus_id="s1")]
    assert "a" not in ws.tasks

    ws = new_state(impl.WorkerState, validate=False)
    ws.validate = True
    with pytest.raises(AssertionError):
        ws.handle_stimulus(bad)


def test_data_rebound(ws):
    ws.handle_stimulus(compute("x", "s1"))
    new = {}
    ws.data = new
    ws.handle_stimulus(success("x", "s2", 1))
    assert new == {"x": 1}


def test_plugins_rebound(ws):
    calls = []

    class Plugin:
        def transition(self, key, start, finish, **kwargs):
            calls.append((key, start, finish))

    ws.plugins = {"p": Plugin()}
    ws.handle_stimulus(compute("x", "s1"))
    assert calls == [
        ("x", "released", "waiting"), ("x", "waiting", "ready"), ("x", "ready", "executing")
    ]


def test_address_rebound(impl):
    ws = new_state(impl.WorkerState, address=None)
    ws.address = "127.0.0.9:1"
    ws.handle_stimulus(PauseEvent(stimulus_id="s1"))
    ws.handle_stimulus(acquire("a", [LOCAL], "s2"), acquire("b", ["127.0.0.9:5"], "s3"))
    assert ws.handle_stimulus(UnpauseEvent(stimulus_id="s4")) == [
        GatherDep(worker="127.0.0.9:5", to_gather={"b"}, total_nbytes=1, stimulus_id="s4"),
        GatherDep(worker=LOCAL, to_gather={"a"}, total_nbytes=1, stimulus_id="s4"),
    ]
    ws.validate_state()


def test_rng_rebound(ws):
    ws.rng = random.Random(42)
    peers = [f"10.0.0.{i}:1" for i in range(1, 4)]
    ws.handle_stimulus(PauseEvent(stimulus_id="p"))
    for i, peer in enumerate(peers):
        ws.handle_stimulus(acquire(f"k{i}", [peer], f"a{i}"))
    r = random.Random(42)
    draws = [r.random() for _ in peers]  # drawn in data_needed insertion order
    order = sorted(range(3), key=draws.__getitem__)
    assert order != [0, 1, 2] and order != [2, 1, 0]  # differs from Random(0)'s
    instructions = ws.handle_stimulus(UnpauseEvent(stimulus_id="u"))
    assert [i.worker for i in instructions] == [peers[i] for i in order]


def test_transition_counter_max_rebound(ws):
    ws.transition_counter_max = False
    ws.handle_stimulus(compute("x", "s1"))
    assert ws.transition_counter == 3


# --------------------------------------------------------------------------- validation


def test_validate_task_raises_invalid_task_state(ws):
    ws.handle_stimulus(compute("x", "s1"))
    ts = ws.tasks["x"]
    ws.validate_task(ts)
    ws.executing.discard(ts)  # corrupt the state
    with pytest.raises(InvalidTaskState) as excinfo:
        ws.validate_task(ts)
    assert (excinfo.value.key, excinfo.value.state) == ("x", "executing")
    assert excinfo.value.story == ws.story("x")
    with pytest.raises(InvalidTaskState):
        ws.validate_state()
    ws.executing.add(ts)


# --------------------------------------------------------------------------- pickle / to_dict


def _drive(ws):
    ws.handle_stimulus(compute("x", "s1"))
    ws.handle_stimulus(UpdateDataEvent(data={"y": 5}, stimulus_id="s2"))
    ws.handle_stimulus(acquire("z", [W2], "s3", nbytes=10))
    ws.handle_stimulus(compute("w", "s4", who_has={"y": [ADDR]}))


def test_pickle_round_trip(ws):
    _drive(ws)
    ws2 = pickle.loads(pickle.dumps(ws))
    assert type(ws2) is type(ws)
    assert ws2.tasks.keys() == ws.tasks.keys()
    assert {k: ts.state for k, ts in ws2.tasks.items()} == {
        "x": "executing", "y": "memory", "z": "flight", "w": "ready",
    }
    assert ws2.data == {"y": 5}
    assert ws2.address == ADDR and ws2.nthreads == 1 and ws2.generation == -2
    assert ws2.tasks["w"].dependencies == {ws2.tasks["y"]}
    assert ws2.tasks["y"] is not ws.tasks["y"]
    assert ws2.rng.getstate() == ws.rng.getstate()
    assert [tuple(e) for e in ws2.log] == [tuple(e) for e in ws.log]
    ws2.validate_state()
    # both continue alike
    events = [
        GatherDepSuccessEvent(worker=W2, total_nbytes=10, data={"z": 1}, stimulus_id="s5"),
        success("x", "s6", 2),
    ]
    assert ws2.handle_stimulus(*events) == ws.handle_stimulus(*events)
    assert {k: ts.state for k, ts in ws2.tasks.items()} == {
        k: ts.state for k, ts in ws.tasks.items()
    }
    ws2.validate_state()


def _normalized_dict(ws):
    d = recursive_to_dict(ws)
    for entry in d["log"]:
        del entry[-1]
    for ev in d["stimulus_log"]:
        del ev["handled"]
    d["task_cumulative_elapsed"] = sorted(d["task_cumulative_elapsed"])
    return d


def test_to_dict(ws):
    ws.handle_stimulus(compute("x", "s1"))
    ws.handle_stimulus(UpdateDataEvent(data={"y": 5}, stimulus_id="s2"))
    ws.handle_stimulus(acquire("z", [W2], "s3", nbytes=10))
    assert _normalized_dict(ws) == {
        "address": ADDR,
        "busy_workers": [],
        "constrained": [],
        "data": {"y": None},
        "data_needed": {W2: []},  # emptied heap recreated by validation
        "executing": ["x"],
        "has_what": {W2: ["z"]},
        "in_flight_tasks": ["z"],
        "in_flight_workers": {W2: ["z"]},
        "log": [
            ["x", "compute-task", "released", "s1"],
            ["x", "released", "waiting", "waiting", {"x": "ready"}, "s1"],
            ["x", "waiting", "ready", "ready", {"x": "executing"}, "s1"],
            ["x", "ready", "executing", "executing", {}, "s1"],
            ["y", "receive-from-scatter", "released", "s2"],
            ["y", "put-in-memory", "s2"],
            ["y", "released", "memory", "memory", {}, "s2"],
            ["z", "ensure-task-exists", "released", "s3"],
            ["z", "released", "fetch", "fetch", {}, "s3"],
            ["gather-dependencies", W2, ["z"], "s3"],
            ["z", "fetch", "flight", "flight", {}, "s3"],
        ],
        "long_running": [],
        "missing_dep_flight": [],
        "nthreads": 1,
        "ready": [],
        "running": True,
        "stimulus_log": [
            {
                "cls": "ComputeTaskEvent", "actor": False, "annotations": {}, "key": "x",
                "nbytes": {}, "priority": [0], "resource_restrictions": {}, "run_id": 0,
                "run_spec": None, "span_id": None, "stimulus_id": "s1", "who_has": {},
                **RELEASE_COMPUTE_FIELDS,
            },
            {"cls": "UpdateDataEvent", "data": {"y": None}, "stimulus_id": "s2"},
            {
                "cls": "AcquireReplicasEvent", "nbytes": {"z": 10}, "stimulus_id": "s3",
                "who_has": {"z": [W2]},
            },
        ],
        "task_counts": {"['x', 'executing']": 1, "['y', 'memory']": 1, "['z', 'flight']": 1},
        "task_cumulative_elapsed": ["['x', 'executing']", "['y', 'memory']", "['z', 'flight']"],
        "tasks": {
            # run_id 0 is falsy and dropped; run_spec (a dask Task) is callable, dropped
            "x": {"key": "x", "priority": [0, 0], "state": "executing",
                  **RELEASE_COMPUTE_FIELDS},
            "y": {"key": "y", "nbytes": 28, "run_id": -1, "state": "memory"},
            "z": {
                "coming_from": W2, "key": "z", "nbytes": 10, "priority": [1],
                "run_id": -1, "state": "flight", "who_has": [W2],
            },
        },
        "transition_counter": 6,
    }
    assert recursive_to_dict(ws, exclude=["log", "stimulus_log", "tasks"]).keys() == {
        "address", "busy_workers", "constrained", "data", "data_needed", "executing",
        "has_what", "in_flight_tasks", "in_flight_workers", "long_running",
        "missing_dep_flight", "nthreads", "ready", "running", "task_counts",
        "task_cumulative_elapsed", "transition_counter",
    }


def test_to_dict_equal_between_implementations(fast_cls):
    stock_ws, fast_ws = new_state(StockWorkerState), new_state(fast_cls)
    for state in (stock_ws, fast_ws):
        _drive(state)
        state.handle_stimulus(
            GatherDepBusyEvent(worker=W2, total_nbytes=10, stimulus_id="s5"),
            compute("v", "s6", resource_restrictions={}, priority=(-1,)),
        )
    assert _normalized_dict(fast_ws) == _normalized_dict(stock_ws)
    assert fast_ws._to_dict(exclude=["log"]).keys() == stock_ws._to_dict(exclude=["log"]).keys()


# --------------------------------------------------------------------------- subclassing


def test_subclass_overriding_transition(impl):
    calls = []

    class Sub(impl.WorkerState):
        def _transition(self, ts, finish, *args, stimulus_id):
            calls.append((ts.key, finish if isinstance(finish, str) else finish[0], args))
            return super()._transition(ts, finish, *args, stimulus_id=stimulus_id)

    ws = new_state(Sub)
    assert ws.handle_stimulus(compute("x", "s1")) == [Execute(key="x", stimulus_id="s1")]
    assert calls == [("x", "waiting", ()), ("x", "ready", ()), ("x", "executing", ())]
    calls.clear()
    ws.handle_stimulus(acquire("a", [W2], "s2"))
    ws.handle_stimulus(GatherDepBusyEvent(worker=W2, total_nbytes=1, stimulus_id="s3"))
    calls.clear()
    # fetch -> waiting goes through released: the nested legs use the override too
    ws.handle_stimulus(compute("a", "s4"))
    assert calls == [
        ("a", "waiting", ()), ("a", "released", ()), ("a", "waiting", ()), ("a", "ready", ()),
    ]
    calls.clear()
    ws.handle_stimulus(success("x", "s5", 1))
    assert calls == [("x", "memory", ()), ("a", "executing", ())]
    ws.validate_state()


def test_subclass_overriding_handle_event(impl):
    seen = []

    class Sub(impl.WorkerState):
        def _handle_event(self, ev):
            seen.append(type(ev).__name__)
            return super()._handle_event(ev)

    ws = new_state(Sub)
    ws.handle_stimulus(compute("x", "s1"), success("x", "s2"))
    assert seen == ["ComputeTaskEvent", "ExecuteSuccessEvent"]
    assert ws.tasks["x"].state == "memory"


def test_subclass_has_instance_dict(impl):
    class Sub(impl.WorkerState):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.extra = "yes"

    ws = new_state(Sub)
    assert ws.extra == "yes"
    assert isinstance(ws, impl.WorkerState)


def test_handle_event_patched_on_class(impl):
    """distributed's test_utils_test patches WorkerState._handle_event on the class.

    A compiled class is immutable: patching it is refused with a TypeError, and a
    Python subclass of it is patched instead (its override is honoured, see
    test_subclass_overriding_handle_event)."""

    class Boom(Exception):
        pass

    target = impl.WorkerState
    if impl.name == "fastworker":
        with pytest.raises(TypeError):
            with mock.patch.object(impl.WorkerState, "_handle_event", side_effect=Boom):
                pass  # pragma: no cover - not reached
        target = type("PatchedWorkerState", (impl.WorkerState,), {})

    with mock.patch.object(target, "_handle_event", side_effect=Boom):
        ws = new_state(target)
        with pytest.raises(Boom):
            ws.handle_stimulus(compute("x", "s1"))
    ws = new_state(target)
    assert ws.handle_stimulus(compute("x", "s1")) == [Execute(key="x", stimulus_id="s1")]


def test_stock_and_fast_events_are_shared_classes(fast_cls):
    """fastworker consumes and emits distributed's own event/instruction classes."""
    ws = new_state(fast_cls)
    (instr,) = ws.handle_stimulus(compute("x", "s1"))
    assert type(instr) is Execute
    assert isinstance(ws.stimulus_log[0], StateMachineEvent)
    assert type(ws.stimulus_log[0]) is ComputeTaskEvent


class ExtraSlotCompute(ComputeTaskEvent):
    """A user subclass with a slot of its own (copied like the inherited ones)."""

    __slots__ = ("note",)


class ShadowingCompute(ComputeTaskEvent):
    """A user subclass that puts a property over an inherited slot."""

    __slots__ = ()

    @property
    def span_id(self):
        return "from-property"

    @span_id.setter
    def span_id(self, value):
        pass


@pytest.mark.parametrize("cls", [ComputeTaskEvent, ExtraSlotCompute, ShadowingCompute])
def test_stimulus_log_entries_are_shallow_copies(impl, cls):
    """The logged form of a compute/success/gather event is a new instance holding the
    same field objects, payload blanked, the handled event itself untouched (stock's
    copy.copy); subclasses that add slots or shadow one with a property included."""
    ws = new_state(impl.WorkerState)
    ev = cls(
        key="x", run_id=1, who_has={}, nbytes={}, priority=(0,), run_spec="spec",
        resource_restrictions={}, actor=False, annotations={"a": 1}, span_id=None,
        stimulus_id="s1", **RELEASE_COMPUTE_FIELDS,
    )
    if cls is ExtraSlotCompute:
        ev.note = ["note"]
    ws.handle_stimulus(ev)
    logged = ws.stimulus_log[-1]
    assert type(logged) is cls and logged is not ev
    assert logged.run_spec is None and ev.run_spec == "spec"
    assert isinstance(logged.handled, float) and ev.handled is None
    assert logged.annotations is ev.annotations and logged.priority is ev.priority
    assert logged.span_id == ev.span_id
    if cls is ExtraSlotCompute:
        assert logged.note is ev.note

    value = object()
    done = ExecuteSuccessEvent(
        key="x", run_id=1, value=value, start=0.0, stop=1.0, nbytes=8, type=object,
        stimulus_id="s2",
    )
    ws.handle_stimulus(done)
    logged = ws.stimulus_log[-1]
    assert type(logged) is ExecuteSuccessEvent and logged is not done
    assert logged.value is None and done.value is value
    assert (logged.key, logged.run_id, logged.start, logged.stop, logged.nbytes) == (
        "x", 1, 0.0, 1.0, 8
    )
    assert logged.type is object and logged.stimulus_id == "s2"


def test_tasks_made_by_the_state_machine_have_constructor_defaults(impl):
    """A task the machine creates (here a dependency to fetch) starts with the same
    field values as ``TaskState(key)``, except what the machine then set."""
    ws = new_state(impl.WorkerState)
    ws.handle_stimulus(compute("x", "s1", who_has={"a": [W2]}, nbytes={"a": 1}))
    made = ws.tasks["a"]
    fresh = impl.TaskState("a")
    for name in (
        "run_id", "run_spec", "dependencies", "waiting_for_data", "previous",
        "next", "resource_restrictions", "exception", "traceback", "exception_text",
        "traceback_text", "type", "suspicious_count", "startstops", "start_time",
        "stop_time", "metadata", "annotations", "span_id", "prefix",
    ):
        assert getattr(made, name) == getattr(fresh, name), name
        assert type(getattr(made, name)) is type(getattr(fresh, name)), name
    x = ws.tasks["x"]
    assert made.dependents == made.waiters == {x} and made.who_has == {W2}
    assert made in impl.TaskState._instances
    assert x.dependencies == x.waiting_for_data == {made}
    # an empty set is the task's own, kept, and mutable
    assert made.waiting_for_data is made.waiting_for_data
    made.waiting_for_data.add(x)
    assert made.waiting_for_data == {x}


def test_hot_instructions_are_built_slot_by_slot():
    """Against the pinned distributed, the hot instruction classes are plain slotted
    dataclasses, so fastworker fills their slots directly (see _fast_paths); the
    instructions equal what their own constructors make."""
    from fastworker import workerstate

    assert all(workerstate._fast_paths().values())
    ws = new_state(FASTWORKER.WorkerState)
    instructions = ws.handle_stimulus(compute("x", "s1"))
    instructions += ws.handle_stimulus(success("x", "s2", value=1))
    instructions += ws.handle_stimulus(FreeKeysEvent(keys=["x"], stimulus_id="s3"))
    instructions += ws.handle_stimulus(acquire("y", [W2], "s4"))
    assert [type(i).__name__ for i in instructions] == [
        "Execute", "TaskFinishedMsg", "ReleaseWorkerDataMsg", "GatherDep",
    ]
    assert instructions[0] == Execute(key="x", stimulus_id="s1")
    assert instructions[2].key == "x" and instructions[2].stimulus_id == "s3"
    assert instructions[3] == GatherDep(
        worker=W2, to_gather={"y"}, total_nbytes=1, stimulus_id="s4"
    )
    assert repr(instructions[2]) == "ReleaseWorkerDataMsg(stimulus_id='s3', key='x')"


def test_debug_messages_follow_the_logger_level_between_calls(impl, caplog):
    """Debug messages are emitted exactly while the state machine's logger is
    enabled for DEBUG, re-read on every handle_stimulus call (level changes and
    ``disabled`` included)."""
    import logging

    log = logging.getLogger("distributed.worker.state_machine")
    ws = new_state(impl.WorkerState)

    def purges(*stims):
        caplog.clear()
        for stim in stims:
            ws.handle_stimulus(stim)
        # the messages name the task, whose repr shows its state at formatting time
        return [r.args[0].key for r in caplog.records
                if r.name == log.name and r.msg == "Purge task: %s"]

    with caplog.at_level(logging.DEBUG, logger=log.name):
        assert purges(compute("x", "s1"), success("x", "s2"),
                      FreeKeysEvent(keys=["x"], stimulus_id="s3")) == ["x", "x"]
        log.setLevel(logging.INFO)
        assert purges(compute("y", "s4"), success("y", "s5"),
                      FreeKeysEvent(keys=["y"], stimulus_id="s6")) == []
        log.setLevel(logging.DEBUG)
        log.disabled = True
        try:
            assert purges(compute("z", "s7"), success("z", "s8"),
                          FreeKeysEvent(keys=["z"], stimulus_id="s9")) == []
        finally:
            log.disabled = False
        assert purges(compute("w", "s10"), success("w", "s11"),
                      FreeKeysEvent(keys=["w"], stimulus_id="s12")) == ["w", "w"]


def test_data_needed_heaps_start_like_constructed_ones(fast_cls):
    """The queues data_needed makes per peer are in the state PriorityHeapSet()
    leaves a new heap in (empty, keyed by priority, default compaction)."""
    from fastworker.heap import PriorityHeapSet

    ws = new_state(fast_cls)
    made, built = ws.data_needed[W2], PriorityHeapSet()
    assert type(made) is PriorityHeapSet
    for name in ("key", "_data", "_heap", "_inc", "_sorted", "_compact_threshold"):
        assert getattr(made, name) == getattr(built, name), name
    assert len(made) == 0 and list(made) == [] and list(made.sorted()) == []
    a, b = ws_task("a", (1,)), ws_task("b", (0,))
    made.add(a), made.add(b)
    assert made.pop() is b and made.peek() is a and W2 in ws.data_needed


def ws_task(key, priority):
    from fastworker import TaskState

    ts = TaskState(key)
    ts.priority = priority
    return ts


def test_hot_events_are_read_from_their_slots():
    """The hottest handlers read distributed's event classes straight from their slots
    (see _event_fields_direct): against the pinned release all of them qualify."""
    from fastworker import workerstate

    assert all(workerstate._event_fields_direct().values())


def test_event_subclasses_and_unset_slots_are_read_as_stock_reads_them(impl):
    """A subclass of a hot event class (here with a property over a field) is read
    through getattr, and an unset slot raises stock's AttributeError."""

    class FreeTwice(FreeKeysEvent):
        __slots__ = ()

        @property
        def keys(self):
            return ["x", "y"]

    ws = new_state(impl.WorkerState)
    ws.handle_stimulus(compute("x", "s1"), success("x", "s2"), compute("y", "s3"))
    free = FreeTwice.__new__(FreeTwice)
    free.stimulus_id = "s4"
    ws.handle_stimulus(free)
    assert "x" not in ws.tasks
    assert ws.tasks["y"].state == "cancelled"  # running: released when it ends

    unset = FreeKeysEvent.__new__(FreeKeysEvent)
    unset.stimulus_id = "s5"
    with pytest.raises(AttributeError, match="keys"):
        ws.handle_stimulus(unset)


def test_dropped_peer_queues_are_reused_as_new(fast_cls):
    """A peer's queue that data_needed drops when it empties is kept for the next
    peer only when nothing else refers to it, and is then exactly a new queue."""
    ws = new_state(fast_cls, validate=False)
    ws.handle_stimulus(PauseEvent(stimulus_id="s1"))
    ws.handle_stimulus(acquire("a", [W2], "s2"), acquire("b", [W3], "s3"))
    held = ws.data_needed[W3]
    ws.handle_stimulus(UnpauseEvent(stimulus_id="s4"))  # gathers a and b: both queues empty
    assert W2 not in ws.data_needed and W3 not in ws.data_needed
    assert len(held) == 0
    ws.handle_stimulus(PauseEvent(stimulus_id="s5"))
    ws.handle_stimulus(acquire("c", [LOCAL], "s6"))
    queue = ws.data_needed[LOCAL]
    assert queue is not held  # a queue someone still refers to is never reused
    # reused or not, exactly what a new queue holding one task is
    assert len(queue) == 1 and queue._inc == 1 and queue.peek() is ws.tasks["c"]
    assert type(queue).__name__ == "PriorityHeapSet"

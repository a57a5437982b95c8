"""TaskState parity: every field, default, repr, nbytes, dumps and pickling.

Each test body runs on stock distributed's TaskState and on fastworker's (``impl``);
the differential tests at the end feed both the same random values.
"""
from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dask
from dask.utils import key_split
from distributed.protocol.serialize import Serialize
from distributed.utils import recursive_to_dict
from distributed.worker_state_machine import _default_data_size

from helpers import FASTWORKER, STOCK

STATES = (
    "cancelled", "constrained", "error", "executing", "fetch", "flight", "forgotten",
    "long-running", "memory", "missing", "ready", "released", "rescheduled",
    "resumed", "waiting",
)

# name -> (default, a non-default value), in the constructor's positional order.
FIELDS = {
    "run_id": (-1, 7),
    "run_spec": (None, "a-run-spec"),
    "dependencies": (set(), None),  # filled with tasks in the tests that need them
    "dependents": (set(), None),
    "waiting_for_data": (set(), None),
    "waiters": (set(), None),
    "state": ("released", "memory"),
    "previous": (None, "flight"),
    "next": (None, "waiting"),
    "priority": (None, (-1, 2, 3.5, -4)),
    "who_has": (set(), {"tcp://127.0.0.1:1", "tcp://127.0.0.1:2"}),
    "coming_from": (None, "tcp://127.0.0.1:1"),
    "resource_restrictions": ({}, {"GPU": 1.0}),
    "exception": (None, Serialize(ValueError("boom"))),
    "traceback": (None, Serialize("tb")),
    "exception_text": ("", "ValueError('boom')"),
    "traceback_text": ("", "Traceback ..."),
    "type": (None, int),
    "suspicious_count": (0, 3),
    "startstops": ([], [{"action": "compute", "start": 1.0, "stop": 2.0}]),
    "start_time": (None, 1.5),
    "stop_time": (None, 2.5),
    "metadata": ({}, {"a": 1}),
    "nbytes": (None, 123),
    "annotations": (None, {"priority": 2}),
    "span_id": (None, "span-1"),
    "done": (False, True),
}
if "duration" in STOCK.TaskState.__dataclass_fields__:
    # distributed 2024.11.0-2025.1.0: a field after "next"
    _items = list(FIELDS.items())
    _at = [name for name, _ in _items].index("next") + 1
    FIELDS = dict(_items[:_at] + [("duration", (None, 4.5))] + _items[_at:])
SET_OF_TASKS = ("dependencies", "dependents", "waiting_for_data", "waiters")
MUTABLE_DEFAULTS = ("who_has", "resource_restrictions", "startstops", "metadata", *SET_OF_TASKS)


def sample_value(impl, name):
    if name in SET_OF_TASKS:
        return {impl.TaskState(f"{name}-dep")}
    return FIELDS[name][1]


# --- fields and defaults -------------------------------------------------------------

def test_field_list_matches_stock():
    """The table above covers every public field of stock's dataclass."""
    stock_fields = {
        name for name in STOCK.TaskState.__dataclass_fields__ if not name.startswith("_")
    }
    assert stock_fields == {"key", "prefix", *FIELDS}


@pytest.mark.parametrize("name", FIELDS)
def test_default(impl, name):
    ts = impl.TaskState("x")
    assert getattr(ts, name) == FIELDS[name][0]
    assert type(getattr(ts, name)) is type(FIELDS[name][0])


def test_defaults_equal_stock_dataclass_defaults(fast):
    """Checked against the stock dataclass itself, so a changed default is caught."""
    import dataclasses

    ts = fast.TaskState("x")
    for f in dataclasses.fields(STOCK.TaskState):
        name = f.name
        if not f.init or name == "key":
            continue
        if f.default is not dataclasses.MISSING:
            expected = f.default
        else:
            expected = f.default_factory()
        assert getattr(ts, name) == expected, name


@pytest.mark.parametrize("name", MUTABLE_DEFAULTS)
def test_mutable_defaults_are_not_shared(impl, name):
    a, b = impl.TaskState("a"), impl.TaskState("b")
    assert getattr(a, name) is not getattr(b, name)


@pytest.mark.parametrize("name", FIELDS)
def test_keyword_argument(impl, name):
    value = sample_value(impl, name)
    ts = impl.TaskState("x", **{name: value})
    assert getattr(ts, name) == value
    if isinstance(value, (set, dict, list)):
        assert getattr(ts, name) is value  # held by reference, like a dataclass


@pytest.mark.parametrize("name", FIELDS)
def test_attribute_is_writable(impl, name):
    ts = impl.TaskState("x")
    value = sample_value(impl, name)
    setattr(ts, name, value)
    assert getattr(ts, name) == value


def test_positional_arguments_in_stock_order(impl):
    """Stock's dataclass __init__ takes every field positionally, in declaration order."""
    values = ["x"] + [sample_value(impl, name) for name in FIELDS]
    ts = impl.TaskState(*values)
    assert ts.key == "x"
    for name, value in zip(FIELDS, values[1:]):
        assert getattr(ts, name) == value, name


@pytest.mark.parametrize("name", ["dependencies", "who_has", "resource_restrictions", "metadata"])
def test_explicit_none_is_kept(impl, name):
    """Scheduler messages may carry None (e.g. resource_restrictions); keep it as given."""
    ts = impl.TaskState("x", **{name: None})
    assert getattr(ts, name) is None


def test_key_is_required(impl):
    with pytest.raises(TypeError):
        impl.TaskState()


def test_unknown_keyword_is_refused(impl):
    with pytest.raises(TypeError):
        impl.TaskState("x", no_such_field=1)


def test_no_instance_dict(impl):
    ts = impl.TaskState("x")
    assert not hasattr(ts, "__dict__")
    with pytest.raises(AttributeError):
        ts.no_such_attribute = 1


@pytest.mark.parametrize(
    "key", ["x", "inc-1234", ("sum-abc", 0, 1), b"bytes-key", 42, 1.5, ("a", ("b", 1))]
)
def test_prefix(impl, key):
    ts = impl.TaskState(key)
    assert ts.prefix == key_split(key)
    ts.prefix = "other"
    assert ts.prefix == "other"


# --- states --------------------------------------------------------------------------

@pytest.mark.parametrize("state", STATES)
def test_every_state_name_round_trips(impl, state):
    ts = impl.TaskState("x", state=state)
    assert ts.state == state
    ts.state = "released"
    ts.state = state
    assert ts.state == state
    assert isinstance(ts.state, str)


def test_state_strings_equal_stock_literal():
    from typing import get_args

    from distributed.worker_state_machine import TaskStateState

    assert set(get_args(TaskStateState)) == set(STATES)
    assert set(FASTWORKER.module.TASK_STATES) == set(STATES)


@pytest.mark.parametrize("bad", ["bogus", "Memory", "", 3, None])
def test_bad_state_string(impl, bad):
    """fastworker refuses a state it cannot represent; stock stores anything."""
    if not impl.validates_state_names:
        ts = impl.TaskState("x", state=bad)
        assert ts.state == bad
        return
    with pytest.raises(ValueError, match="is not a worker task state"):
        impl.TaskState("x", state=bad)
    ts = impl.TaskState("x", state="waiting")
    with pytest.raises(ValueError, match="is not a worker task state"):
        ts.state = bad
    assert ts.state == "waiting"  # unchanged after the refused assignment


@pytest.mark.parametrize("field", ["previous", "next"])
def test_bad_previous_next(impl, field):
    ts = impl.TaskState("x")
    if not impl.validates_state_names:
        setattr(ts, field, "bogus")
        assert getattr(ts, field) == "bogus"
        return
    with pytest.raises(ValueError, match="is not a worker task state"):
        setattr(ts, field, "bogus")
    assert getattr(ts, field) is None
    setattr(ts, field, "flight")
    setattr(ts, field, None)
    assert getattr(ts, field) is None


# --- repr, hash, identity, weakrefs ------------------------------------------------------

def test_repr(impl):
    ts = impl.TaskState("x")
    assert repr(ts) == str(ts) == "<TaskState 'x' released>"
    ts.state = "cancelled"
    ts.previous = "flight"
    assert repr(ts) == "<TaskState 'x' cancelled(flight)>"
    ts.state = "resumed"
    ts.next = "waiting"
    assert repr(ts) == "<TaskState 'x' resumed(flight->waiting)>"
    ts.state = "long-running"
    assert repr(ts) == "<TaskState 'x' long-running>"


@pytest.mark.parametrize("key", [("x", 1), b"x", 3, 1.5])
def test_repr_non_string_keys(impl, key):
    assert repr(impl.TaskState(key, state="memory")) == f"<TaskState {key!r} memory>"


def test_hash_and_eq_by_identity(impl):
    a, b = impl.TaskState("x"), impl.TaskState("x")
    assert a != b
    # Equality is identity: list.count/index compare with ==
    assert [b, a].count(a) == 1 and [a, b].index(b) == 1
    assert len({a, b}) == 2
    assert hash(a) != hash(b)
    a.state = "memory"
    assert a in {a}  # hash does not depend on mutable fields


def test_weakref(impl):
    ts = impl.TaskState("x")
    ref = weakref.ref(ts)
    assert ref() is ts
    del ts
    gc.collect()
    assert ref() is None


def test_instances_tracking(impl):
    gc.collect()
    before = len(impl.TaskState._instances)
    x = impl.TaskState("x")
    assert len(impl.TaskState._instances) == before + 1
    assert x in impl.TaskState._instances
    del x
    gc.collect()
    assert len(impl.TaskState._instances) == before


def test_instances_clear_discard_and_iterate(impl):
    instances = impl.TaskState._instances
    x, y = impl.TaskState("x"), impl.TaskState("y")
    assert {x, y} <= set(instances)
    instances.discard(x)
    assert x not in instances and y in instances
    instances.add(x)
    assert x in instances
    instances.clear()
    assert len(instances) == 0 and x not in instances and list(instances) == []
    z = impl.TaskState("z")
    assert list(instances) == [z]
    del x, y  # untracked tasks die quietly
    gc.collect()
    assert len(instances) == 1


def test_tasks_alive_at_interpreter_exit():
    """Tasks still referenced (in cycles, too) when the interpreter exits: no crash."""
    import subprocess
    import sys

    code = (
        "import fastworker\n"
        "a = fastworker.TaskState('a'); b = fastworker.TaskState('b', dependencies={a})\n"
        "a.dependents.add(b); keep = [a, b]\n"
        "cycle = fastworker.TaskState('c'); cycle.dependents.add(cycle)\n"
        "print(len(fastworker.TaskState._instances))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


def test_instances_are_per_implementation():
    """Stock's leak check (utils_test.check_instances) must not see our tasks."""
    ts = FASTWORKER.TaskState("x")
    assert ts not in STOCK.TaskState._instances


def test_dependency_graph_links(impl):
    x = impl.TaskState("x", state="memory")
    y = impl.TaskState("y", dependencies={x}, waiting_for_data=set())
    x.dependents.add(y)
    assert y in x.dependents and x in y.dependencies
    y.dependencies.discard(x)
    assert not y.dependencies


# --- nbytes ----------------------------------------------------------------------------

def test_get_nbytes(impl):
    assert impl.TaskState("x", nbytes=123).get_nbytes() == 123
    assert impl.TaskState("x", nbytes=0).get_nbytes() == 0
    assert impl.TaskState("y").get_nbytes() == 1024  # default-data-size
    ts = impl.TaskState("z")
    ts.nbytes = 2**40
    assert ts.get_nbytes() == 2**40


def test_get_nbytes_follows_default_data_size(impl):
    """Both read the default through stock's process-wide cache."""
    _default_data_size.cache_clear()
    try:
        with dask.config.set({"distributed.scheduler.default-data-size": "5kB"}):
            assert impl.TaskState("x").get_nbytes() == 5000
    finally:
        _default_data_size.cache_clear()
    assert impl.TaskState("x").get_nbytes() == 1024


# --- dumps -----------------------------------------------------------------------------

def test_to_dict(impl):
    x = impl.TaskState("x", state="memory", done=True)
    y = impl.TaskState("y", priority=(0,), dependencies={x})
    x.dependents.add(y)
    assert recursive_to_dict([x, y]) == [
        {
            "key": "x",
            "run_id": -1,
            "state": "memory",
            "done": True,
            "dependents": ["<TaskState 'y' released>"],
        },
        {
            "key": "y",
            "run_id": -1,
            "state": "released",
            "dependencies": ["<TaskState 'x' memory>"],
            "priority": [0],
        },
    ]


def make_full(impl):
    """A task with every field set to a truthy value, with graph links."""
    dep = impl.TaskState("dep", state="memory")
    kwargs = {name: sample_value(impl, name) for name in FIELDS}
    kwargs.update(dependencies={dep}, waiting_for_data={dep})
    ts = impl.TaskState(("full", 1), **kwargs)
    dep.dependents.add(ts)
    return ts


def test_to_dict_every_field_equals_stock(fast, stock):
    fast_dict = recursive_to_dict(make_full(fast))
    stock_dict = recursive_to_dict(make_full(stock))
    assert fast_dict == stock_dict
    assert list(fast_dict) == list(stock_dict)  # same order as inspect.getmembers
    assert "prefix" not in fast_dict
    # type is callable, so neither dumps it; the rest all show
    assert set(fast_dict) == {"key", *FIELDS} - {"type"}


def test_to_dict_exclude(impl):
    ts = make_full(impl)
    out = recursive_to_dict(ts, exclude=("who_has", "priority"))
    assert "who_has" not in out and "priority" not in out and "key" in out


# --- pickling and copying -------------------------------------------------------------

SET_FIELDS = ("who_has", *SET_OF_TASKS)


def dump_sorted(ts) -> dict:
    """recursive_to_dict(ts) with set-valued fields sorted: a set rebuilt by pickling
    may iterate in another order (string hashes are salted per process)."""
    out = recursive_to_dict(ts)
    for name in SET_FIELDS:
        if name in out:
            out[name] = sorted(out[name])
    return out


def test_pickle_round_trip_every_field(impl):
    ts = make_full(impl)
    ts2 = pickle.loads(pickle.dumps(ts))
    assert type(ts2) is type(ts)
    assert ts2 is not ts
    assert dump_sorted(ts2) == dump_sorted(ts)
    assert repr(ts2) == repr(ts)
    assert ts2.prefix == ts.prefix
    (dep2,) = ts2.dependencies
    assert dep2.dependents == {ts2}  # cycle restored with identities
    assert ts2.waiting_for_data == {dep2}


def test_unpickled_tasks_are_not_tracked(impl):
    """As in stock, where __post_init__ does not run on unpickling."""
    ts = impl.TaskState("x")
    gc.collect()
    before = len(impl.TaskState._instances)
    ts2 = pickle.loads(pickle.dumps(ts))
    assert len(impl.TaskState._instances) == before
    assert ts2.key == "x"


def test_copy(impl):
    ts = make_full(impl)
    ts2 = copy.copy(ts)
    assert ts2 is not ts
    assert recursive_to_dict(ts2) == recursive_to_dict(ts)
    assert ts2.who_has is ts.who_has  # shallow
    ts3 = copy.deepcopy(ts)
    assert ts3.who_has == ts.who_has and ts3.who_has is not ts.who_has


# --- differential: random field values into both -------------------------------------

scalars = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5))
keys = st.one_of(
    st.text(min_size=1, max_size=12),
    st.integers(),
    st.tuples(st.text(min_size=1, max_size=6), st.integers(0, 9)),
)
priorities = st.one_of(
    st.none(),
    st.lists(st.one_of(st.integers(), st.floats(allow_nan=False)), min_size=1, max_size=4).map(tuple),
)
optional_state = st.one_of(st.none(), st.sampled_from(STATES))


@settings(max_examples=200, deadline=None)
@given(
    key=keys,
    state=st.sampled_from(STATES),
    previous=optional_state,
    next_=optional_state,
    priority=priorities,
    run_id=st.integers(-1, 2**40),
    nbytes=st.one_of(st.none(), st.integers(0, 2**50)),
    who_has=st.sets(st.text(max_size=8), max_size=3),
    done=st.booleans(),
    start_time=scalars,
    span_id=st.one_of(st.none(), st.text(max_size=8)),
    metadata=st.dictionaries(st.text(max_size=4), scalars, max_size=3),
)
def test_differential_random_fields(
    key, state, previous, next_, priority, run_id, nbytes, who_has, done, start_time,
    span_id, metadata,
):
    kwargs = dict(
        state=state, previous=previous, next=next_, priority=priority, run_id=run_id,
        nbytes=nbytes, who_has=who_has, done=done, start_time=start_time,
        span_id=span_id, metadata=metadata,
    )
    a, b = STOCK.TaskState(key, **kwargs), FASTWORKER.TaskState(key, **kwargs)
    assert repr(a) == repr(b)
    assert recursive_to_dict(a) == recursive_to_dict(b)
    assert a.get_nbytes() == b.get_nbytes()
    assert a.prefix == b.prefix
    b2 = pickle.loads(pickle.dumps(b))
    assert repr(b2) == repr(b)
    # a rebuilt set may iterate in another order: compare the dumps with sets sorted
    dump_b, dump_b2 = recursive_to_dict(b), recursive_to_dict(b2)
    for dump in (dump_b, dump_b2):
        if "who_has" in dump:
            dump["who_has"] = sorted(dump["who_has"])
    assert dump_b2 == dump_b


def test_serial_hash_for_differential_tests(fast):
    """use_serial_hash numbers tasks by creation: equal hashes across runs, same identity."""
    from fastworker.taskstate import use_serial_hash

    use_serial_hash(True, 10)
    try:
        a, b = fast.TaskState("a"), fast.TaskState("b")
        assert (hash(a), hash(b)) == (10, 11)
        assert a != b and len({a, b}) == 2
        c = fast.TaskState("a")
        assert hash(c) == 12 and c != a
    finally:
        use_serial_hash(False)
    assert hash(a) != 10  # back to address-based hashing
    assert a in {a} and b not in {a}


# The prefix is computed in C for the common key shapes (fastworker.taskstate._key_split)
# and by dask's key_split for the rest: both must give the same string for any key.
_PREFIX_KEYS = [
    "x", "x-1", "x-1-2-3", ("x-2", 1), "('x-2', 1)", "('x', 1)", "hello-world-1",
    b"hello-world-1", "ae05086432ca935f6eba409a8ecd4896",
    "<module.submodule.myclass object at 0xdaf372", None, "x-abcdefab", "_(x)", "", (),
    ("",), "inc-abcdefgh", "inc-Abcdefgh", "inc-gbcdefgh", "inc-abcdefg", "a" * 32,
    "a" * 31 + "-b", "b" * 16 + "-" + "c" * 15, "a" * 32 + "-x", "x--y", "x-y-", "é-x",
    "x-é", "x-y-z1-w", "Z-Q", ("getitem-ab12", 3, 4), 1, 1.5, ("x",), (("x", 1), 2),
    "finalize-hlgfinalizecompute-1234",
]


@pytest.mark.parametrize("key", _PREFIX_KEYS, ids=repr)
def test_prefix_fast_path_matches_key_split(key):
    from fastworker.taskstate import _key_split_for_tests

    try:
        expected = key_split(key)
    except Exception as e:  # e.g. an empty tuple: both raise the same
        with pytest.raises(type(e)):
            _key_split_for_tests(key)
        return
    got = _key_split_for_tests(key)
    assert got == expected
    assert type(got) is type(expected)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="abfgXZ019_-(),'<> .é", max_size=40)
       | st.tuples(st.text(alphabet="abfgX1-", max_size=20), st.integers()))
def test_prefix_fast_path_matches_key_split_random(key):
    from fastworker.taskstate import _key_split_for_tests

    assert _key_split_for_tests(key) == key_split(key)


# --- the collector sees every object field ------------------------------------------


def _object_fields():
    """(class name, field, declared type) of every object-holding field declared in
    fastworker/taskstate.pxd, read from the declarations themselves: a field added
    there and left out of the hand-written traversal fails the test below."""
    import os
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "fastworker", "taskstate.pxd")
    fields, cls = [], None
    with open(path) as f:
        for line in f:
            m = re.match(r"cdef class (\w+)", line)
            if m:
                cls = m.group(1)
                continue
            m = re.match(r"\s+cdef (?:public |readonly )?(object|set|dict|list|tuple) (\w+)\s*$", line)
            if m and cls and m.group(2) != "__weakref__":
                fields.append((cls, m.group(2), m.group(1)))
    return fields


OBJECT_FIELDS = _object_fields()


class _Holder:
    """A collectable object that refers back to the task holding it."""


class _StrHolder(str):
    pass


def test_object_fields_were_found():
    names = {name for _, name, _ in OBJECT_FIELDS}
    assert {"key", "_prefix", "_dependencies", "_who_has", "span_id", "duration"} <= names
    assert len(OBJECT_FIELDS) >= 24


@pytest.mark.parametrize("cls_name, field, kind", OBJECT_FIELDS,
                         ids=[f"{c}.{f}" for c, f, _ in OBJECT_FIELDS])
@pytest.mark.parametrize("subclass", [False, True], ids=["TaskState", "WithDuration"])
def test_a_cycle_through_any_field_is_collected(cls_name, field, kind, subclass):
    """A reference cycle through any object field of a task is found by the
    collector (the traversal visits every field that holds something)."""
    from fastworker.taskstate import TaskState, TaskStateWithDuration

    cls = TaskStateWithDuration if subclass else TaskState
    if cls_name == "TaskStateWithDuration" and not subclass:
        pytest.skip("a field of the subclass only")
    ts = cls("k-1")
    holder = _StrHolder("prefix") if field == "_prefix" else _Holder()
    holder.ts = ts
    # the holder itself, or inside the container the field's setter insists on
    for value in ([{holder}] if kind == "set" else [holder, [holder], {"k": holder}]):
        try:
            setattr(ts, field.lstrip("_"), value)
            break
        except TypeError:
            continue
    else:
        pytest.fail(f"{field}: no value accepted")
    alive = weakref.ref(holder)
    del ts, holder, value
    gc.collect()
    assert alive() is None, f"a cycle through {cls.__name__}.{field} was not collected"

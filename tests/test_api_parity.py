"""The compiled classes expose everything stock's do, as cytoolz checks it mirrors toolz.

When a new distributed release adds a public attribute or method, this fails at once.
"""
from __future__ import annotations

import dataclasses
import inspect

import pytest

import distributed.worker_state_machine as stock_wsm

import fastworker


def public_members(obj) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


# Private members that code outside the state machine relies on (utils_test, worker.py).
USED_PRIVATE_TASKSTATE = {"_instances", "_to_dict_no_nest"}


def test_taskstate_class_members():
    missing = (public_members(stock_wsm.TaskState) | USED_PRIVATE_TASKSTATE) - set(
        dir(fastworker.TaskState)
    )
    assert not missing, f"fastworker.TaskState lacks {sorted(missing)}"


def test_taskstate_instance_members():
    stock_ts, fast_ts = stock_wsm.TaskState("x"), fastworker.TaskState("x")
    missing = public_members(stock_ts) - set(dir(fast_ts))
    assert not missing, f"fastworker.TaskState instances lack {sorted(missing)}"


def test_taskstate_has_no_extra_public_members():
    extra = public_members(fastworker.TaskState("x")) - public_members(stock_wsm.TaskState("x"))
    assert extra == set()


@pytest.mark.parametrize("name", sorted(public_members(stock_wsm.TaskState)))
def test_taskstate_callables_stay_callables(name):
    stock_attr = getattr(stock_wsm.TaskState("x"), name)
    fast_attr = getattr(fastworker.TaskState("x"), name)
    assert callable(stock_attr) == callable(fast_attr)


#: A distinctive value per constructor parameter of TaskState, accepted by both.
CONSTRUCTOR_VALUES = {
    "key": "k-1",
    "run_id": 7,
    "run_spec": object(),
    "dependencies": {"dependencies"},
    "dependents": {"dependents"},
    "waiting_for_data": {"waiting_for_data"},
    "waiters": {"waiters"},
    "state": "memory",
    "previous": "flight",
    "next": "fetch",
    "priority": (1, 2),
    "who_has": {"tcp://w:1"},
    "coming_from": "tcp://w:2",
    "resource_restrictions": {"R": 1},
    "exception": object(),
    "traceback": object(),
    "exception_text": "et",
    "traceback_text": "tt",
    "type": int,
    "suspicious_count": 3,
    "startstops": [{"action": "compute"}],
    "start_time": 1.5,
    "stop_time": 2.5,
    "metadata": {"m": 1},
    "nbytes": 5,
    "annotations": {"a": 1},
    "span_id": "span",
    "done": True,
    # distributed 2024.11.0-2025.1.0 only
    "duration": 2.5,
}


def _assert_fields(ts, params):
    for name in params:
        value = CONSTRUCTOR_VALUES[name]
        got = getattr(ts, name)
        assert got == value, name
        if isinstance(value, (set, dict, list)) or type(value) is object:
            assert got is value, name  # held by reference, as a dataclass holds it


def test_taskstate_signature_matches_stock():
    """The signature fastworker.TaskState shows is stock's; the tests below check
    that it describes the compiled constructor, which has no introspectable
    signature of its own."""
    stock = inspect.signature(stock_wsm.TaskState).parameters
    fast = inspect.signature(fastworker.TaskState).parameters
    assert list(stock) == list(fast)
    for name, p in stock.items():
        assert (p.kind, p.default) == (fast[name].kind, fast[name].default), name


def test_taskstate_constructor_takes_every_parameter_by_keyword():
    params = inspect.signature(fastworker.TaskState).parameters
    assert set(params) <= set(CONSTRUCTOR_VALUES), "a new parameter needs a sample value"
    for name in params:
        if name == "key":
            continue
        ts = fastworker.TaskState("k-1", **{name: CONSTRUCTOR_VALUES[name]})
        _assert_fields(ts, [name])


def test_taskstate_constructor_takes_positional_parameters_in_signature_order():
    params = inspect.signature(fastworker.TaskState).parameters.values()
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    ts = fastworker.TaskState(*(CONSTRUCTOR_VALUES[name] for name in positional))
    _assert_fields(ts, positional)
    # one more positional argument than the signature allows is refused
    with pytest.raises(TypeError):
        fastworker.TaskState(*(CONSTRUCTOR_VALUES[name] for name in positional), None)


def test_taskstate_constructor_defaults_are_the_signature_defaults():
    ts = fastworker.TaskState("k-1")
    for p in inspect.signature(fastworker.TaskState).parameters.values():
        if p.default is inspect.Parameter.empty:
            continue
        default = p.default
        if p.name in stock_wsm.TaskState.__dataclass_fields__:
            f = stock_wsm.TaskState.__dataclass_fields__[p.name]
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
        assert getattr(ts, p.name) == default, p.name


# --- the dataclass face ------------------------------------------------------------------


@pytest.mark.parametrize("cls", [stock_wsm.TaskState, fastworker.TaskState])
def test_taskstate_is_a_dataclass(cls):
    ts = cls("x", nbytes=3)
    assert dataclasses.is_dataclass(cls) and dataclasses.is_dataclass(ts)
    stock_fields = dataclasses.fields(stock_wsm.TaskState)
    fields = dataclasses.fields(ts)
    assert [f.name for f in fields] == [f.name for f in stock_fields]
    for ours, theirs in zip(fields, stock_fields):
        assert (ours.init, ours.type, ours.repr, ours.compare) == (
            theirs.init, theirs.type, theirs.repr, theirs.compare
        ), ours.name
        assert ours.default == theirs.default, ours.name


@pytest.mark.parametrize("cls", [stock_wsm.TaskState, fastworker.TaskState])
def test_taskstate_built_from_its_dataclass_fields(cls):
    """As distributed's own tests build instances: every init field by keyword."""
    kwargs = {
        f.name: CONSTRUCTOR_VALUES[f.name] for f in dataclasses.fields(cls) if f.init
    }
    ts = cls(**kwargs)
    _assert_fields(ts, kwargs)
    assert not hasattr(ts, "__dict__")


@pytest.mark.parametrize("cls", [stock_wsm.TaskState, fastworker.TaskState])
def test_taskstate_asdict_and_replace(cls):
    ts = cls("x-1", nbytes=3, priority=(0, 1))
    d = dataclasses.asdict(ts)
    assert d["key"] == "x-1" and d["prefix"] == "x" and d["nbytes"] == 3
    assert d["state"] == "released" and d["dependencies"] == set()
    assert set(d) == {f.name for f in dataclasses.fields(ts)}
    other = dataclasses.replace(ts, nbytes=5)
    assert type(other) is cls and other is not ts
    assert (other.key, other.nbytes, other.priority) == ("x-1", 5, (0, 1))

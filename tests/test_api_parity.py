"""The compiled classes expose everything stock's do, as cytoolz checks it mirrors toolz.

When a new distributed release adds a public attribute or method, this fails at once.
"""
from __future__ import annotations

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


def test_taskstate_extra_public_members_are_known():
    """Our only addition to the public surface is ``duration``."""
    extra = public_members(fastworker.TaskState("x")) - public_members(stock_wsm.TaskState("x"))
    assert extra == {"duration"}


@pytest.mark.parametrize("name", sorted(public_members(stock_wsm.TaskState)))
def test_taskstate_callables_stay_callables(name):
    stock_attr = getattr(stock_wsm.TaskState("x"), name)
    fast_attr = getattr(fastworker.TaskState("x"), name)
    assert callable(stock_attr) == callable(fast_attr)


def test_taskstate_constructor_signature():
    import inspect

    stock = inspect.signature(stock_wsm.TaskState).parameters
    fast = dict(inspect.signature(fastworker.TaskState).parameters)
    assert fast.pop("duration").kind is inspect.Parameter.KEYWORD_ONLY  # our one extra
    assert list(stock) == list(fast)
    for name, p in stock.items():
        assert (p.kind, p.default) == (fast[name].kind, fast[name].default), name

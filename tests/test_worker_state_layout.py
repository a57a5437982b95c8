"""The compiled WorkerState is laid out like stock's module.

Names are derived from the installed stock distributed, so that a release that adds
a transition or an event handler fails here on day one:

- every ``(start, finish)`` pair of stock's ``WorkerState._TRANSITIONS_TABLE`` has
  an entry in fastworker's C transition table, and the entry is registered (in
  ``fastworker/wsm/transitions.pxi``) with a function of the same name as stock's
  method, defined in one of the ``wsm/*.pxi`` files;
- every event class registered on stock's ``_handle_event`` singledispatchmethod has
  a handler in fastworker's C event table, registered (``wsm/handlers.pxi``) with a
  function named as stock's handler.

It also checks that the shared empty results that most transitions and handlers
return cannot be written into, and stay empty whatever callers do with what they
get.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from distributed.worker_state_machine import (
    ComputeTaskEvent,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    PauseEvent,
    RescheduleEvent,
    UnpauseEvent,
)
from distributed.worker_state_machine import WorkerState as StockWorkerState

from fastworker import workerstate

WSM = Path(__file__).resolve().parent.parent / "fastworker" / "wsm"

#: registration lines: _on(TS_START, TS_FINISH, _transition_name)
ON_TRANSITION = re.compile(r"^_on\((TS_\w+), (TS_\w+), (\w+)\)$", re.M)
#: registration lines: _on_event(EventClass, _handle_name)
ON_EVENT = re.compile(r"^_on_event\((\w+), (\w+)\)$", re.M)
#: definitions of the C functions: cdef tuple name(WorkerState self, ...
DEFINED = re.compile(r"^cdef tuple (\w+)\(WorkerState self\b", re.M)


def _state(code_name: str) -> str:
    """TS_LONG_RUNNING -> 'long-running'."""
    return code_name.removeprefix("TS_").lower().replace("_", "-")


def _sources() -> str:
    return "\n".join(path.read_text() for path in sorted(WSM.glob("*.pxi")))


def _stock_handlers() -> dict[type, str]:
    registry = StockWorkerState.__dict__["_handle_event"].dispatcher.registry
    return {cls: func.__name__ for cls, func in registry.items() if cls is not object}


def test_sources_are_found():
    assert (WSM / "transitions.pxi").exists()
    assert ON_TRANSITION.findall((WSM / "transitions.pxi").read_text())
    assert ON_EVENT.findall((WSM / "handlers.pxi").read_text())


def test_transition_table_has_every_stock_pair():
    assert workerstate._transition_table() == set(StockWorkerState._TRANSITIONS_TABLE)


def test_transitions_are_named_as_stock_names_them():
    registered = {
        (_state(start), _state(finish)): name
        for start, finish, name in ON_TRANSITION.findall(
            (WSM / "transitions.pxi").read_text()
        )
    }
    defined = set(DEFINED.findall(_sources()))
    missing = []
    for pair, method in StockWorkerState._TRANSITIONS_TABLE.items():
        ours = registered.get(pair)
        if ours != method.__name__ or ours not in defined:
            missing.append((pair, method.__name__, ours))
    assert not missing, f"(pair, stock's name, ours): {missing}"
    # and nothing registered that stock does not have
    assert set(registered) == set(StockWorkerState._TRANSITIONS_TABLE)


def test_event_table_has_every_stock_handler():
    assert set(workerstate._handled_event_classes()) == set(_stock_handlers())


def test_handlers_are_named_as_stock_names_them():
    registered = dict(ON_EVENT.findall((WSM / "handlers.pxi").read_text()))
    defined = set(DEFINED.findall(_sources()))
    missing = [
        (cls.__name__, name, registered.get(cls.__name__))
        for cls, name in _stock_handlers().items()
        if registered.get(cls.__name__) != name or name not in defined
    ]
    assert not missing, f"(event, stock's name, ours): {missing}"
    assert len(registered) == len(_stock_handlers())


# --- shared empty results ---------------------------------------------------------------


def _assert_pristine():
    no_recs, no_instr, nothing = workerstate._shared_empties()
    assert len(no_recs) == 0 and len(no_instr) == 0
    assert nothing[0] is no_recs and nothing[1] is no_instr


def test_shared_empties_cannot_be_written_into():
    no_recs, no_instr, nothing = workerstate._shared_empties()
    with pytest.raises(TypeError):
        no_recs["x"] = "released"
    for write in ("update", "pop", "popitem", "setdefault", "clear"):
        assert not hasattr(no_recs, write)
    with pytest.raises((TypeError, AttributeError)):
        no_instr.append("x")
    with pytest.raises(TypeError):
        nothing[0] = {}
    _assert_pristine()


def _run_task(ws, key, stimulus_id):
    return ws.handle_stimulus(
        ComputeTaskEvent.dummy(key, stimulus_id=stimulus_id)
    )


def test_results_handed_out_are_fresh():
    """_transition and _handle_event give the caller objects it may write into,
    never the shared empties, even when there was nothing to do."""
    ws = workerstate.WorkerState(address="127.0.0.1:1", validate=True)
    _run_task(ws, "x", "s1")
    ts = ws.tasks["x"]
    assert ts.state == "executing"
    # nothing to do: executing -> executing
    recs, instructions = ws._transition(ts, "executing", stimulus_id="s2")
    assert recs == {} and instructions == []
    recs["intruder"] = "released"
    instructions.append("intruder")
    # executing -> released only cancels: recommends and instructs nothing
    recs, instructions = ws._transition(ts, "released", stimulus_id="s3")
    assert recs == {} and instructions == []
    recs[ts] = "forgotten"
    instructions.append("intruder")
    recs, instructions = ws._handle_event(PauseEvent(stimulus_id="s4"))
    assert recs == {} and instructions == []
    recs[ts] = "forgotten"
    _assert_pristine()
    assert ts.state == "cancelled"


def test_execute_exits_while_paused_do_not_write_into_shared_empties():
    """The trap of issue 12: the end of a run recommends the task's own next state
    into the recommendations of _ensure_computing, which has none while paused."""
    for exit_event in (
        lambda: ExecuteSuccessEvent.dummy("x", value=1, stimulus_id="done"),
        lambda: ExecuteFailureEvent.dummy("x", stimulus_id="done"),
        lambda: RescheduleEvent(key="x", stimulus_id="done"),
    ):
        ws = workerstate.WorkerState(address="127.0.0.1:1", validate=True)
        _run_task(ws, "x", "s1")
        ws.handle_stimulus(PauseEvent(stimulus_id="pause"))
        ws.handle_stimulus(exit_event())
        _assert_pristine()
        # the next transitions that recommend nothing still recommend nothing
        ws.handle_stimulus(UnpauseEvent(stimulus_id="unpause"))
        instructions = _run_task(ws, "y", "s2")
        assert [type(i).__name__ for i in instructions] == ["Execute"]
        ws.handle_stimulus(FreeKeysEvent(keys=["x", "y"], stimulus_id="free"))
        _assert_pristine()
        ws.validate_state()


def test_python_transitions_override_gets_a_dict_it_may_write_into():
    """A subclass whose _transitions adds to the recommendations it is given (stock
    allows it: they are its own) must not write into the shared empty."""

    class Greedy(workerstate.WorkerState):
        def _transitions(self, recommendations, *, stimulus_id):
            assert type(recommendations) is dict
            recommendations.setdefault("marker", None)
            recommendations.pop("marker")
            return super()._transitions(recommendations, stimulus_id=stimulus_id)

    ws = Greedy(address="127.0.0.1:1", validate=True)
    ws.handle_stimulus(PauseEvent(stimulus_id="pause"))  # handler recommends nothing
    _run_task(ws, "x", "s1")
    _assert_pristine()

"""Test harness: every behavioural test runs on stock distributed and on fastworker.

The ``impl`` fixture yields each implementation in turn (as uvloop's tests run each
case on asyncio and on uvloop), so one test body checks both.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import pytest

import distributed.worker_state_machine as stock_wsm

import fastworker


@dataclass(frozen=True)
class Implementation:
    """One worker state machine implementation under test."""

    name: str
    module: ModuleType
    TaskState: type
    #: None while the implementation has no compiled WorkerState yet.
    WorkerState: type | None
    #: Whether setting an unknown state name is refused (stock accepts any string).
    validates_state_names: bool

    def __repr__(self) -> str:
        return self.name


STOCK = Implementation(
    name="stock",
    module=stock_wsm,
    TaskState=stock_wsm.TaskState,
    WorkerState=stock_wsm.WorkerState,
    validates_state_names=False,
)
FASTWORKER = Implementation(
    name="fastworker",
    module=fastworker,
    TaskState=fastworker.TaskState,
    WorkerState=getattr(fastworker, "WorkerState", None),
    validates_state_names=True,
)
IMPLEMENTATIONS = (STOCK, FASTWORKER)


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda impl: impl.name)
def impl(request) -> Implementation:
    """Each implementation in turn: the test body runs once on stock, once on ours."""
    return request.param


@pytest.fixture
def stock() -> Implementation:
    return STOCK


@pytest.fixture
def fast() -> Implementation:
    return FASTWORKER


@pytest.fixture
def ws_impl(impl) -> Implementation:
    """Like ``impl``, for tests that need a WorkerState; skips an implementation
    that does not have one yet."""
    if impl.WorkerState is None:
        pytest.skip(f"{impl.name} has no WorkerState yet")
    return impl


@pytest.fixture
def ws(ws_impl):
    """A fresh WorkerState of each implementation, set up as distributed's own ``ws``
    fixture does (validate on, unbounded logs, transition_counter_max=50_000);
    ``validate_state()`` runs at teardown."""
    import dask

    with dask.config.set({"distributed.admin.low-level-log-length": None}):
        state = ws_impl.WorkerState(address="127.0.0.1:1", transition_counter_max=50_000)
    yield state
    if state.validate:
        state.validate_state()


@pytest.fixture
def make_ws(ws_impl):
    """Build WorkerStates of each implementation with custom constructor arguments,
    set up like ``ws`` (address 127.0.0.1:1 unless given); ``validate_state()`` runs at
    teardown on those still validating."""
    import dask

    states = []

    def make(**kwargs):
        kwargs.setdefault("address", "127.0.0.1:1")
        kwargs.setdefault("transition_counter_max", 50_000)
        with dask.config.set({"distributed.admin.low-level-log-length": None}):
            state = ws_impl.WorkerState(**kwargs)
        states.append(state)
        return state

    yield make
    for state in states:
        if state.validate:
            state.validate_state()


def strip(story):
    """Story / log entries without their trailing timestamp."""
    return [tuple(entry[:-1]) for entry in story]

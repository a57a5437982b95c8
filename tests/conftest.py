"""Test harness: every behavioural test runs on stock distributed and on fastworker.

The ``impl`` fixture yields each implementation in turn (as uvloop's tests run each
case on asyncio and on uvloop), so one test body checks both. The implementations
and the helpers that test modules import are in ``helpers.py``.
"""
from __future__ import annotations

import pytest

from helpers import FASTWORKER, IMPLEMENTATIONS, STOCK, Implementation


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
def ws(impl):
    """A fresh WorkerState of each implementation, set up as distributed's own ``ws``
    fixture does (validate on, unbounded logs, transition_counter_max=50_000);
    ``validate_state()`` runs at teardown."""
    import dask

    with dask.config.set({"distributed.admin.low-level-log-length": None}):
        state = impl.WorkerState(address="127.0.0.1:1", transition_counter_max=50_000)
    yield state
    if state.validate:
        state.validate_state()


@pytest.fixture
def make_ws(impl):
    """Build WorkerStates of each implementation with custom constructor arguments,
    set up like ``ws`` (address 127.0.0.1:1 unless given); ``validate_state()`` runs at
    teardown on those still validating."""
    import dask

    states = []

    def make(**kwargs):
        kwargs.setdefault("address", "127.0.0.1:1")
        kwargs.setdefault("transition_counter_max", 50_000)
        with dask.config.set({"distributed.admin.low-level-log-length": None}):
            state = impl.WorkerState(**kwargs)
        states.append(state)
        return state

    yield make
    for state in states:
        if state.validate:
            state.validate_state()

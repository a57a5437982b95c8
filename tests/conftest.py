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
    #: Whether setting an unknown state name is refused (stock accepts any string).
    validates_state_names: bool

    def __repr__(self) -> str:
        return self.name


STOCK = Implementation(
    name="stock",
    module=stock_wsm,
    TaskState=stock_wsm.TaskState,
    validates_state_names=False,
)
FASTWORKER = Implementation(
    name="fastworker",
    module=fastworker,
    TaskState=fastworker.TaskState,
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

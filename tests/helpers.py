"""What the tests share: the two implementations under test and small helpers.

Test modules import from here (``from helpers import ...``; pytest puts ``tests/`` on
``sys.path``, as does running a test file as a script); the fixtures are in
``conftest.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import distributed.worker_state_machine as stock_wsm

import fastworker


@dataclass(frozen=True)
class Implementation:
    """One worker state machine implementation under test."""

    name: str
    module: ModuleType
    TaskState: type
    WorkerState: type
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
    WorkerState=fastworker.WorkerState,
    validates_state_names=True,
)
IMPLEMENTATIONS = (STOCK, FASTWORKER)


def strip(story):
    """Story / log entries without their trailing timestamp."""
    return [tuple(entry[:-1]) for entry in story]


def long_running_msg(**kwargs):
    """The LongRunningMsg the installed release's stock sends: with ``run_id`` from
    distributed 2025.2.0 on, without it before."""
    if "run_id" not in stock_wsm.LongRunningMsg.__slots__:
        kwargs.pop("run_id")
    return stock_wsm.LongRunningMsg(**kwargs)


#: Fields of ComputeTaskEvent and TaskState that only some releases have, with the
#: value ComputeTaskEvent.dummy gives: ``duration`` until distributed 2025.1.0.
RELEASE_COMPUTE_FIELDS: dict = (
    {"duration": 1.0} if "duration" in stock_wsm.ComputeTaskEvent.__dataclass_fields__ else {}
)

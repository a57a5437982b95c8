"""Type stubs for the compiled fastworker.taskstate module."""
from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import Field
from enum import IntEnum
from typing import Any, ClassVar

from distributed.protocol.serialize import Serialize
from distributed.worker_state_machine import TaskStateState

TASK_STATES: tuple[TaskStateState, ...]

class TaskStateCode(IntEnum):
    TS_RELEASED: int
    TS_WAITING: int
    TS_READY: int
    TS_CONSTRAINED: int
    TS_EXECUTING: int
    TS_LONG_RUNNING: int
    TS_MEMORY: int
    TS_ERROR: int
    TS_FETCH: int
    TS_FLIGHT: int
    TS_MISSING: int
    TS_CANCELLED: int
    TS_RESUMED: int
    TS_RESCHEDULED: int
    TS_FORGOTTEN: int
    TS_NONE: int

class LiveTaskSet:
    def __len__(self) -> int: ...
    def __contains__(self, obj: object) -> bool: ...
    def __iter__(self) -> Iterator[TaskState]: ...
    def add(self, ts: TaskState) -> None: ...
    def discard(self, ts: TaskState) -> None: ...
    def remove(self, ts: TaskState) -> None: ...
    def clear(self) -> None: ...

class TaskState:
    _instances: LiveTaskSet
    # the face of a dataclass: stock's fields
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    __match_args__: ClassVar[tuple[str, ...]]
    key: Any
    prefix: str
    run_id: int
    run_spec: Any
    dependencies: set[TaskState]
    dependents: set[TaskState]
    waiting_for_data: set[TaskState]
    waiters: set[TaskState]
    state: TaskStateState
    previous: TaskStateState | None
    next: TaskStateState | None
    priority: tuple[int | float, ...] | None
    who_has: set[str]
    coming_from: str | None
    resource_restrictions: dict[str, float] | None
    exception: Serialize | None
    traceback: Serialize | None
    exception_text: str
    traceback_text: str
    type: type | None
    suspicious_count: int
    startstops: list[dict[str, Any]]
    start_time: float | None
    stop_time: float | None
    metadata: dict
    nbytes: int | None
    annotations: dict | None
    span_id: str | None
    done: bool
    def __init__(
        self,
        key: Any,
        run_id: int = -1,
        run_spec: Any = None,
        dependencies: set[TaskState] | None = ...,
        dependents: set[TaskState] | None = ...,
        waiting_for_data: set[TaskState] | None = ...,
        waiters: set[TaskState] | None = ...,
        state: TaskStateState = "released",
        previous: TaskStateState | None = None,
        next: TaskStateState | None = None,
        priority: tuple[int | float, ...] | None = None,
        who_has: set[str] | None = ...,
        coming_from: str | None = None,
        resource_restrictions: dict[str, float] | None = ...,
        exception: Serialize | None = None,
        traceback: Serialize | None = None,
        exception_text: str = "",
        traceback_text: str = "",
        type: type | None = None,
        suspicious_count: int = 0,
        startstops: list[dict[str, Any]] | None = ...,
        start_time: float | None = None,
        stop_time: float | None = None,
        metadata: dict | None = ...,
        nbytes: int | None = None,
        annotations: dict | None = None,
        span_id: str | None = None,
        done: bool = False,
    ) -> None: ...
    def get_nbytes(self) -> int: ...
    def _to_dict_no_nest(self, *, exclude: Container[str] = ()) -> dict: ...

class TaskStateWithDuration(TaskState):
    """TaskState of distributed 2024.11.0-2025.1.0: ``duration`` after ``next``."""

    duration: float | None

#: The TaskState class of the installed distributed release (fastworker.TaskState).
RELEASE_TASKSTATE: type[TaskState]

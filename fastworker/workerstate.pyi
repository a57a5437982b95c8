"""Type stubs for the compiled fastworker.workerstate module."""
from __future__ import annotations

import random
from collections import Counter, defaultdict, deque
from collections.abc import Container, Mapping, MutableMapping
from typing import Any, Literal

from distributed.collections import HeapSet
from distributed.worker_state_machine import Instruction, StateMachineEvent

from fastworker.taskstate import TaskState

class TaskCounter:
    def __init__(self) -> None: ...
    def current_count(self, by_prefix: bool = True) -> Counter: ...
    def cumulative_elapsed(self, by_prefix: bool = True) -> Mapping[Any, float]: ...
    def new_task(self, ts: TaskState) -> None: ...
    def transitions(self, prev_states: dict[TaskState, str]) -> None: ...

class WorkerState:
    address: str
    nthreads: int
    data: MutableMapping[Any, object]
    threads: dict[Any, int]
    plugins: dict[str, Any]
    total_resources: dict[str, float]
    available_resources: dict[str, float]
    validate: bool
    tasks: dict[Any, TaskState]
    running: bool
    waiting: set[TaskState]
    has_what: defaultdict[str, set[Any]]
    data_needed: defaultdict[str, HeapSet[TaskState]]
    fetch_count: int
    in_flight_workers: dict[str, set[Any]]
    busy_workers: set[str]
    transfer_incoming_count_limit: int
    transfer_incoming_count_total: int
    transfer_incoming_bytes_throttle_threshold: int
    transfer_incoming_bytes: int
    missing_dep_flight: set[TaskState]
    generation: int
    ready: HeapSet[TaskState]
    constrained: HeapSet[TaskState]
    executing: set[TaskState]
    in_flight_tasks: set[TaskState]
    nbytes: int
    executed_count: int
    long_running: set[TaskState]
    transfer_message_bytes_limit: float
    log: deque[tuple]
    stimulus_log: deque[StateMachineEvent]
    task_counter: TaskCounter
    transition_counter: int
    transition_counter_max: int | Literal[False]
    transfer_incoming_bytes_limit: float
    actors: dict[Any, object]
    rng: random.Random
    def __init__(
        self,
        *,
        nthreads: int = 1,
        address: str | None = None,
        data: MutableMapping[Any, object] | None = None,
        threads: dict[Any, int] | None = None,
        plugins: dict[str, Any] | None = None,
        resources: Mapping[str, float] | None = None,
        transfer_incoming_count_limit: int = 9999,
        validate: bool = True,
        transition_counter_max: int | Literal[False] = False,
        transfer_incoming_bytes_limit: float = ...,
        transfer_message_bytes_limit: float = ...,
    ) -> None: ...
    @property
    def executing_count(self) -> int: ...
    @property
    def all_running_tasks(self) -> set[TaskState]: ...
    @property
    def in_flight_tasks_count(self) -> int: ...
    @property
    def transfer_incoming_count(self) -> int: ...
    def handle_stimulus(self, *stims: StateMachineEvent) -> list[Instruction]: ...
    def story(self, *keys_or_tasks_or_stimuli: Any) -> list[tuple]: ...
    def stimulus_story(self, *keys_or_tasks: Any) -> list[StateMachineEvent]: ...
    def validate_task(self, ts: TaskState) -> None: ...
    def validate_state(self) -> None: ...
    def _to_dict(self, *, exclude: Container[str] = ()) -> dict: ...
    def _handle_event(self, ev: StateMachineEvent) -> tuple[dict, list[Instruction]]: ...
    def _transition(
        self, ts: TaskState, finish: str | tuple, *args: Any, stimulus_id: str
    ) -> tuple[dict, list[Instruction]]: ...
    def _transitions(self, recommendations: dict, *, stimulus_id: str) -> list[Instruction]: ...

# The worker's data in distributed's SpillBuffer (wsm/spill.pxi): each is the plain
# mapping operation, with a fast path for distributed's own SpillBuffer.
def data_get(data: MutableMapping[Any, object], key: Any) -> object: ...
def data_set(data: MutableMapping[Any, object], key: Any, value: object) -> None: ...
def data_discard(data: MutableMapping[Any, object], key: Any) -> None: ...
def spill_fast_path(data: MutableMapping[Any, object]) -> bool: ...

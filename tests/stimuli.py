"""Random but plausible stimulus streams for a worker state machine, and a recorder.

This module is the backbone of ``test_differential.py``. It has three parts.

**The driver** (:class:`StimulusDriver`) builds a stream one stimulus at a time. It
plays the scheduler and the Worker around a *reference* ``WorkerState`` (stock
distributed's), and only sends what they could plausibly send next given that
machine's current state and the instructions it returned so far:

* ``ExecuteSuccessEvent`` / ``ExecuteFailureEvent`` / ``RescheduleEvent`` /
  ``SecedeEvent`` only for a key whose ``Execute`` is still outstanding;
* ``GatherDepSuccessEvent`` (with a random subset of the requested keys in
  ``data``), ``GatherDepBusyEvent``, ``GatherDepNetworkFailureEvent``,
  ``GatherDepFailureEvent`` only to answer an outstanding ``GatherDep``, with its
  ``total_nbytes``;
* ``RetryBusyWorkerEvent`` after a ``RetryBusyWorkerLater``; ``RefreshWhoHasEvent``
  mostly to answer a ``RequestRefreshWhoHasMsg``;
* ``ComputeTaskEvent`` for new keys (random dependencies on earlier keys, a fixed
  graph per key, ``who_has`` from a pool of peers on this and other hosts, mixed
  int/float priorities of varying length, resource restrictions on workers that have
  resources, actors, annotations) and again for known keys in any state (recompute,
  retry, duplicate); a dependency is only ever one the scheduler could hold in
  memory somewhere (never a task this worker is computing, nor an erred one);
* ``FreeKeysEvent``, ``StealRequestEvent``, ``CancelComputeEvent``,
  ``RemoveReplicasEvent`` only where the scheduler would send them (a task is freed
  together with the dependents that still need it; a cancelled task has no
  dependents); ``AcquireReplicasEvent``, ``RemoveWorkerEvent``, ``PauseEvent``,
  ``UnpauseEvent``, ``FindMissingEvent``, ``UpdateDataEvent`` (scatter);
* after a ``TaskErredMsg``, mostly at once, the ``FreeKeysEvent`` of the erred
  task's dependents that the scheduler would send.

Stock is not always valid between stimuli even so: a dependency erred by
``GatherDepFailureEvent`` while a dependent waits for it fails ``validate_state()``
until the dependent is freed. The outcome of ``validate_state()`` is compared, and
the stream goes on. Two plausible-looking inputs on which stock itself raises are
avoided: compute-task for a task in ``fetch`` or ``error`` whose dependencies are
not all in memory here (RecommendationsConflict on the way fetch -> released ->
waiting), and a task's result refused by ``data`` when the task is ``resumed``
(an assertion in stock's resumed -> error transition).

Each stream also draws a worker configuration (:class:`StreamConfig`): thread count,
resources, transfer limits rebound on the live state as distributed's tests do, a
``data`` mapping that may refuse some values (as a SpillBuffer failing to serialise
does), sometimes a low ``transition_counter_max``.

Every decision is taken through a *chooser*: :class:`HypothesisChooser` (draws from
hypothesis, which can then shrink a failing stream; see :func:`stimulus_streams`) or
:class:`RandomChooser` (a seeded ``random.Random``; fast, for long runs and for
coverage counts).

**The recorder** (:func:`replay`, :class:`Runner`) feeds a stream to any
``WorkerState`` class (``validate=True``, unbounded logs) and records after every
stimulus: the returned instructions (class name and dataclass fields, TaskStates
replaced by keys, time-dependent ``disk-write`` startstops dropped), every task's
fields (key, state, previous, next, priority, who_has, dependencies, dependents,
waiting_for_data, waiters, run_id, done, coming_from, nbytes, resources, exception
and type info...) in ``tasks`` order, the new ``log`` entries (every stimulus) and
``story()`` of the stimulus's keys and id (every ``STORY_EVERY`` stimuli: it scans
the whole log), timestamps stripped, the new ``stimulus_log`` entries (loggable form,
without ``handled``), the calls seen by a plugin's ``transition`` hook, the counters
(``executing_count``, ``in_flight_tasks_count``, ``transfer_incoming_bytes``,
``transition_counter``, ``nbytes``, ...), the ``ready``/``constrained`` heaps in
order, ``data_needed``, ``has_what``, ``available_resources``, ``data``, the state of
the tie-breaking ``rng``, and the outcome of ``validate_state()``. The runner plays
the Worker's part for ``threads``: it records a thread id for every ``Execute``.

**Deterministic hashing.** Sets of TaskStates iterate in hash order, and stock hashes
a TaskState by ``id()``, so two runs of the same stream (even two stock runs) would
iterate, hence recommend, log and emit, in different orders.
:func:`deterministic_hashing` numbers tasks by creation, on stock's TaskState (a
patch, restored on exit) and on fastworker's (``use_serial_hash``), from 0 at the
start of every run. Nothing else is patched: there is no clock to fake, timestamps
are stripped from what is compared, and the ``Random(0)`` that stock uses to break
ties among peers is per instance.
"""
from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import itertools
import math
import pickle
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import dask
import distributed.worker_state_machine as wsm
from dask._task_spec import Task
from distributed.protocol.serialize import Serialize
from distributed.worker_state_machine import (
    AcquireReplicasEvent,
    CancelComputeEvent,
    ComputeTaskEvent,
    Execute,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FindMissingEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepBusyEvent,
    GatherDepFailureEvent,
    GatherDepNetworkFailureEvent,
    GatherDepSuccessEvent,
    PauseEvent,
    RefreshWhoHasEvent,
    RemoveReplicasEvent,
    RemoveWorkerEvent,
    RequestRefreshWhoHasMsg,
    RescheduleEvent,
    RetryBusyWorkerEvent,
    RetryBusyWorkerLater,
    SecedeEvent,
    StateMachineEvent,
    StealRequestEvent,
    TaskErredMsg,
    UnpauseEvent,
    UpdateDataEvent,
)

__all__ = [
    "ADDRESS",
    "ALL_STATES",
    "HANDLED_EVENTS",
    "PEERS",
    "GeneratedStream",
    "HypothesisChooser",
    "LocalValue",
    "Poison",
    "PoisonDict",
    "RandomChooser",
    "Runner",
    "StimulusDriver",
    "StreamConfig",
    "deterministic_hashing",
    "first_divergence",
    "format_stream",
    "generate",
    "minimise",
    "normalise",
    "replay",
    "stimulus_streams",
]

#: This worker's address.
ADDRESS = "127.0.0.1:1"
#: Peer workers: three on this worker's host, three elsewhere (gather order prefers
#: local peers).
PEERS = (
    "127.0.0.1:2",
    "127.0.0.1:3",
    "127.0.0.1:4",
    "10.0.0.1:1",
    "10.0.0.2:1",
    "10.0.0.3:1",
)
#: Every value of stock's ``TaskStateState``. ``rescheduled`` is only ever a
#: transition target (the task ends up released), ``forgotten`` the state of a task
#: dropped from ``tasks``.
ALL_STATES = frozenset(wsm.TaskStateState.__args__)  # type: ignore[attr-defined]
#: Every StateMachineEvent subclass that stock's ``_handle_event`` dispatches on.
HANDLED_EVENTS = frozenset(
    cls
    for cls in wsm.WorkerState.__dict__["_handle_event"].dispatcher.registry
    if cls is not object and cls is not StateMachineEvent
)

# States, seen from the scheduler, of tasks that this worker is computing (or about
# to): their dependents on this worker still need them, and they are not in memory
# anywhere, so nothing can depend on them in a new compute-task.
_PROCESSING = frozenset({"waiting", "ready", "constrained", "executing", "long-running"})
# A dependent in one of these states still needs its dependencies on this worker.
_NEEDS_DEPENDENCIES = _PROCESSING | {"resumed"}
# A task in one of these states may be a dependency of a new compute-task: the
# scheduler holds it in memory on this worker or on a peer.
_DEPENDENCY_OK = frozenset(
    {"released", "fetch", "flight", "missing", "memory", "cancelled", "resumed"}
)
# Sizes drawn for tasks: below, around and above the transfer limits of StreamConfig.
_SIZES = (1, 8, 40, 100, 300, 1000, 4096, 2**20)


# ------------------------------------------------------------------------------
# Choosers: every random decision of the driver goes through one of these
# ------------------------------------------------------------------------------


class _Chooser:
    def integer(self, lo: int, hi: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def chance(self, percent: int) -> bool:
        """True with the given probability (in percent). Shrinks towards False."""
        return self.integer(0, 99) >= 100 - percent

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.integer(0, len(seq) - 1)]

    def weighted(self, options: Sequence[tuple[Any, int]]) -> Any:
        cumulative = list(itertools.accumulate(w for _, w in options))
        i = bisect.bisect_right(cumulative, self.integer(0, cumulative[-1] - 1))
        return options[i][0]

    def sample(self, seq: Sequence[Any], k: int) -> list:
        """k distinct elements, in drawn order."""
        pool = list(seq)
        return [pool.pop(self.integer(0, len(pool) - 1)) for _ in range(min(k, len(pool)))]


class RandomChooser(_Chooser):
    """Decisions from a seeded ``random.Random``: the same seed, the same stream."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class HypothesisChooser(_Chooser):
    """Decisions drawn from hypothesis (``draw`` of ``st.composite`` or
    ``data.draw``), so that hypothesis can shrink a failing stream."""

    def __init__(self, draw: Callable[[Any], Any]):
        from hypothesis import strategies as st

        self._draw = draw
        self._integers = st.integers

    def integer(self, lo: int, hi: int) -> int:
        if lo == hi:
            return lo
        return self._draw(self._integers(lo, hi))


# ------------------------------------------------------------------------------
# Values that travel through the streams
# ------------------------------------------------------------------------------


def _make_local_type() -> type:
    class LocalValue:
        """A task output whose type cannot be pickled (it is local to a function):
        ``TaskFinishedMsg.type`` then falls back to the pickled type name."""

        __slots__ = ("n",)

        def __init__(self, n: int):
            self.n = n

        def __eq__(self, other: object) -> bool:
            return type(other) is type(self) and other.n == self.n  # type: ignore[attr-defined]

        def __hash__(self) -> int:
            return hash(("LocalValue", self.n))

        def __repr__(self) -> str:
            return f"LocalValue({self.n})"

    return LocalValue


LocalValue = _make_local_type()


class Poison:
    """A value that :class:`PoisonDict` refuses to store."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n

    def __eq__(self, other: object) -> bool:
        return type(other) is Poison and other.n == self.n

    def __hash__(self) -> int:
        return hash(("Poison", self.n))

    def __repr__(self) -> str:
        return f"Poison({self.n})"


class PoisonDict(dict):
    """``WorkerState.data`` that raises on storing a :class:`Poison`, as a SpillBuffer
    does when a value larger than the spill target fails to serialise."""

    def __setitem__(self, key: Any, value: Any) -> None:
        if type(value) is Poison:
            raise ValueError(f"cannot store {value!r}")
        super().__setitem__(key, value)


def _serialized_error(text: str) -> Serialize:
    return Serialize(RuntimeError(text))


# ------------------------------------------------------------------------------
# Worker configuration, drawn once per stream
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Everything about the worker that a stream runs on."""

    nthreads: int = 1
    resources: tuple[tuple[str, float], ...] = ()
    transfer_incoming_count_limit: int = 9999
    transfer_incoming_bytes_limit: float = math.inf
    transfer_message_bytes_limit: float = math.inf
    #: Rebound on the live state, as ``freeze_data_fetching`` and tests do.
    transfer_incoming_bytes_throttle_threshold: int = int(10e6)
    transition_counter_max: int | bool = False
    #: ``data`` is a :class:`PoisonDict` (else a plain dict); Poison values are sent.
    poison: bool = False

    @classmethod
    def draw(cls, c: _Chooser) -> StreamConfig:
        return cls(
            nthreads=c.choice((1, 1, 2, 3)),
            resources=c.choice(((), (("R", 2),), (("R", 2),), (("R", 2), ("S", 1.5)))),
            transfer_incoming_count_limit=c.choice((9999, 9999, 1, 2, 4)),
            transfer_incoming_bytes_limit=c.choice((math.inf, math.inf, 250, 5000)),
            transfer_message_bytes_limit=c.choice((math.inf, math.inf, 60, 1000)),
            transfer_incoming_bytes_throttle_threshold=c.choice((int(10e6), int(10e6), 0, 120)),
            transition_counter_max=c.integer(40, 400) if c.chance(6) else False,
            poison=c.chance(30),
        )

    def build(self, ws_cls: type, plugin: Any = None) -> Any:
        """A WorkerState of class ``ws_cls`` in this configuration, with validation on
        and unbounded logs (as distributed's ``ws`` fixture builds it)."""
        with dask.config.set({"distributed.admin.low-level-log-length": None}):
            ws = ws_cls(
                nthreads=self.nthreads,
                address=ADDRESS,
                data=PoisonDict() if self.poison else {},
                threads={},
                plugins={} if plugin is None else {"recorder": plugin},
                resources=dict(self.resources),
                transfer_incoming_count_limit=self.transfer_incoming_count_limit,
                validate=True,
                transition_counter_max=self.transition_counter_max,
                transfer_incoming_bytes_limit=self.transfer_incoming_bytes_limit,
                transfer_message_bytes_limit=self.transfer_message_bytes_limit,
            )
        ws.transfer_incoming_bytes_throttle_threshold = (
            self.transfer_incoming_bytes_throttle_threshold
        )
        return ws


# ------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------


def _key_order(key: Any) -> tuple[str, str]:
    return (type(key).__name__, repr(key))


class StimulusDriver:
    """Builds the next plausible stimulus from the reference WorkerState ``ws``.

    Call :meth:`next_event`, feed the event to ``ws``, then :meth:`observe` the
    instructions it returned.
    """

    def __init__(self, chooser: _Chooser, ws: Any, config: StreamConfig):
        self.c = chooser
        self.ws = ws
        self.config = config
        #: Every key the scheduler ever knew of, in creation order, with its
        #: dependencies (a DAG: only on earlier keys) and its size.
        self.universe: list[Any] = []
        self.graph: dict[Any, tuple] = {}
        self.sizes: dict[Any, int] = {}
        #: keys of actors: only ever computed, never a dependency, fetched or scattered
        self.actors: set = set()
        self._names = itertools.count()
        self._run_ids = itertools.count(1)
        self._values = itertools.count()
        #: run_id of each outstanding Execute, as Worker.execute reads it
        self.exec_run_id: dict[Any, int] = {}
        #: outstanding GatherDep instructions, by peer
        self.gathers: dict[str, GatherDep] = {}
        #: peers with an outstanding RetryBusyWorkerLater
        self.busy: list[str] = []
        #: keys of RequestRefreshWhoHasMsg not answered yet
        self.refresh_wanted: list[Any] = []
        #: free-keys the scheduler owes us: the dependents of a task that erred
        self.owed_free_keys: list[list] = []
        resources = dict(config.resources)
        self.restrictions: list[dict] = [{}]
        if "R" in resources:
            self.restrictions += [{"R": 1}, {"R": 2}, {"R": 0.5}]
        if "S" in resources:
            self.restrictions += [{"S": 1}, {"R": 1, "S": 0.5}]

    # --- helpers ----------------------------------------------------------------

    def _state(self, key: Any) -> str | None:
        ts = self.ws.tasks.get(key)
        return None if ts is None else ts.state

    def _new_key(self, prefix: str, deps: tuple = ()) -> Any:
        n = next(self._names)
        key = (prefix, n) if self.c.chance(10) else f"{prefix}-{n}"
        self.universe.append(key)
        self.graph[key] = deps
        self.sizes[key] = self.c.choice(_SIZES)
        return key

    def _running_keys(self) -> list:
        return sorted(
            (ts.key for ts in self.ws.executing | self.ws.long_running), key=_key_order
        )

    def _running_cancelled(self) -> bool:
        """Is a cancelled or resumed task still running? (secede() on it is rare)"""
        return any(
            ts.state in ("cancelled", "resumed") for ts in self.ws.executing | self.ws.long_running
        )

    def _dependency_ok(self, key: Any) -> bool:
        if key in self.actors:
            return False
        state = self._state(key)
        return state is None or state in _DEPENDENCY_OK

    def _needed_here(self, key: Any) -> bool:
        """Does a dependent on this worker still need this task?"""
        ts = self.ws.tasks.get(key)
        return ts is not None and any(d.state in _NEEDS_DEPENDENCIES for d in ts.dependents)

    def _peers(self, lo: int = 1, hi: int = 3) -> list[str]:
        return self.c.sample(PEERS, self.c.integer(lo, hi))

    def _value(self, key: Any, *, may_poison: bool) -> Any:
        n = next(self._values)
        if may_poison and self.config.poison and self.c.chance(12):
            return Poison(n)
        kind = self.c.integer(0, 9)
        if kind == 0:
            return LocalValue(n)
        if kind <= 2:
            return f"value-{n}"
        return n

    def _priority(self) -> tuple:
        elements = (-2, -1, 0, 0, 1, 3, -0.5, 0.0, 1.5, 2.5)
        return tuple(self.c.choice(elements) for _ in range(self.c.integer(1, 3)))

    def _unknown_key(self) -> Any:
        forgotten = [k for k in self.universe if k not in self.ws.tasks]
        if forgotten and self.c.chance(70):
            return self.c.choice(forgotten)
        return f"never-{next(self._names)}"

    # --- the stream -------------------------------------------------------------

    def next_event(self, step: int) -> StateMachineEvent:
        ws = self.ws
        running = bool(ws.executing or ws.long_running)
        options = [
            ("compute_new", 18),
            ("compute_known", 6 if self.universe else 0),
            ("execute_done", 24 if running else 0),
            ("secede", (4 + 6 * self._running_cancelled()) if running else 0),
            ("gather_done", 24 if self.gathers else 0),
            ("retry_busy", 6 if self.busy else 0),
            ("free_keys", 7 if ws.tasks else 0),
            ("cancel_compute", 3 if ws.tasks else 0),
            ("steal_request", 4 if ws.tasks else 0),
            ("acquire_replicas", 5),
            ("remove_replicas", 3 if ws.tasks else 0),
            ("remove_worker", 2),
            ("pause", 3 if ws.running else 1),
            ("unpause", 1 if ws.running else 7),
            ("find_missing", 4 if ws.missing_dep_flight else 1),
            ("refresh_who_has", 3 + (8 if self.refresh_wanted else 0)),
            ("update_data", 3),
        ]
        options = [o for o in options if o[1]]
        if self.owed_free_keys and self.c.chance(85):
            # The scheduler erred the dependents of an erred task; it releases them.
            return FreeKeysEvent(keys=self.owed_free_keys.pop(0), stimulus_id=f"free_erred-{step}")
        for _ in range(5):
            kind = self.c.weighted(options)
            ev = getattr(self, f"_make_{kind}")(f"{kind}-{step}")
            if ev is not None:
                return ev
        return FindMissingEvent(stimulus_id=f"find_missing-{step}")

    def observe(self, instructions: Sequence[Any]) -> None:
        """Note what the worker asked for (to answer it later)."""
        for inst in instructions:
            if isinstance(inst, Execute):
                self.exec_run_id[inst.key] = self.ws.tasks[inst.key].run_id
            elif isinstance(inst, GatherDep):
                self.gathers[inst.worker] = inst
            elif isinstance(inst, RetryBusyWorkerLater):
                if inst.worker not in self.busy:
                    self.busy.append(inst.worker)
            elif isinstance(inst, TaskErredMsg):
                dependents = self._dependents_closure(inst.key)[1:]
                if dependents:
                    self.owed_free_keys.append(dependents)
            elif isinstance(inst, RequestRefreshWhoHasMsg):
                for key in inst.keys:
                    if key not in self.refresh_wanted:
                        self.refresh_wanted.append(key)

    # --- scheduler messages -------------------------------------------------------

    def _compute_event(self, key: Any, sid: str) -> ComputeTaskEvent:
        c = self.c
        who_has: dict[Any, list[str]] = {}
        nbytes: dict[Any, int] = {}
        for dep in self.graph[key]:
            if self._state(dep) == "memory":
                workers = [ADDRESS] + self._peers(0, 2)
            elif self._state(dep) in (None, "released") and c.chance(3):
                # stale: the scheduler still thinks we hold it (we just released it)
                workers = [ADDRESS]
            else:
                workers = self._peers()
                if c.chance(4):
                    workers.append(ADDRESS)
            who_has[dep] = workers
            nbytes[dep] = self.sizes[dep]
        return ComputeTaskEvent(
            key=key,
            run_id=next(self._run_ids),
            who_has=who_has,
            nbytes=nbytes,
            priority=self._priority(),
            run_spec=ComputeTaskEvent.dummy_runspec(key),
            resource_restrictions=dict(c.choice(self.restrictions)) if c.chance(30) else {},
            actor=key in self.actors,
            annotations={"retries": 1} if c.chance(10) else {},
            span_id=c.choice((None, None, "span-a", "span-b")),
            stimulus_id=sid,
            **self._release_fields(key),
        )

    @staticmethod
    def _release_fields(key: Any) -> dict:
        """Fields of ComputeTaskEvent that only some releases have: ``duration``
        until 2025.1.0 (drawn from the key, so that every release sees the same
        stream of random choices)."""
        if "duration" in ComputeTaskEvent.__dataclass_fields__:
            return {"duration": 0.5 + len(str(key)) % 3}
        return {}

    def _make_compute_new(self, sid: str) -> StateMachineEvent:
        c = self.c
        candidates = [k for k in self.universe if self._dependency_ok(k)]
        deps = c.sample(candidates, c.integer(0, min(3, len(candidates))))
        if c.chance(20):  # a dependency computed elsewhere, never seen here before
            deps.append(self._new_key("r", ()))
        key = self._new_key(c.choice(("x", "x", "y", "z")), tuple(deps))
        if c.chance(5):
            self.actors.add(key)
        return self._compute_event(key, sid)

    def _make_compute_known(self, sid: str) -> StateMachineEvent | None:
        # Again for a known key, whatever its state here (recompute after a lost
        # replica, retry after an error, duplicate message, back after a steal).
        candidates = [k for k in self.universe if self._may_compute_again(k)]
        if not candidates:
            return None
        # Favour the interesting comebacks: tasks cancelled while running or in
        # flight (-> resumed, or back to executing/flight), lost dependencies.
        comebacks = [
            k for k in candidates if self._state(k) in ("cancelled", "resumed", "missing")
        ]
        if comebacks and self.c.chance(40):
            candidates = comebacks
        return self._compute_event(self.c.choice(candidates), sid)

    def _may_compute_again(self, key: Any) -> bool:
        if not all(self._dependency_ok(d) for d in self.graph[key]):
            return False
        ts = self.ws.tasks.get(key)
        if ts is not None and ts.state in ("fetch", "error"):
            # Stock goes fetch/error -> released -> waiting, which recommends
            # "released", then "fetch", for a dependency that is not in memory:
            # RecommendationsConflict. Only send it when every dependency is here.
            deps = set(self.graph[key]) | {d.key for d in ts.dependencies}
            return all(self._state(d) == "memory" for d in deps)
        return True

    def _dependents_closure(self, key: Any) -> list:
        out, todo = [key], [key]
        while todo:
            ts = self.ws.tasks.get(todo.pop())
            if ts is None:
                continue
            for d in sorted((d.key for d in ts.dependents), key=_key_order):
                if d not in out:
                    out.append(d)
                    todo.append(d)
        return out

    def _make_free_keys(self, sid: str) -> StateMachineEvent:
        c = self.c
        key = c.choice(list(self.ws.tasks))
        if not self._needed_here(key) and c.chance(50):
            keys = [key]
        else:  # released together with every dependent that still needs it
            keys = self._dependents_closure(key)
            if c.chance(30):
                keys.reverse()
        if c.chance(15):
            keys.append(self._unknown_key())
        return FreeKeysEvent(keys=keys, stimulus_id=sid)

    def _make_cancel_compute(self, sid: str) -> StateMachineEvent | None:
        # The scheduler cancels a task that no other task depends on.
        candidates = [k for k, ts in self.ws.tasks.items() if not ts.dependents]
        if not candidates or self.c.chance(10):
            return CancelComputeEvent(key=self._unknown_key(), stimulus_id=sid)
        pending = [k for k in candidates if self._state(k) in ("waiting", "ready", "constrained")]
        if pending and self.c.chance(70):
            candidates = pending
        return CancelComputeEvent(key=self.c.choice(candidates), stimulus_id=sid)

    def _make_steal_request(self, sid: str) -> StateMachineEvent:
        candidates = [
            k
            for k, ts in self.ws.tasks.items()
            if ts.state not in ("waiting", "ready", "constrained") or not self._needed_here(k)
        ]
        if not candidates or self.c.chance(8):
            return StealRequestEvent(key=self._unknown_key(), stimulus_id=sid)
        return StealRequestEvent(key=self.c.choice(candidates), stimulus_id=sid)

    def _make_acquire_replicas(self, sid: str) -> StateMachineEvent:
        c = self.c
        keys: list = []
        for _ in range(c.integer(1, 3)):
            known = [
                k for k in self.universe if self._dependency_ok(k) and k not in keys
            ]
            if known and c.chance(60):
                keys.append(c.choice(known))
            else:
                keys.append(self._new_key("a", ()))
        return AcquireReplicasEvent(
            who_has={k: self._peers() for k in keys},
            nbytes={k: self.sizes[k] for k in keys},
            stimulus_id=sid,
        )

    def _make_remove_replicas(self, sid: str) -> StateMachineEvent | None:
        c = self.c
        in_memory = [
            k for k, ts in self.ws.tasks.items() if ts.state == "memory" and not self._needed_here(k)
        ]
        keys = c.sample(in_memory, c.integer(1, 2))
        others = [k for k, ts in self.ws.tasks.items() if ts.state != "memory"]
        if others and (not keys or c.chance(10)):  # not in memory: ignored
            keys.append(c.choice(others))
        if not keys:
            return None
        return RemoveReplicasEvent(keys=keys, stimulus_id=sid)

    def _make_remove_worker(self, sid: str) -> StateMachineEvent:
        return RemoveWorkerEvent(worker=self.c.choice(PEERS), stimulus_id=sid)

    def _make_pause(self, sid: str) -> StateMachineEvent:
        return PauseEvent(stimulus_id=sid)

    def _make_unpause(self, sid: str) -> StateMachineEvent:
        return UnpauseEvent(stimulus_id=sid)

    def _make_find_missing(self, sid: str) -> StateMachineEvent:
        return FindMissingEvent(stimulus_id=sid)

    def _make_refresh_who_has(self, sid: str) -> StateMachineEvent | None:
        c = self.c
        keys = []
        if self.refresh_wanted and c.chance(80):
            keys = c.sample(self.refresh_wanted, c.integer(1, len(self.refresh_wanted)))
            for k in keys:
                self.refresh_wanted.remove(k)
        elif self.ws.tasks:
            keys = c.sample(list(self.ws.tasks), c.integer(1, 2))
        if not keys or c.chance(10):
            keys.append(self._unknown_key())
        who_has = {}
        for k in keys:
            state = self._state(k)
            if state in _PROCESSING or state == "error":
                who_has[k] = []  # nowhere in memory yet
            elif c.chance(30):
                who_has[k] = []  # every replica lost
            else:
                who_has[k] = self._peers()
                if state == "memory":
                    who_has[k].append(ADDRESS)
        return RefreshWhoHasEvent(who_has=who_has, stimulus_id=sid)

    def _make_update_data(self, sid: str) -> StateMachineEvent:
        c = self.c
        data = {}
        for _ in range(c.integer(1, 2)):
            known = [
                k
                for k in self.universe
                if self._state(k) in (None, "released", "memory")
                and k not in data
                and k not in self.actors
            ]
            if known and c.chance(40):
                key = c.choice(known)
            else:
                key = self._new_key("s", ())
            data[key] = self._value(key, may_poison=self._state(key) in (None, "released"))
        return UpdateDataEvent(data=data, stimulus_id=sid)

    # --- worker-side completions ------------------------------------------------------

    def _make_execute_done(self, sid: str) -> StateMachineEvent:
        c = self.c
        key = c.choice(self._running_keys())
        state = self._state(key)
        run_id = self.exec_run_id.pop(key, self.ws.tasks[key].run_id)
        if state in ("cancelled", "resumed"):  # rarer: give each outcome its chance
            outcome = c.weighted((("success", 40), ("failure", 25), ("reschedule", 35)))
        else:
            outcome = c.weighted((("success", 70), ("failure", 15), ("reschedule", 15)))
        if outcome == "success":
            # A Poison that fails to store turns into an error; stock only copes with
            # that out of a plain executing or long-running state.
            value = self._value(key, may_poison=state in ("executing", "long-running"))
            return ExecuteSuccessEvent(
                key=key,
                run_id=run_id,
                value=value,
                start=float(len(self.universe)),
                stop=float(len(self.universe)) + 0.25,
                nbytes=self.sizes.get(key, 8) if c.chance(80) else c.choice(_SIZES),
                type=type(value),
                stimulus_id=sid,
            )
        if outcome == "failure":
            timed = c.chance(70)
            return ExecuteFailureEvent(
                key=key,
                run_id=run_id,
                start=1.0 if timed else None,
                stop=1.5 if timed else None,
                exception=_serialized_error(f"failed {key!r}"),
                traceback=Serialize(None) if c.chance(50) else None,
                exception_text=f"RuntimeError('failed {key!r}')",
                traceback_text="  File 'task.py', line 1, in f\n",
                stimulus_id=sid,
            )
        return RescheduleEvent(key=key, stimulus_id=sid)

    def _make_secede(self, sid: str) -> StateMachineEvent:
        key = self.c.choice(self._running_keys())
        return SecedeEvent(key=key, compute_duration=self.c.choice((0.5, 2.0)), stimulus_id=sid)

    def _make_gather_done(self, sid: str) -> StateMachineEvent:
        c = self.c
        worker = c.choice(sorted(self.gathers))
        inst = self.gathers.pop(worker)
        outcome = c.weighted((("success", 64), ("busy", 12), ("network", 14), ("failure", 10)))
        if outcome == "success":
            data = {}
            for key in sorted(inst.to_gather, key=_key_order):
                if c.chance(85):
                    data[key] = self._value(key, may_poison=self._state(key) == "flight")
            return GatherDepSuccessEvent(
                worker=worker, total_nbytes=inst.total_nbytes, data=data, stimulus_id=sid
            )
        if outcome == "busy":
            return GatherDepBusyEvent(worker=worker, total_nbytes=inst.total_nbytes, stimulus_id=sid)
        if outcome == "network":
            return GatherDepNetworkFailureEvent(
                worker=worker, total_nbytes=inst.total_nbytes, stimulus_id=sid
            )
        return GatherDepFailureEvent(
            worker=worker,
            total_nbytes=inst.total_nbytes,
            exception=_serialized_error(f"cannot deserialise from {worker}"),
            traceback=None,
            exception_text="RuntimeError('cannot deserialise')",
            traceback_text="",
            stimulus_id=sid,
        )

    def _make_retry_busy(self, sid: str) -> StateMachineEvent:
        worker = self.busy.pop(self.c.integer(0, len(self.busy) - 1))
        return RetryBusyWorkerEvent(worker=worker, stimulus_id=sid)


# ------------------------------------------------------------------------------
# Normalisation: comparable values, no TaskState objects, no timestamps
# ------------------------------------------------------------------------------

_PLAIN = (str, int, float, bool, bytes, type(None))


def _is_taskstate(v: Any) -> bool:
    return type(v).__name__ == "TaskState" and hasattr(v, "key") and hasattr(v, "state")


def _norm_traceback_text(text: str) -> str:
    """Keep only the frames of this module (the Poison raiser): the frames of the
    state machine itself differ between pure Python and compiled code."""
    if 'File "' not in text:
        return text
    return "|".join(
        line.rsplit(" in ", 1)[-1]
        for line in text.splitlines()
        if line.lstrip().startswith('File "') and __file__ in line
    )


def normalise(v: Any) -> Any:
    """A comparable, hashable-where-needed image of ``v``.

    TaskStates become ``("task", key)``, sets frozensets, dataclass instances
    (instructions, events) ``(class name, ((field, value), ...))``, Serialize and
    exceptions a description, types their qualified name. Startstops for
    ``disk-write`` (present only if storing took more than 5 ms) are dropped.
    """
    t = type(v)
    if t in _PLAIN:
        return v
    if t is tuple:
        return tuple(normalise(x) for x in v)
    if t is list or t is deque:
        return [
            normalise(x)
            for x in v
            if not (type(x) is dict and x.get("action") == "disk-write")
        ]
    if isinstance(v, (set, frozenset)):
        return frozenset(normalise(x) for x in v)
    if isinstance(v, dict):
        return {normalise(k): normalise(x) for k, x in v.items()}
    if _is_taskstate(v):
        return ("task", normalise(v.key))
    if isinstance(v, Serialize):
        data = v.data
        if type(data) is bytes:
            # error_message() pickles the exception and its traceback (tblib): the
            # bytes hold the frames of whichever implementation raised it.
            try:
                data = pickle.loads(data)
            except Exception:
                pass
        return ("Serialize", normalise(data))
    if isinstance(v, BaseException):
        return ("exception", t.__name__, tuple(repr(a) for a in v.args))
    if isinstance(v, type):
        return ("type", v.__module__, v.__qualname__)
    if isinstance(v, TracebackType):
        return ("traceback",)
    if isinstance(v, Task):
        return ("Task", normalise(v.key))
    if dataclasses.is_dataclass(v):
        return (
            t.__name__,
            tuple(
                (
                    f.name,
                    _norm_traceback_text(getattr(v, f.name))
                    if f.name == "traceback_text"
                    else normalise(getattr(v, f.name)),
                )
                for f in dataclasses.fields(v)
            ),
        )
    if t in (LocalValue, Poison):
        return v
    if isinstance(v, float | int | str):  # subclasses
        return t.__name__, v
    return ("object", t.__name__)


_TASK_FIELDS = (
    "key",
    "state",
    "previous",
    "next",
    "priority",
    "who_has",
    "coming_from",
    "done",
    "run_id",
    "nbytes",
    "dependencies",
    "dependents",
    "waiting_for_data",
    "waiters",
    "resource_restrictions",
    "exception",
    "traceback",
    "exception_text",
    "traceback_text",
    "type",
    "startstops",
    "metadata",
    "annotations",
    "span_id",
    "run_spec",
    "suspicious_count",
    "prefix",
    "start_time",
    "stop_time",
) + (
    # until distributed 2025.1.0 (fastworker.compat.Features.taskstate_duration)
    ("duration",) if "duration" in wsm.TaskState.__dataclass_fields__ else ()
)


def _task_record(ts: Any) -> tuple:
    """The fields of ``_TASK_FIELDS``, in that order. Keys in these streams are plain
    (str or (str, int)) and priorities tuples of numbers: kept as they are."""
    rr = ts.resource_restrictions
    exception = ts.exception
    traceback = ts.traceback
    typ = ts.type
    startstops = ts.startstops
    annotations = ts.annotations
    run_spec = ts.run_spec
    return (
        ts.key,
        ts.state,
        ts.previous,
        ts.next,
        ts.priority,
        frozenset(ts.who_has),
        ts.coming_from,
        ts.done,
        ts.run_id,
        ts.nbytes,
        frozenset([d.key for d in ts.dependencies]),
        frozenset([d.key for d in ts.dependents]),
        frozenset([d.key for d in ts.waiting_for_data]),
        frozenset([d.key for d in ts.waiters]),
        None if rr is None else dict(rr),
        None if exception is None else normalise(exception),
        None if traceback is None else normalise(traceback),
        ts.exception_text,
        _norm_traceback_text(ts.traceback_text),
        None if typ is None else (typ.__module__, typ.__qualname__),
        normalise(startstops) if startstops else [],
        normalise(ts.metadata),
        None if annotations is None else normalise(annotations),
        ts.span_id,
        None if run_spec is None else normalise(run_spec),
        ts.suspicious_count,
        ts.prefix,
        ts.start_time,
        ts.stop_time,
    ) + _release_task_record(ts)


if "duration" in _TASK_FIELDS:
    def _release_task_record(ts: Any) -> tuple:
        return (ts.duration,)
else:
    def _release_task_record(ts: Any) -> tuple:
        return ()


def _heap_keys(heap: Any) -> list:
    return [ts.key for ts in heap.sorted()]


def _keys(tasks: Any) -> frozenset:
    return frozenset([ts.key for ts in tasks])


def _error_record(e: BaseException) -> tuple:
    if isinstance(e, wsm.InvalidTransition):
        return (type(e).__name__, normalise(e.key), e.start, e.finish)
    if isinstance(e, wsm.InvalidTaskState):
        return (type(e).__name__, normalise(e.key), e.state)
    if isinstance(e, AssertionError):
        return (type(e).__name__,)  # its message, if any, is a story with timestamps
    return (type(e).__name__, str(e).split("\n", 1)[0][:200])


def _strip_time(entry: tuple) -> tuple:
    # Every log entry ends with (stimulus_id, time()).
    return normalise(entry[:-1])


def _event_keys(ev: StateMachineEvent) -> list:
    if isinstance(ev, ComputeTaskEvent):
        return [ev.key, *ev.who_has]
    for name in ("key",):
        if hasattr(ev, name):
            return [getattr(ev, name)]
    for name in ("keys", "data", "who_has"):
        if hasattr(ev, name):
            return list(getattr(ev, name))[:3]
    return []


class TransitionRecorder:
    """A worker plugin that records the ``transition`` notifications it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        self.calls.append((normalise(key), start, finish, tuple(sorted(kwargs))))


#: ``ws.story(keys of the stimulus, its stimulus_id)`` is recorded every this many
#: stimuli (it scans the whole log); the new log entries are recorded every time.
STORY_EVERY = 8

#: Names of the record fields, in the order a divergence is reported.
RECORD_FIELDS = (
    "error",
    "instructions",
    "plugin_transitions",
    "log",
    "story",
    "stimulus_log",
    "tasks",
    "counters",
    "collections",
    "data",
    "validate_state",
)


class Runner:
    """Feeds stimuli to one WorkerState and records what is compared."""

    def __init__(self, ws_cls: type, config: StreamConfig):
        self.plugin = TransitionRecorder()
        self.ws = config.build(ws_cls, plugin=self.plugin)
        self._log_len = 0
        self._stimulus_log_len = 0
        self._threads = itertools.count(1000)
        self._steps = 0

    def step(self, ev: StateMachineEvent) -> tuple[dict, list]:
        """Handle one stimulus; returns (record, raw instructions)."""
        ws = self.ws
        record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
        try:
            instructions = ws.handle_stimulus(ev)
        except Exception as e:  # compared: the same error must come from both
            record["error"] = _error_record(e)
            return record, []
        for inst in instructions:  # the Worker's part: execute() records its thread
            if isinstance(inst, Execute):
                ws.threads[inst.key] = next(self._threads)
        record["instructions"] = [normalise(i) for i in instructions]
        record["plugin_transitions"] = self.plugin.calls
        self.plugin.calls = []

        log = ws.log
        record["log"] = [_strip_time(e) for e in itertools.islice(log, self._log_len, None)]
        self._log_len = len(log)
        self._steps += 1
        if self._steps % STORY_EVERY == 0:  # story() scans the whole log: not every step
            record["story"] = [
                _strip_time(e) for e in ws.story(*_event_keys(ev), ev.stimulus_id)
            ]
        slog = ws.stimulus_log
        record["stimulus_log"] = [
            (normalise(e), type(getattr(e, "handled", None)).__name__)
            for e in itertools.islice(slog, self._stimulus_log_len, None)
        ]
        self._stimulus_log_len = len(slog)

        record["tasks"] = [_task_record(ts) for ts in ws.tasks.values()]
        record["counters"] = {
            "executing_count": ws.executing_count,
            "in_flight_tasks_count": ws.in_flight_tasks_count,
            "transfer_incoming_count": ws.transfer_incoming_count,
            "transfer_incoming_count_total": ws.transfer_incoming_count_total,
            "transfer_incoming_bytes": ws.transfer_incoming_bytes,
            "transition_counter": ws.transition_counter,
            "nbytes": ws.nbytes,
            "fetch_count": ws.fetch_count,
            "executed_count": ws.executed_count,
            "generation": ws.generation,
            "running": ws.running,
            "len(ready)": len(ws.ready),
            "len(constrained)": len(ws.constrained),
            "len(waiting)": len(ws.waiting),
            "available_resources": dict(ws.available_resources),
            "total_resources": dict(ws.total_resources),
            "task_counts": dict(ws.task_counter.current_count()),
            "rng": hash(ws.rng.getstate()),
        }
        record["collections"] = {
            "ready": _heap_keys(ws.ready),
            "constrained": _heap_keys(ws.constrained),
            "waiting": _keys(ws.waiting),
            "executing": _keys(ws.executing),
            "long_running": _keys(ws.long_running),
            "in_flight_tasks": _keys(ws.in_flight_tasks),
            "missing_dep_flight": _keys(ws.missing_dep_flight),
            # In insertion order: the order in which peers are considered for gathering
            "data_needed": [(w, _heap_keys(h)) for w, h in ws.data_needed.items()],
            "has_what": {w: frozenset(keys) for w, keys in ws.has_what.items()},
            "in_flight_workers": {
                w: frozenset(keys) for w, keys in ws.in_flight_workers.items()
            },
            "busy_workers": frozenset(ws.busy_workers),
            "actors": normalise(ws.actors),
            "threads": normalise(ws.threads),
        }
        record["data"] = normalise(dict(ws.data))
        try:
            ws.validate_state()
        except Exception as e:
            record["validate_state"] = _error_record(e)
        return record, instructions


# ------------------------------------------------------------------------------
# Deterministic hashing of TaskStates
# ------------------------------------------------------------------------------

_hashing_active = False


@contextlib.contextmanager
def deterministic_hashing() -> Iterator[None]:
    """Hash TaskStates (stock's and fastworker's) by creation number, counted from 0.

    Enter once per run: the same stream then creates tasks with the same numbers in
    every implementation, so that sets of tasks iterate alike.
    """
    global _hashing_active
    assert not _hashing_active, "deterministic_hashing() is not reentrant"
    cls = wsm.TaskState
    original_post_init = cls.__dict__["__post_init__"]
    original_hash = cls.__dict__["__hash__"]
    serials: dict[int, int] = {}
    counter = itertools.count()

    def __post_init__(self: Any) -> None:
        serials[id(self)] = next(counter)
        original_post_init(self)

    def __hash__(self: Any) -> int:
        serial = serials.get(id(self))
        return id(self) if serial is None else serial

    try:
        from fastworker.taskstate import use_serial_hash
    except ImportError:  # pragma: no cover - fastworker not built
        use_serial_hash = None

    cls.__post_init__ = __post_init__
    cls.__hash__ = __hash__
    if use_serial_hash is not None:
        use_serial_hash(True, 0)
    _hashing_active = True
    try:
        yield
    finally:
        _hashing_active = False
        cls.__post_init__ = original_post_init
        cls.__hash__ = original_hash
        if use_serial_hash is not None:
            use_serial_hash(False)


# ------------------------------------------------------------------------------
# Generating, replaying, comparing
# ------------------------------------------------------------------------------


@dataclasses.dataclass
class GeneratedStream:
    """A stream built on the reference implementation, with its records."""

    config: StreamConfig
    events: list[StateMachineEvent]
    records: list[dict]
    seed: int | None = None

    def __repr__(self) -> str:
        # Short: hypothesis prints it for a falsifying example, and the failure
        # report already holds the stream prefix that matters, as code.
        kinds = collections.Counter(type(ev).__name__ for ev in self.events)
        seed = "" if self.seed is None else f"seed={self.seed}, "
        return (
            f"<GeneratedStream {seed}{len(self.events)} stimuli {dict(kinds)}, "
            f"{self.config}>"
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # hypothesis' printer
        p.text(repr(self))

    def code(self) -> str:
        """The whole stream, as Python source."""
        return format_stream(self.config, self.events)


def generate(
    chooser: _Chooser,
    ws_cls: type = wsm.WorkerState,
    *,
    max_steps: int = 60,
    min_steps: int = 1,
) -> GeneratedStream:
    """Build a stream on ``ws_cls`` (the reference), recording every step.

    The stream ends early if the reference raises or fails ``validate_state()``.
    """
    config = StreamConfig.draw(chooser)
    n_steps = chooser.integer(min_steps, max_steps)
    events: list[StateMachineEvent] = []
    records: list[dict] = []
    with deterministic_hashing():
        runner = Runner(ws_cls, config)
        driver = StimulusDriver(chooser, runner.ws, config)
        for step in range(n_steps):
            ev = driver.next_event(step)
            record, instructions = runner.step(ev)
            events.append(ev)
            records.append(record)
            if record["error"] is not None:
                break
            driver.observe(instructions)
    return GeneratedStream(
        config, events, records, seed=getattr(chooser, "seed", None)
    )


def replay(
    ws_cls: type,
    config: StreamConfig,
    events: Sequence[StateMachineEvent],
    *,
    reference: Sequence[dict] | None = None,
) -> list[dict]:
    """Feed ``events`` to a new ``ws_cls`` in ``config``; the record of each step.

    With ``reference``, stop at the first step whose record differs from it.
    """
    records = []
    with deterministic_hashing():
        runner = Runner(ws_cls, config)
        for i, ev in enumerate(events):
            record, _ = runner.step(ev)
            records.append(record)
            if record["error"] is not None:
                break
            if reference is not None and record != reference[i]:
                break
    return records


def _show(v: Any) -> str:
    """repr with sets sorted, for readable and stable diffs."""
    if isinstance(v, frozenset):
        return "{" + ", ".join(sorted(map(_show, v))) + "}" if v else "set()"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_show(k)}: {_show(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(map(_show, v)) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(map(_show, v)) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def _diff_field(name: str, a: Any, b: Any, labels: tuple[str, str]) -> list[str]:
    la, lb = labels
    width = max(len(la), len(lb))
    la, lb = la.ljust(width), lb.ljust(width)
    if name == "tasks" and a is not None and b is not None:
        out = []
        ta = {r[0]: r for r in a}
        tb = {r[0]: r for r in b}
        order_a, order_b = [r[0] for r in a], [r[0] for r in b]
        for key in sorted(set(ta) | set(tb), key=_show):
            if key not in tb:
                out.append(f"  task {_show(key)}: only in {labels[0]}: {_show(ta[key])}")
            elif key not in ta:
                out.append(f"  task {_show(key)}: only in {labels[1]}: {_show(tb[key])}")
            elif ta[key] != tb[key]:
                for fname, x, y in zip(_TASK_FIELDS, ta[key], tb[key]):
                    if x != y:
                        out.append(f"  task {_show(key)}.{fname}:")
                        out.append(f"    {la} {_show(x)}")
                        out.append(f"    {lb} {_show(y)}")
        if not out and order_a != order_b:
            out.append(f"  order of tasks:\n    {la} {_show(order_a)}\n    {lb} {_show(order_b)}")
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k, "<absent>") != b.get(k, "<absent>"):
                out.append(f"  {name}[{_show(k)}]:")
                out.append(f"    {la} {_show(a.get(k, '<absent>'))}")
                out.append(f"    {lb} {_show(b.get(k, '<absent>'))}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        for i, (x, y) in enumerate(itertools.zip_longest(a, b, fillvalue="<absent>")):
            if x != y:
                out.append(f"  {name}[{i}]:")
                out.append(f"    {la} {_show(x)}")
                out.append(f"    {lb} {_show(y)}")
        return out
    return [f"  {name}:", f"    {la} {_show(a)}", f"    {lb} {_show(b)}"]


def first_divergence(
    stream: GeneratedStream,
    records: Sequence[dict],
    labels: tuple[str, str] = ("stock", "tested"),
) -> str | None:
    """None if ``records`` match the stream's reference records step for step;
    else a report of the first divergence, with the stream prefix that reproduces it."""
    reference = stream.records
    for i, ref in enumerate(reference):
        got = records[i] if i < len(records) else None
        if got == ref:
            continue
        lines = [
            f"first divergence at step {i} (of {len(reference)}), "
            f"after {format_event(stream.events[i])}"
        ]
        if got is None:
            lines.append(f"  {labels[1]} stopped after {len(records)} steps")
        else:
            for name in RECORD_FIELDS:
                if ref[name] != got[name]:
                    lines += _diff_field(name, ref[name], got[name], labels)
        lines.append("")
        lines.append(f"stream prefix that reproduces it ({i + 1} stimuli):")
        if stream.seed is not None:
            lines.append(f"# seed={stream.seed}")
        lines.append(format_stream(stream.config, stream.events[: i + 1]))
        return "\n".join(lines)
    if len(records) > len(reference):
        return f"{labels[1]} went on for {len(records)} steps; {labels[0]} stopped at {len(reference)}"
    return None


def minimise(
    stream: GeneratedStream,
    ws_cls: type,
    *,
    reference_cls: type = wsm.WorkerState,
    time_budget: float = 30.0,
) -> list[StateMachineEvent]:
    """A shorter list of ``stream``'s events on which ``ws_cls`` still diverges from
    ``reference_cls`` (delta debugging: drop chunks of events, then single events).

    A candidate is kept only if the reference still handles every stimulus without
    raising (else the shortened stream would no longer be plausible). Stops after
    ``time_budget`` seconds with the best stream so far.
    """
    deadline = time.monotonic() + time_budget

    def diverges(events: list) -> bool:
        reference = replay(reference_cls, stream.config, events)
        if any(r["error"] is not None for r in reference):
            return False
        candidate = GeneratedStream(stream.config, events, reference)
        got = replay(ws_cls, stream.config, events, reference=reference)
        return first_divergence(candidate, got) is not None

    got = replay(ws_cls, stream.config, stream.events, reference=stream.records)
    step = next(
        (i for i, (a, b) in enumerate(zip(stream.records, got)) if a != b), len(got) - 1
    )
    events = list(stream.events[: step + 1])
    chunks = 2
    while len(events) > 1 and time.monotonic() < deadline:
        size = max(1, len(events) // chunks)
        reduced = False
        start = 0
        while start < len(events) and time.monotonic() < deadline:
            candidate = events[:start] + events[start + size :]
            if candidate and diverges(candidate):
                events = candidate
                reduced = True
            else:
                start += size
        if size == 1 and not reduced:
            break
        if not reduced:
            chunks = min(len(events), chunks * 2)
    return events


# ------------------------------------------------------------------------------
# Streams as code
# ------------------------------------------------------------------------------


def _code(v: Any) -> str:
    if isinstance(v, Serialize):
        return f"Serialize({_code(v.data)})"
    if isinstance(v, Task):
        return f"ComputeTaskEvent.dummy_runspec({v.key!r})"
    if isinstance(v, type):
        return v.__name__
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_code(k)}: {_code(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(map(_code, v)) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(map(_code, v)) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, float) and math.isinf(v):
        return "math.inf"
    return repr(v)


def format_event(ev: StateMachineEvent) -> str:
    fields = ", ".join(f"{f.name}={_code(getattr(ev, f.name))}" for f in dataclasses.fields(ev))
    return f"{type(ev).__name__}({fields})"


def format_stream(config: StreamConfig, events: Sequence[StateMachineEvent]) -> str:
    """Python source that rebuilds the stream (run from the repository root)."""
    config_args = ", ".join(
        f"{f.name}={_code(getattr(config, f.name))}" for f in dataclasses.fields(config)
    )
    lines = [
        "import math, sys; sys.path.insert(0, 'tests')",
        "from distributed.protocol.serialize import Serialize",
        "from distributed.worker_state_machine import *",
        "from stimuli import StreamConfig, LocalValue, Poison, replay",
        f"config = StreamConfig({config_args})",
        "events = [",
        *(f"    {format_event(ev)}," for ev in events),
        "]",
        "records = replay(WorkerState, config, events)  # or any WorkerState class",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------
# Hypothesis strategy
# ------------------------------------------------------------------------------


def stimulus_streams(max_steps: int = 60, min_steps: int = 1, ws_cls: type = wsm.WorkerState):
    """Hypothesis strategy: a :class:`GeneratedStream` built on ``ws_cls``."""
    from hypothesis import strategies as st

    @st.composite
    def streams(draw: Callable[[Any], Any]) -> GeneratedStream:
        return generate(
            HypothesisChooser(draw), ws_cls, max_steps=max_steps, min_steps=min_steps
        )

    return streams()

"""Which tasks the opt-in event-loop executor takes by itself
(``fastworker.inline.automatic: true``; off by default).

A prefix is admitted after ``fastworker.inline.admit-after`` runs in the thread pool
on this worker, if most of them did not wait (thread CPU time close to wall time),
their mean run time is below ``fastworker.inline.max-duration``, and none of its pool
runs was seen calling back into the worker (``get_client``, ``secede``,
``worker_client``, ``sync()`` or anything else that schedules work on the loop). A
prefix is demoted for the life of the worker when one of its inline runs turns slow,
or when one of its tasks had to be stopped on the loop.

None of this is active unless automatic selection is on: then, and only then, the
worker's ``_get_client`` and its IOLoop's ``add_callback`` are watched, which costs a
few microseconds per call.
"""
from __future__ import annotations

import logging
from typing import Any

from dask.utils import key_split
from distributed.utils import thread_state
from distributed.worker_state_machine import ExecuteFailureEvent, ExecuteSuccessEvent

from fastworker.watchdog import inline_task_here

logger = logging.getLogger("distributed.fastworker")

#: A pool run "waited" when its thread spent more time off the CPU than on it, and
#: more than this: a pure Python task of a few hundred microseconds does not.
WAIT_FLOOR = 0.0005
#: Weight of a new sample in a prefix's moving mean run time.
MEAN_WEIGHT = 0.1
#: Samples are clipped at this many times max-duration before they enter the mean.
SAMPLE_CLIP = 2.0
#: Inline runs slower than the batch time ("strikes") that demote a prefix; each
#: fast run takes back this much of a strike (strikes fade over ~100 fast runs).
STRIKES_TO_DEMOTE = 2.0
STRIKE_FADE = 0.01
#: One inline run this many times longer than the batch time demotes at once.
FAR_BEYOND_BATCH = 10.0
#: Pool runs needed per waiting pool run for a prefix to be admitted.
RUNS_PER_WAIT = 2


class NeedsThread(BaseException):
    """Raised inside an inline task that asked for what only a thread can give
    (``secede``, ``get_client``, ``sync()`` against the worker's own loop): the task is
    re-run in the thread pool."""


def _pool_task_prefix_and_worker() -> tuple[str, Any] | None:
    """(prefix, worker) of the task that a pool thread is running now, or None."""
    state = thread_state.__dict__
    key = state.get("key")
    execution_state = state.get("execution_state")
    if key is None or not isinstance(execution_state, dict):
        return None
    worker = execution_state.get("worker")
    if worker is None:
        return None
    return key_split(key), worker


class Admission:
    """The automatic selection policy of one worker (see the module docstring)."""

    def __init__(self, worker: Any, *, max_duration: float, batch_time: float, admit_after: int):
        self.worker = worker
        self.max_duration = max_duration
        self.batch_time = batch_time
        self.admit_after = admit_after
        #: prefix -> moving mean of measured run times (seconds)
        self.durations: dict[str, float] = {}
        #: prefix -> [pool runs that did not wait, pool runs that waited]
        self.pool_runs: dict[str, list[int]] = {}
        self.demoted: set[str] = set()
        self.demoted_why: dict[str, str] = {}
        self.strikes: dict[str, float] = {}
        self._watching = False

    # --- watching for callbacks into the worker (automatic selection only) ------------

    def watch(self) -> None:
        """Watch the worker's ``_get_client`` and its IOLoop's ``add_callback``: an
        inline task that calls them is stopped (:class:`NeedsThread`), a pool task
        that does bars its prefix."""
        if self._watching:
            return
        self._watching = True
        worker = self.worker
        get_client = worker._get_client

        def _get_client_guard(*args, **kwargs):
            if inline_task_here():
                raise NeedsThread("get_client() in a task run inline")
            running = _pool_task_prefix_and_worker()
            if running is not None and running[1] is worker:
                self.bar(running[0], "it calls get_client()")
            return get_client(*args, **kwargs)

        worker._get_client = _get_client_guard
        try:
            _wrap_add_callback(worker.loop)
        except Exception:  # pragma: no cover - a worker without a tornado loop
            pass

    # --- which tasks --------------------------------------------------------------------

    def wants(self, prefix: str) -> bool:
        """Whether a task of ``prefix`` (one that may run inline at all) goes there."""
        if prefix in self.demoted:
            return False
        mean = self.durations.get(prefix)
        if mean is None or mean >= self.max_duration:
            return False
        runs = self.pool_runs.get(prefix)
        return (
            runs is not None and runs[0] >= self.admit_after
            and runs[0] >= RUNS_PER_WAIT * runs[1]
        )

    def pool_run(self, ts: Any, event: Any, ledger: Any) -> None:
        """Learn from a run in the thread pool: how long, whether it waited or seceded."""
        if not isinstance(event, (ExecuteSuccessEvent, ExecuteFailureEvent)) or not event.stop:
            return
        if ts.state == "long-running" or ts.previous == "long-running":
            self.bar(ts.prefix, "it secedes")
            return
        prefix = ts.prefix
        self.measured(prefix, event.stop - event.start)
        cpu = noncpu = 0.0
        for label, value, _unit in ledger.metrics:
            if label == "thread-cpu":
                cpu += value
            elif label == "thread-noncpu":
                noncpu += value
        runs = self.pool_runs.get(prefix)
        if runs is None:
            runs = self.pool_runs[prefix] = [0, 0]
        runs[noncpu > cpu and noncpu > WAIT_FLOOR] += 1

    def measured(self, prefix: str, duration: float) -> None:
        mean = self.durations.get(prefix)
        # A slowly moving mean of clipped samples: one preempted or GC-paused run
        # does not swing it, a prefix that is really slower does within a few tasks.
        sample = min(duration, SAMPLE_CLIP * self.max_duration)
        self.durations[prefix] = (
            sample if mean is None else (1 - MEAN_WEIGHT) * mean + MEAN_WEIGHT * sample
        )

    def learn_inline(self, prefix: str, own: float) -> None:
        """Demote a prefix whose inline runs turn slow (GC time left out)."""
        self.measured(prefix, own)
        if own > self.batch_time:
            # One slow run can be a GC pause or a preempted core; a second one soon
            # after, or one far beyond the batch time, is the prefix.
            strikes = self.strikes[prefix] = self.strikes.get(prefix, 0.0) + 1.0
            if strikes >= STRIKES_TO_DEMOTE or own > FAR_BEYOND_BATCH * self.batch_time:
                self.demote(prefix, f"one took {own * 1000:.1f} ms")
        elif prefix in self.strikes:
            strikes = self.strikes[prefix] - STRIKE_FADE
            if strikes <= 0:
                del self.strikes[prefix]
            else:
                self.strikes[prefix] = strikes
        if self.durations[prefix] > self.max_duration:
            self.demote(prefix, f"they take {self.durations[prefix] * 1000:.2f} ms on average")

    def demote(self, prefix: str, why: str, *, log: bool = True) -> None:
        if prefix not in self.demoted:
            self.demoted.add(prefix)
            self.demoted_why[prefix] = why
            if log:
                logger.info("fastworker: tasks %r no longer run inline: %s", prefix, why)

    def bar(self, prefix: str, why: str) -> None:
        """A pool run showed that ``prefix`` must never run inline."""
        if prefix not in self.demoted:
            self.demote(prefix, why, log=False)
            logger.debug("fastworker: tasks %r will not run inline: %s", prefix, why)


def _wrap_add_callback(loop: Any) -> None:
    """Watch the worker's IOLoop for tasks that call back into it (``sync()``,
    ``secede``, ``Client`` calls): inline, such a task is stopped at once (it would
    wait for a loop it blocks); in the pool, its prefix is barred from running
    inline."""
    if getattr(loop, "_fastworker_add_callback", False):
        return
    original = loop.add_callback

    def add_callback(callback, *args, **kwargs):
        if inline_task_here():
            raise NeedsThread("the task called back into the event loop (sync() or add_callback)")
        running = _pool_task_prefix_and_worker()
        if running is not None:
            prefix, worker = running
            execution = getattr(worker, "_fastworker_execution", None)
            admission = None if execution is None else execution.admission
            if admission is not None:
                admission.bar(prefix, "it calls back into the event loop")
        return original(callback, *args, **kwargs)

    try:
        loop.add_callback = add_callback
        loop._fastworker_add_callback = True
    except AttributeError:  # pragma: no cover - an IOLoop that takes no attributes
        pass

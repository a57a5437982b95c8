"""The in-process executor: tiny tasks run on the worker's event loop, in batches.

Handing a trivial task to the worker's thread pool and back costs more than the
whole state machine does for it. :class:`InlineExecution`, installed on a worker
that runs the compiled state machine, takes the ``Execute`` instructions of tasks
known to be tiny and runs them directly in the event loop's thread, in batches: all
the tasks that are ready, then one ``handle_stimulus`` with all their
``ExecuteSuccessEvent``/``ExecuteFailureEvent``, then again with the tasks that
this released, until the batch's time budget is spent; then it yields to the event
loop (heartbeats, comms, the dashboard) before the next batch.

Which tasks run inline:

- tasks annotated ``dask.annotate(executor="inline")``;
- tasks whose prefix was measured (on this worker, in the thread pool or inline)
  at less than ``fastworker.inline.max-duration`` on average;

and never: coroutine tasks, actors, tasks that read actors, tasks of a prefix that
was demoted. A prefix is demoted (for the life of the worker; its later tasks go to
the thread pool) when two of its tasks within about a hundred run inline for longer
than the batch time (or one for ten times longer), or when its mean run time rises
above ``max-duration``. A task
that calls ``secede()``, ``get_client()`` or anything built on them
(``worker_client``, distributed's Event/Lock/Variable/Queue...) is stopped there and
run again from the start in the thread pool, and its prefix demoted: code before
that call runs twice.

Everything else is as in the thread pool: results, exceptions and tracebacks,
``get_worker()``, task start/stop times and startstops, ``Worker.threads``,
resource accounting (the state machine is unchanged), cancellation (a cancelled
task still runs to its end, as stock), contextvars (each task runs in a copy of
the context, changes do not leak into the next task).
"""
from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import threading
from collections import deque
from time import perf_counter
from typing import Any

import dask
from dask.utils import parse_timedelta
from distributed.core import Status
from distributed.exceptions import Reschedule
from distributed.metrics import time
from distributed.core import error_message
from distributed.threadpoolexecutor import thread_state as pool_thread_state
from distributed.utils import thread_state
from distributed.worker import _worker_cvar
from dask.sizeof import sizeof
from distributed.worker_state_machine import (
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    RescheduleEvent,
)

from fastworker import config

logger = logging.getLogger("distributed.fastworker")

RUNNING = (Status.running, Status.paused, Status.closing_gracefully)


class NeedsThread(BaseException):
    """Raised inside an inline task that asked for what only a thread can give
    (``secede``, ``get_client``): the task is re-run in the thread pool."""


class _NoThreadPool:
    """The thread pool's ``thread_state.executor`` while a task runs inline:
    ``secede()`` removes the current thread from it, which raises
    :class:`NeedsThread` instead."""

    class _Threads:
        def remove(self, thread):
            raise NeedsThread("secede() in a task run inline")

    _threads = _Threads()

    def _adjust_thread_count(self):  # pragma: no cover - not reached
        raise NeedsThread("secede() in a task run inline")


_NO_THREAD_POOL = _NoThreadPool()


class _GCClock:
    """Seconds spent in the garbage collector so far (all threads): a collection
    that happens to start inside a tiny task is not the task's own time."""

    def __init__(self):
        self.total = 0.0
        self._start = 0.0
        self.installed = False

    def install(self):
        if not self.installed:
            gc.callbacks.append(self._callback)
            self.installed = True

    def _callback(self, phase, info):
        if phase == "start":
            self._start = perf_counter()
        else:
            self.total += perf_counter() - self._start


_GC_CLOCK = _GCClock()


class InlineExecution:
    """Runs a worker's tiny tasks inline; see the module docstring.

    Installed with :meth:`install` on a started or starting ``distributed.Worker``
    (it wraps three of the worker's methods on the instance). Counters for tests and
    benchmarks: ``inline_count``, ``fallback_count``, ``batch_count``; ``durations``
    (prefix -> mean measured run time, seconds) and ``demoted`` (prefixes).
    """

    def __init__(self, worker: Any, *, max_duration: float, batch_time: float):
        self.worker = worker
        self.max_duration = max_duration
        self.batch_time = batch_time
        self.durations: dict[str, float] = {}
        self.demoted: set[str] = set()
        self.strikes: dict[str, float] = {}
        self.queue: deque[tuple[Any, str | None, str]] = deque()
        self.scheduled = False
        #: Thread ident of the event loop while a task runs inline there, else None.
        self.inline_thread: int | None = None
        self.inline_count = 0
        self.fallback_count = 0
        self.batch_count = 0
        cls = type(worker)
        self._execute = cls.execute
        self._start = worker._start_async_instruction
        self._finish = worker._finish_async_instruction
        self._get_client = worker._get_client

    # --- installation ---------------------------------------------------------------

    @classmethod
    def install(cls, worker: Any) -> InlineExecution | None:
        """Install on ``worker`` unless ``fastworker.inline.enabled`` is False."""
        existing = getattr(worker, "_fastworker_inline", None)
        if existing is not None:
            return existing
        # "inline" is a valid executor name on every fastworker worker, with inline
        # execution on or off: tasks that cannot run inline use the default pool.
        worker.executors.setdefault("inline", worker.executors["default"])
        if not dask.config.get("fastworker.inline.enabled", True):
            return None
        self = cls(
            worker,
            max_duration=parse_timedelta(dask.config.get("fastworker.inline.max-duration")),
            batch_time=parse_timedelta(dask.config.get("fastworker.inline.batch-time")),
        )
        worker._start_async_instruction = self._start_async_instruction
        worker._finish_async_instruction = self._finish_async_instruction
        worker._get_client = self._get_client_guard
        worker._fastworker_inline = self
        _GC_CLOCK.install()
        return self

    # --- the worker's methods, wrapped --------------------------------------------------

    def _start_async_instruction(self, task_name, func, /, *args, span_id=None, **kwargs):
        if getattr(func, "__func__", None) is self._execute and self._wants(args[0]):
            self.queue.append((args[0], span_id, kwargs["stimulus_id"]))
            if not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._drain)
            return
        self._start(task_name, func, *args, span_id=span_id, **kwargs)

    def _finish_async_instruction(self, task, ledger, span_id):
        # Learn how long each prefix runs in the thread pool.
        if not task.cancelled() and task.exception() is None:
            stim = task.result()
            if isinstance(stim, ExecuteSuccessEvent):
                prefix = self._prefix(stim.key)
                if prefix is not None:
                    self._measured(prefix, stim.stop - stim.start)
        self._finish(task, ledger, span_id)

    def _get_client_guard(self, *args, **kwargs):
        if self.inline_thread is not None and threading.get_ident() == self.inline_thread:
            raise NeedsThread("get_client() in a task run inline")
        return self._get_client(*args, **kwargs)

    # --- which tasks --------------------------------------------------------------------

    def _prefix(self, key) -> str | None:
        ts = self.worker.state.tasks.get(key)
        return None if ts is None else ts.prefix

    def _wants(self, key) -> bool:
        state = self.worker.state
        ts = state.tasks.get(key)
        if ts is None or ts.run_spec is None or ts.run_spec.is_coro:
            return False
        prefix = ts.prefix
        if prefix in self.demoted:
            return False
        annotations = ts.annotations
        executor = annotations.get("executor") if annotations else None
        if executor not in (None, "default", "inline"):
            return False
        actors = state.actors
        if actors and (key in actors or any(dep.key in actors for dep in ts.dependencies)):
            return False
        if executor == "inline":
            return True
        mean = self.durations.get(prefix)
        return mean is not None and mean < self.max_duration

    def _measured(self, prefix: str, duration: float) -> None:
        mean = self.durations.get(prefix)
        # A slowly moving mean of clipped samples: one preempted or GC-paused run
        # does not swing it, a prefix that is really slower does within a few tasks.
        sample = min(duration, 2 * self.max_duration)
        self.durations[prefix] = sample if mean is None else 0.9 * mean + 0.1 * sample

    def _demote(self, prefix: str, why: str) -> None:
        if prefix not in self.demoted:
            self.demoted.add(prefix)
            logger.info("fastworker: tasks %r no longer run inline: %s", prefix, why)

    # --- batches -------------------------------------------------------------------------

    def _drain(self) -> None:
        """Run queued tasks, feeding their results back once per round, until the
        queue is empty or the batch's time budget is spent; then yield."""
        self.scheduled = False
        worker = self.worker
        if worker.status not in RUNNING:
            # Closing: as the pool's asyncio tasks are cancelled then, queued tasks
            # are dropped, not run, and nothing more reaches the state machine.
            self.queue.clear()
            return
        self.batch_count += 1
        deadline = perf_counter() + self.batch_time
        while self.queue:
            events = []
            for _ in range(len(self.queue)):
                event = self._run(*self.queue.popleft())
                if event is not None:
                    events.append(event)
                if perf_counter() >= deadline:
                    break  # the rest stay queued, in order, for the next batch
            if events:
                # Releases dependents: their Execute instructions land in self.queue.
                worker.handle_stimulus(*events)
            if perf_counter() >= deadline:
                break
        if self.queue and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _run(self, key, span_id, stimulus_id):
        """Run one task inline; its Execute*Event, or None if handed to a thread."""
        worker = self.worker
        if worker.status not in RUNNING:
            return RescheduleEvent(key=key, stimulus_id=f"worker-closing-{time()}")
        ts = worker.state.tasks[key]
        if ts.prefix in self.demoted:  # demoted while this one waited in the queue
            self._start(
                f"execute({key!r})", worker.execute, key,
                span_id=span_id, stimulus_id=stimulus_id,
            )
            return None
        run_id = ts.run_id
        try:
            data = {dep.key: worker.data[dep.key] for dep in ts.dependencies}
        except Exception as exc:  # e.g. a dependency that fails to unspill
            logger.error("Exception during execution of task %r", key, exc_info=True)
            return ExecuteFailureEvent.from_exception(
                exc, key=key, run_id=run_id, stimulus_id=f"execute-unknown-error-{time()}"
            )
        annotations = ts.annotations
        span_ctx = (
            dask.annotate(span=annotations["span"])
            if annotations and "span" in annotations
            else None
        )
        worker.active_keys.add(key)
        ident = threading.get_ident()
        pool_thread_state.executor = _NO_THREAD_POOL
        self.inline_thread = ident
        if span_ctx is not None:
            span_ctx.__enter__()
        gc_before = _GC_CLOCK.total
        try:
            ts.start_time = time()
            ok, value, start, stop = contextvars.copy_context().run(
                _call_task, ts.run_spec, data, worker, key, ident
            )
        finally:
            if span_ctx is not None:
                span_ctx.__exit__(None, None, None)
            self.inline_thread = None
            # The event loop's thread is no pool thread: leave nothing behind.
            pool_thread_state.__dict__.pop("executor", None)
            pool_thread_state.__dict__.pop("proceed", None)
            worker.active_keys.discard(key)

        prefix = ts.prefix
        if not ok and isinstance(value["actual_exception"], NeedsThread):
            self.fallback_count += 1
            self._demote(prefix, str(value["actual_exception"]))
            self._start(
                f"execute({key!r})", worker.execute, key,
                span_id=span_id, stimulus_id=stimulus_id,
            )
            return None

        self.inline_count += 1
        duration = max(0.0, stop - start)
        # What the task's own code took: without garbage collections that ran in it.
        own = max(0.0, duration - (_GC_CLOCK.total - gc_before))
        self._measured(prefix, own)
        if own > self.batch_time:
            # One slow run can be a GC pause or a preempted core; a second one soon
            # after (strikes fade over ~100 fast runs), or one far beyond the batch
            # time, is the prefix.
            strikes = self.strikes[prefix] = self.strikes.get(prefix, 0.0) + 1.0
            if strikes >= 2.0 or own > 10 * self.batch_time:
                self._demote(prefix, f"one took {own * 1000:.1f} ms")
        elif prefix in self.strikes:
            strikes = self.strikes[prefix] - 0.01
            if strikes <= 0:
                del self.strikes[prefix]
            else:
                self.strikes[prefix] = strikes
        if self.durations[prefix] > self.max_duration:
            self._demote(prefix, f"they take {self.durations[prefix] * 1000:.2f} ms on average")
        worker.threads[key] = ident
        delay = worker.scheduler_delay
        if ok:
            if worker.digests is not None:
                worker.digests["task-duration"].add(duration)
            return ExecuteSuccessEvent(
                key=key,
                run_id=run_id,
                value=value,
                start=start + delay,
                stop=stop + delay,
                nbytes=sizeof(value),
                type=type(value) if value is not None else None,
                stimulus_id=f"task-finished-{time()}",
            )
        if isinstance(value["actual_exception"], Reschedule):
            return RescheduleEvent(key=key, stimulus_id=f"reschedule-{time()}")
        result = value
        if ts.state in ("executing", "long-running", "resumed"):
            logger.error(
                "Compute Failed\nKey:       %s\nState:     %s\nTask:  %s\n"
                "Exception: %r\nTraceback: %r\n",
                key, ts.state, repr(ts.run_spec)[:1000],
                result["exception_text"], result["traceback_text"],
            )
        return ExecuteFailureEvent.from_exception(
            result,
            key=key,
            run_id=run_id,
            start=start + delay,
            stop=stop + delay,
            stimulus_id=f"task-erred-{time()}",
        )


def _call_task(task, data, worker, key, ident):
    """Run one task as a pool thread would (``get_worker()``, the thread state that
    ``secede`` reads, ``Worker.active_threads`` for the profiler); called in a copy
    of the context, so the worker context variable needs no reset.

    Returns ``(ok, result or error message, start, stop)``; the error message is
    distributed's (``error_message``), with ``actual_exception`` as in the pool.
    """
    _worker_cvar.set(worker)
    start = time()
    state = thread_state.__dict__
    state["start_time"] = start
    state["execution_state"] = worker.execution_state
    state["key"] = key
    active_threads = worker.active_threads
    with worker.active_threads_lock:
        active_threads[ident] = key
    try:
        return True, task(data), start, time()
    except (SystemExit, KeyboardInterrupt):
        raise  # as in the pool: these stop the worker
    except BaseException as exc:  # noqa: B036 - user code may raise anything
        msg = error_message(exc)  # reads the traceback being handled
        msg["actual_exception"] = exc
        return False, msg, start, time()
    finally:
        with worker.active_threads_lock:
            del active_threads[ident]
        for name in ("start_time", "execution_state", "key"):
            state.pop(name, None)

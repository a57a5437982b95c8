"""The event-loop executor: tasks that users send there run on the worker's event
loop, in time-bounded batches, instead of in its thread pool. **Opt-in only.**

By default no task runs here: every task runs in the worker's thread pool, as in
stock (:mod:`fastworker.pool`). A task comes here only if

- it is annotated ``dask.annotate(executor="inline")``, or
- ``fastworker.inline.automatic: true`` is set and its prefix was admitted by
  :mod:`fastworker.admission` (tiny, not waiting, never calling back into the worker);

and never if it is a coroutine task, an actor or reads one, or its prefix was demoted.

What changes for code that runs here (``docs/ways-in.md`` says it for users):

- it runs on the event loop's thread: ``asyncio.get_running_loop()`` finds the
  worker's loop, so ``asyncio.run()`` and anything else that refuses to run inside a
  running loop fails; ``threading.get_ident()``, ``threading.local`` state and the
  stack depth are the loop thread's, not a pool thread's;
- no task holds the loop longer than ``fastworker.inline.take-back-after`` (default
  50 ms, garbage collections not counted): a watchdog (:mod:`fastworker.watchdog`)
  raises :class:`~fastworker.takeback.TakenBack` into it, asynchronously, wherever it
  is, and the task runs again from the start in the thread pool. That exception can
  be swallowed by a bare ``except:``, can leave a lock taken without ``try/finally``
  held, can land in a finalizer or a gc callback, and anything the first run did
  (in-place updates of its inputs, files written) is seen by the second run. A task
  that asks for a thread (``secede``, ``get_client``, ``sync()`` against the worker's
  own loop) is stopped at once (:class:`~fastworker.admission.NeedsThread`) and re-run
  in the pool likewise. Either way its prefix no longer runs here on this worker:
  a re-run happens at most once per prefix per worker, is counted and logged at
  WARNING.

Everything else is as in the thread pool: results, exceptions and tracebacks, fine
performance metrics (``execute`` digests and span metrics, the same labels and
units), ``task-duration`` digests, ``get_worker()``, start/stop times and
startstops, ``Worker.active_keys``, ``Worker.threads`` (one of the worker's pool
threads, so the task stream shows no extra row), resources and cancellation (the
state machine is unchanged), contextvars (each task runs in a copy of the context).
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time as timemod
from collections import deque
from typing import Any

import dask
from distributed.metrics import DelayedMetricsLedger
from distributed.threadpoolexecutor import thread_state as pool_thread_state
from distributed.worker import WORKER_ANY_RUNNING

from fastworker import runner, takeback
from fastworker.admission import NeedsThread
from fastworker.runner import METER_CALLBACKS
from fastworker.takeback import TakenBack
from fastworker.watchdog import signal_number, watchdog_for

logger = logging.getLogger("distributed.fastworker")

#: Handed back by InlineExecution._execute: run this task in the pool instead.
_TO_POOL = object()
#: What `_execute` returns after a task raised SystemExit or KeyboardInterrupt.
_EXITED = object()


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


class InlineExecution:
    """The event-loop executor of one worker (see the module docstring).

    Created by :class:`fastworker.execution.Execution`, which sends it the tasks
    users opted in; nothing (no watchdog, no signal handler, no gc callback, no
    wrapper) is set up until the first of them arrives. Counters for tests,
    benchmarks and :func:`fastworker.status`: ``inline_count`` (tasks finished
    inline), ``rerun_count`` (tasks stopped inline and run again in the pool),
    ``takeback_count`` (of those, taken back by the watchdog), ``fallback_count`` (of
    those, because they asked for a thread), ``batch_count``.
    """

    def __init__(
        self,
        worker: Any,
        execution: Any,
        *,
        batch_time: float,
        take_back_after: float,
        take_back_signal: str,
    ):
        self.worker = worker
        self.execution = execution
        self.admission = execution.admission
        self.batch_time = batch_time
        self.take_back_after = take_back_after
        self.take_back_signal = take_back_signal
        self.queue: deque[tuple[Any, str | None, str, DelayedMetricsLedger]] = deque()
        self.scheduled = False
        self.watchdog = None
        self.inline_count = 0
        #: prefix -> tasks finished inline
        self.inline_by_prefix: dict[str, int] = {}
        self.rerun_count = 0
        self.takeback_count = 0
        self.fallback_count = 0
        self.batch_count = 0
        self._pool_thread: int | None = None

    @property
    def automatic(self) -> bool:
        return self.execution.automatic

    # --- set-up, on the first task sent here ---------------------------------------------

    def _setup_on_loop(self) -> None:
        """First task, on the event loop's thread: choose how tasks are taken back
        there, start its watchdog, watch for callbacks into the worker."""
        thread_id = threading.get_ident()
        signum = 0
        wanted = signal_number(self.take_back_signal)
        if wanted and threading.current_thread() is threading.main_thread():
            from fastworker.watchdog import _WATCHDOGS

            existing = _WATCHDOGS.get(thread_id)
            if existing is not None:
                signum = existing.signum
            elif takeback.install_signal_handler(wanted):
                signum = wanted
        self.watchdog = watchdog_for(thread_id, signum, self.take_back_after)
        takeback.install_gc_clock()
        self.admission.watch()
        logger.info(
            "fastworker: event-loop executor on %s (opted in): tasks holding the loop "
            "for %.0f ms are taken back by %s",
            self.execution.worker_name, self.take_back_after * 1000, self.watchdog.mode,
        )

    # --- tasks -------------------------------------------------------------------------

    def start(self, key, span_id, stimulus_id) -> None:
        """An ``Execute`` instruction for a task sent here."""
        if self.watchdog is None:
            self._setup_on_loop()
        # Metering starts here, as in BaseWorker._start_async_instruction.
        self.queue.append((key, span_id, stimulus_id, DelayedMetricsLedger()))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Run queued tasks, each followed by its ``handle_stimulus``, until the queue
        is empty or the batch's time budget is spent; then yield."""
        self.scheduled = False
        worker = self.worker
        queue = self.queue
        if worker.status not in WORKER_ANY_RUNNING:
            # Closing: as the pool's asyncio tasks are cancelled then, queued tasks
            # are dropped, not run, and nothing more reaches the state machine.
            queue.clear()
            return
        self.batch_count += 1
        watchdog = self.watchdog
        watchdog.arm()
        try:
            deadline = timemod.perf_counter() + self.batch_time
            while queue:
                if self._run(*queue.popleft()) is _EXITED:
                    return  # the worker's loop ends (SystemExit/KeyboardInterrupt)
                if timemod.perf_counter() >= deadline:
                    break  # the rest stay queued, in order, for the next batch
        finally:
            watchdog.busy = False
        if queue and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _run(self, key, span_id, stimulus_id, ledger) -> None:
        """One task inline, as BaseWorker's asynchronous instruction would run it:
        execute, then ``handle_stimulus`` of its event and its metrics, each metered
        into its ledger."""
        worker = self.worker
        # As ledger.record(key="async-instruction") around execute() and then around
        # handle_stimulus(), once for both (they follow each other here).
        token = METER_CALLBACKS.set(runner.ledger_callbacks(ledger))
        try:
            event = self._execute(key)
            if event is _EXITED:
                return _EXITED
            if event is not _TO_POOL:
                worker.handle_stimulus(event)
        finally:
            METER_CALLBACKS.reset(token)
        if event is _TO_POOL:
            self.execution.pool.start(key, span_id, stimulus_id)
            return
        worker._finalize_metrics(event, ledger, span_id)

    def _execute(self, key):
        """Run one task inline, as ``Worker.execute`` runs one in the pool; its
        Execute*Event or RescheduleEvent, or ``_TO_POOL`` to run it in the pool."""
        worker = self.worker
        if worker.status not in WORKER_ANY_RUNNING:
            return runner.closing_event(key)
        ts = worker.state.tasks[key]
        if ts.prefix in self.admission.demoted:  # demoted while this one waited
            return _TO_POOL
        run_id = ts.run_id
        try:
            if worker.state.validate:
                assert not ts.waiting_for_data
                assert ts.state in ("executing", "cancelled", "resumed"), ts
            assert ts.run_spec is not None
            data = runner.gather_inputs(worker, ts)
            annotations = ts.annotations
            span_ctx = (
                dask.annotate(span=annotations["span"])
                if annotations and "span" in annotations
                else None
            )
            worker.active_keys.add(key)
            if span_ctx is not None:
                span_ctx.__enter__()
            pool_thread_state.executor = _NO_THREAD_POOL
            guard = self.watchdog.guard
            try:
                ts.start_time = runner.time()
                started = timemod.perf_counter()  # the "executor" meter
                result, metered = contextvars.copy_context().run(
                    runner.run_task_metered, ts.run_spec, data, worker.execution_state,
                    key, worker.active_threads, worker.active_threads_lock,
                    worker.scheduler_delay, guard,
                )
                runner.digest_executor(started, metered)
            except (SystemExit, KeyboardInterrupt) as exc:
                # out of the event loop as from the pool, i.e. as stock's task
                self.execution.pool.raise_as_stock(key, exc)
                return _EXITED
            finally:
                # The event loop's thread is no pool thread: leave nothing behind.
                pool_thread_state.__dict__.pop("executor", None)
                pool_thread_state.__dict__.pop("proceed", None)
                worker.active_keys.discard(key)
                if span_ctx is not None:
                    span_ctx.__exit__(None, None, None)

            own = guard.last_held
            if own > self.watchdog.longest_hold:
                self.watchdog.longest_hold = own
            task_exc = result.get("actual_exception")
            if isinstance(task_exc, (NeedsThread, TakenBack)):
                self._rerun(key, ts.prefix, task_exc)
                return _TO_POOL

            self.inline_count += 1
            by_prefix = self.inline_by_prefix
            by_prefix[ts.prefix] = by_prefix.get(ts.prefix, 0) + 1
            self.admission.learn_inline(ts.prefix, own)
            result["thread"] = self._pool_thread_ident()
            return runner.event_from_result(worker, ts, key, run_id, result)
        except Exception as exc:  # e.g. a dependency that fails to unspill
            return runner.unknown_error_event(ts, key, run_id, exc)

    def _rerun(self, key, prefix: str, exc: BaseException) -> None:
        """``key`` was stopped inline: count it, say so, demote its prefix (so that this
        happens at most once per prefix on this worker)."""
        self.rerun_count += 1
        if isinstance(exc, TakenBack):
            self.takeback_count += 1
            reason = f"taken back from the event loop: it {exc}"
        else:
            self.fallback_count += 1
            reason = str(exc)
        self.admission.demote(prefix, reason, log=False)
        logger.warning(
            "fastworker: task %r was stopped in the event-loop executor and runs again "
            "from the start in the thread pool (%s); tasks %r no longer run inline",
            key, reason, prefix,
        )

    def _pool_thread_ident(self) -> int:
        """A thread of the worker's default pool, named as the thread inline tasks ran
        on (``Worker.threads``: the task stream draws a row per thread)."""
        ident = self._pool_thread
        if ident is None:
            executor = self.worker.executors.get("default")
            threads = getattr(executor, "_threads", None)
            if threads:
                ident = min(t.ident for t in list(threads))
            elif executor is not None and hasattr(executor, "submit"):
                # No pool thread yet: start the first one, as a pool task would.
                ident = executor.submit(threading.get_ident).result()
            else:  # pragma: no cover - a worker without a thread pool
                ident = threading.get_ident()
            self._pool_thread = ident
        return ident

    # --- reporting ------------------------------------------------------------------------

    def report(self) -> dict:
        """What :func:`fastworker.status` shows of the event-loop executor."""
        watchdog = self.watchdog
        return {
            "automatic": self.automatic,
            "take_back": None if watchdog is None else watchdog.mode,
            "take_back_after": self.take_back_after,
            "inline_count": self.inline_count,
            "inline_by_prefix": dict(self.inline_by_prefix),
            "rerun_count": self.rerun_count,
            "takeback_count": self.takeback_count,
            "fallback_count": self.fallback_count,
            "longest_hold": 0.0 if watchdog is None else watchdog.longest_hold,
            "stuck": None if watchdog is None else watchdog.stuck,
            "last_stuck": None if watchdog is None else watchdog.last_stuck,
            "demoted": dict(self.admission.demoted_why),
        }

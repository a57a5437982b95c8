"""The fast pool path: every task's code in the worker's own thread pool, as in
stock, with less work around it.

Stock hands each ``Execute`` instruction to an asyncio task whose coroutine copies the
context, calls ``loop.run_in_executor`` (a concurrent future chained to an asyncio
future), wakes the loop once per finished task, resumes the coroutine, and finishes
the asyncio task through a done callback: four or five loop iterations and a dozen
objects per task. Here:

- each task is submitted when its instruction is handled, to the same executor stock
  would use (queued as a work item of that executor: the same ``Dask-Default-Threads``
  threads take it, ``secede`` and ``rejoin`` work as in stock), after what
  ``Worker.execute`` does first (its inputs read from ``worker.data``, the span
  entered, ``active_keys``, the start time);
- in the pool thread, the task runs in a copy of the loop's context (so what it does
  to context variables stays its own, as with ``run_in_executor_with_context``), with
  stock's thread state and metering (:func:`fastworker.runner.run_task_metered`);
- each finished task is handed back with one loop callback, scheduled from its
  thread after whatever the task itself scheduled there (a ``secede()``'s
  ``SecedeEvent``: the loop must see that first, as it does in stock), and handled as
  ``Worker.execute`` and ``BaseWorker._finish_async_instruction`` would: its
  ``executor`` metric, ``Worker.threads``, digests, its event through
  ``handle_stimulus`` and ``_finalize_metrics``, all recorded in the task's own
  ``DelayedMetricsLedger`` started when the instruction was.

Nothing runs user code anywhere else, nothing interrupts it, nothing runs it twice.
The caller (:mod:`fastworker.execution`) sends here only what stock would run in a
``distributed`` thread pool with distributed's own ``Worker.execute`` and ``_run_task``;
everything else (coroutine tasks, actors, other executors, a subclass's ``execute``)
keeps stock's path.

Worker close: while tasks are on this path, one asyncio future stands for them in
``worker._async_instructions``; ``BaseWorker.close`` cancels it as it cancels stock's
asyncio tasks, and then, as there, tasks still running or queued are dropped (their
results never reach the state machine), with stock's warning for each.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
from typing import Any

import dask
from distributed import worker_state_machine as _wsm
from distributed.metrics import DelayedMetricsLedger
from distributed.worker import WORKER_ANY_RUNNING
from distributed.worker_state_machine import BaseWorker

from fastworker import runner
from fastworker.runner import METER_CALLBACKS

#: Stock's logger for an asynchronous instruction that ends cancelled or raising
#: (distributed.worker.state_machine).
_wsm_logger = _wsm.logger


def _wrapper_code():
    """The code of the coroutine that stock's ``_start_async_instruction`` wraps each
    instruction in (its repr names it), or None if this release has none."""
    for const in BaseWorker._start_async_instruction.__code__.co_consts:
        if getattr(const, "co_name", None) == "wrapper":
            return const
    return None


_WRAPPER_CODE = _wrapper_code()


def _task_repr(key, state: str, exc: BaseException | None = None) -> str:
    """What stock's log lines show of the asyncio task of ``Execute(key)`` once done:
    ``<Task cancelled name="execute('x')" coro=<Worker.execute() done, defined at
    .../worker_state_machine.py:N>>``, or ``<Task finished ... exception=...>``."""
    name = f"execute({key!r})"
    coro = ""
    if _WRAPPER_CODE is not None:
        coro = (
            f" coro=<Worker.execute() done, defined at "
            f"{_WRAPPER_CODE.co_filename}:{_WRAPPER_CODE.co_firstlineno}>"
        )
    tail = f" exception={exc!r}" if exc is not None else ""
    return f"<Task {state} name={name!r}{coro}{tail}>"


class _Task:
    """One task on the fast pool path, from its instruction to its event; also the
    work item the pool thread runs (``run()``, as the pool's own work items)."""

    __slots__ = (
        "key", "span_id", "ledger", "callbacks", "ts", "run_id",
        "span_ctx", "started", "context", "run_spec", "data", "result", "metered", "event",
        "path",
    )

    def __init__(self, path, key, span_id, ledger):
        self.path = path
        self.key = key
        self.span_id = span_id
        self.ledger = ledger
        self.event = None
        self.span_ctx = None
        self.ts = None
        self.callbacks = None

    def run(self) -> None:
        """In a pool thread, as the pool's ``_worker`` calls its work items."""
        self.path._run(self)


async def _reraise(exc: BaseException) -> None:
    raise exc


def _submit_to(executor, task: _Task) -> None:
    """Queue ``task`` for one of ``executor``'s threads, as ``executor.submit`` does,
    without the concurrent future nobody waits for: the pool's threads call the
    ``run()`` of each work item they take from its queue."""
    if executor._shutdown:
        executor.submit(task.run)  # raises RuntimeError, as run_in_executor would
        return
    executor._work_queue.put(task)
    executor._adjust_thread_count()


class PoolPath:
    """The fast pool path of one worker (see the module docstring)."""

    def __init__(self, worker: Any, on_pool_run=None):
        self.worker = worker
        #: Called on the loop with (ts, event, ledger) after each run, before its
        #: event is handled (the opt-in executor's admission learns from pool runs).
        self.on_pool_run = on_pool_run
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Tasks started and not yet handled back on the loop.
        self.running: set[_Task] = set()
        #: Stands for this path's tasks in worker._async_instructions (close()).
        self._sentinel: asyncio.Future | None = None
        self.closed = False

    # --- from the state machine's instructions to the pool --------------------------

    def start(self, key, span_id, stimulus_id) -> None:
        """An ``Execute`` instruction (called from ``Worker.handle_stimulus``): the
        task goes to the pool now; an event that needs no thread (the worker closing,
        an error before the run) is handled on a later loop iteration, as an asyncio
        task's would be, never inside the ``handle_stimulus`` that started it."""
        # Metering starts here, as in BaseWorker._start_async_instruction.
        task = _Task(self, key, span_id, DelayedMetricsLedger())
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        self.running.add(task)
        self._hold_for_close()
        if self.worker.status not in WORKER_ANY_RUNNING:
            task.event = runner.closing_event(key)
            self.loop.call_soon(self._handle_later, task)
            return
        self._submit(task)

    def _hold_for_close(self) -> None:
        if self._sentinel is None and not self.closed:
            sentinel = self._sentinel = self.loop.create_future()
            sentinel.add_done_callback(self._sentinel_done)
            self.worker._async_instructions.add(sentinel)

    def _release_for_close(self) -> None:
        sentinel = self._sentinel
        if sentinel is not None and not self.running:
            self._sentinel = None
            self.worker._async_instructions.discard(sentinel)
            sentinel.set_result(None)

    def _sentinel_done(self, sentinel: asyncio.Future) -> None:
        if not sentinel.cancelled():
            return
        # BaseWorker.close(): stock's asyncio tasks are cancelled now; so are ours.
        self.closed = True
        self.worker._async_instructions.discard(sentinel)
        self._sentinel = None
        for task in self.running:
            _wsm_logger.warning(
                "Async instruction for %s ended with CancelledError",
                _task_repr(task.key, "cancelled"),
            )
        self.running.clear()

    def _submit(self, task: _Task) -> None:
        """What ``Worker.execute`` does before ``run_in_executor``, then the pool."""
        worker = self.worker
        key = task.key
        ts = task.ts = worker.state.tasks[key]
        task.run_id = ts.run_id
        callbacks = task.callbacks = runner.ledger_callbacks(task.ledger)
        token = METER_CALLBACKS.set(callbacks)
        try:
            if worker.state.validate:
                assert not ts.waiting_for_data
                assert ts.state in ("executing", "cancelled", "resumed"), ts
            assert ts.run_spec is not None
            task.data = runner.gather_inputs(worker, ts)
            annotations = ts.annotations
            executor = worker.executors[annotations.get("executor", "default")]
            worker.active_keys.add(key)
            if "span" in annotations:
                # Propagate the span, as Worker.execute does (held until the task ends)
                task.span_ctx = dask.annotate(span=annotations["span"])
                task.span_ctx.__enter__()
            task.run_spec = ts.run_spec
            ts.start_time = runner.time()
            task.started = runner.timemod.perf_counter()  # the "executor" meter
            task.context = contextvars.copy_context()
            _submit_to(executor, task)
        except Exception as exc:
            self._leave(task)
            task.event = runner.unknown_error_event(ts, key, task.run_id, exc)
            self.loop.call_soon(self._handle_later, task)
        finally:
            METER_CALLBACKS.reset(token)

    def _handle_later(self, task: _Task) -> None:
        if self.closed:
            return
        self.running.discard(task)
        self._handle(task)
        self._release_for_close()

    # --- in the pool thread -----------------------------------------------------------

    def _run(self, task: _Task) -> None:
        worker = self.worker
        try:
            task.result, task.metered = task.context.run(
                runner.run_task_metered, task.run_spec, task.data, worker.execution_state,
                task.key, worker.active_threads, worker.active_threads_lock,
                worker.scheduler_delay,
            )
        except BaseException as exc:  # SystemExit/KeyboardInterrupt, as stock: re-raised
            task.result = exc
            task.metered = 0.0
        task.data = task.context = None
        # One loop callback per task, scheduled from this thread after everything the
        # task itself scheduled on the loop (a secede() schedules its SecedeEvent):
        # the loop handles them in that order, as stock's futures are.
        try:
            self.loop.call_soon_threadsafe(self._handle_finished, task)
        except RuntimeError:  # the loop is closed: the worker is gone
            pass

    # --- back on the loop ---------------------------------------------------------------

    def _handle_finished(self, task: _Task) -> None:
        if self.closed:
            return
        self.running.discard(task)
        result = task.result
        if isinstance(result, BaseException):
            # SystemExit or KeyboardInterrupt from the task, raised as stock's
            # asyncio task raises it: from an asyncio task named as stock's, whose
            # step lets it out of the loop and whose done callback (scheduled as it
            # leaves) logs it and raises it again on the loop's next run (asyncio.run
            # cancelling the remaining tasks). So the worker's process ends there,
            # before its own tasks can close it gracefully, and a Nanny restarts it
            # as it restarts stock's. (Raised from here directly, one loop iteration
            # earlier than stock, the worker's stream task could get to close the
            # worker first, and the Nanny then closed instead of restarting it.)
            self._leave(task)
            self._release_for_close()
            self.raise_as_stock(task.key, result)
            return
        token = METER_CALLBACKS.set(task.callbacks)
        try:
            runner.digest_executor(task.started, task.metered)
            self._leave(task)
            task.event = runner.event_from_result(
                self.worker, task.ts, task.key, task.run_id, result
            )
        finally:
            METER_CALLBACKS.reset(token)
        self._handle(task)
        self._release_for_close()

    def raise_as_stock(self, key, exc: BaseException) -> None:
        """Let ``exc`` (SystemExit or KeyboardInterrupt from ``key``'s code) out of the
        event loop as stock's asyncio task of ``Execute(key)`` would (see
        ``_handle_finished``); also used by the opt-in event-loop executor."""
        loop = self.loop or asyncio.get_running_loop()
        raising = loop.create_task(_reraise(exc), name=f"execute({key!r})")
        self.worker._async_instructions.add(raising)  # as stock's, until it ends
        raising.add_done_callback(functools.partial(self._unhandled, key))

    def _unhandled(self, key, raising: asyncio.Task) -> None:
        """``BaseWorker._finish_async_instruction`` for a task that raised
        SystemExit or KeyboardInterrupt: stock's log line, and the exception again."""
        self.worker._async_instructions.discard(raising)
        if raising.cancelled():  # the worker closed first, as in stock
            _wsm_logger.warning(
                "Async instruction for %s ended with CancelledError",
                _task_repr(key, "cancelled"),
            )
            return
        exc = raising.exception()
        _wsm_logger.error(
            "Unhandled exception in async instruction for %s",
            _task_repr(key, "finished", exc), exc_info=exc,
        )
        raise exc

    def _leave(self, task: _Task) -> None:
        self.worker.active_keys.discard(task.key)
        if task.span_ctx is not None:
            task.span_ctx.__exit__(None, None, None)
            task.span_ctx = None

    def _handle(self, task: _Task) -> None:
        """``BaseWorker._finish_async_instruction`` for the task's event."""
        event = task.event
        if self.on_pool_run is not None and task.ts is not None:
            self.on_pool_run(task.ts, event, task.ledger)
        worker = self.worker
        token = METER_CALLBACKS.set(task.callbacks if task.callbacks is not None
                                    else runner.ledger_callbacks(task.ledger))
        try:
            worker.handle_stimulus(event)
        finally:
            METER_CALLBACKS.reset(token)
        worker._finalize_metrics(event, task.ledger, task.span_id)

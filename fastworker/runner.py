"""One task run as ``distributed.Worker.execute`` runs it, in pieces that both of
fastworker's execution paths share (:mod:`fastworker.pool`, the default, and the
opt-in :mod:`fastworker.inline`):

- :func:`gather_inputs`: the task's inputs read from ``worker.data`` (where a
  SpillBuffer meters ``memory-read``), a ``disk-read`` start/stop if that was slow;
- :func:`run_task_metered`: what ``_run_task`` does in a pool thread, with the same
  result message, thread state, worker context variable, ``active_threads`` entry and
  fine performance metrics (``thread-cpu``, ``thread-noncpu``, each less what the
  task's own code metered), in one frame instead of six context managers;
- :func:`event_from_result` and :func:`unknown_error_event`: the event stock returns
  for that result, with stock's log lines on stock's logger.

Everything here is distributed 2024.11.0-2026.8.0's behaviour; nothing here runs user
code anywhere else than where the caller runs it.
"""
from __future__ import annotations

import logging
import threading
import time as timemod
from typing import Any

import distributed.worker as _worker_module
from distributed.sizeof import safe_sizeof as sizeof  # as stock: a failing __sizeof__ is logged, not raised
from distributed.core import error_message
from distributed.exceptions import Reschedule
from distributed.metrics import context_meter, thread_time, time
from distributed.utils import thread_state
from distributed.worker import Worker as _StockWorker
from distributed.worker import _worker_cvar
from distributed.worker_state_machine import (
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    RescheduleEvent,
)

#: Stock's own logger for what Worker.execute logs (``Compute Failed``...).
stock_logger = logging.getLogger("distributed.worker")

STOCK_EXECUTE = _StockWorker.execute
STOCK_RUN_TASK = _worker_module._run_task
#: The context variable behind ``context_meter.add_callback`` (what
#: ``DelayedMetricsLedger.record`` sets).
METER_CALLBACKS = context_meter._callbacks
#: The key under which BaseWorker records an asynchronous instruction's metrics.
LEDGER_KEY = "async-instruction"

#: ``thread_state`` attributes a task run sets (and restores after).
_THREAD_STATE_KEYS = ("start_time", "execution_state", "key")

#: A dependency read that takes longer than this is recorded as a ``disk-read``.
DISK_READ_AFTER = 0.005


#: ``data[key]``: the compiled core's ``data_get`` (a SpillBuffer read without its
#: Python layers, fastworker/wsm/spill.pxi), looked up on first use so that importing
#: fastworker on a release it refuses does not load the compiled core.
_data_get = None


def _data_getter():
    global _data_get
    try:
        from fastworker.workerstate import data_get
    except Exception:  # pragma: no cover - the compiled core unbuilt: stock's read
        from operator import getitem as data_get
    _data_get = data_get
    return data_get


def uses_stock_run_task() -> bool:
    """Whether ``distributed.worker._run_task`` is distributed's own (a patched one,
    looked up at each run as ``Worker.execute`` does, keeps stock's path)."""
    return _worker_module._run_task is STOCK_RUN_TASK


def ledger_callbacks(ledger) -> dict:
    """The meter callbacks in force while ``ledger`` records, as
    ``ledger.record(key="async-instruction")`` sets them."""
    callbacks = METER_CALLBACKS.get().copy()
    callbacks[LEDGER_KEY] = ledger._callback
    return callbacks


def gather_inputs(worker: Any, ts: Any) -> dict:
    """The task's inputs from ``worker.data``, as ``Worker.execute`` reads them (the
    caller keeps tasks that read actors on stock's path)."""
    start = time()
    data = {}
    worker_data = worker.data
    data_get = _data_get or _data_getter()
    for dep in ts.dependencies:
        dkey = dep.key
        data[dkey] = data_get(worker_data, dkey)  # worker_data[dkey], metered "memory-read" by a SpillBuffer
    stop = time()
    if stop - start > DISK_READ_AFTER:
        ts.startstops.append({"action": "disk-read", "start": start, "stop": stop})
    return data


def run_task_metered(task, data, execution_state, key, active_threads, lock, delay, guard=None):
    """``_run_task(task, data, ...)`` in one frame: returns ``(msg, metered)``, the
    result message of stock's runner and the seconds metered inside it (the task's
    own metered seconds plus ``thread-cpu`` and ``thread-noncpu``), which the caller
    subtracts from its ``executor`` meter as distributed's nested meters would.

    ``guard`` (the opt-in event-loop executor's :class:`fastworker.takeback.Guard`)
    marks the call for its watchdog; in a pool thread the task is called as is.
    """
    ident = threading.get_ident()
    with lock:
        active_threads[ident] = key
    state = thread_state.__dict__
    old = {k: state[k] for k in _THREAD_STATE_KEYS if k in state}
    state["start_time"] = time()
    state["execution_state"] = execution_state
    state["key"] = key
    worker_token = _worker_cvar.set(execution_state["worker"])
    # Seconds metered by the task itself: they reach every callback as in stock, and
    # are subtracted from the meters around it.
    inner: list[float] = []

    def nested(label, value, unit):
        if unit == "seconds":
            inner.append(value)

    with_nested = METER_CALLBACKS.get().copy()
    with_nested[nested] = nested
    meter_token = METER_CALLBACKS.set(with_nested)
    wall_start = time()
    cpu_start = thread_time()
    try:
        try:
            result = task(data) if guard is None else guard.call(task, data, key)
        except (SystemExit, KeyboardInterrupt):
            raise  # as in the pool: these stop the worker
        except BaseException as exc:  # noqa: B036 - as the pool: user code may raise anything
            msg = error_message(exc)
            msg["op"] = "task-erred"
            msg["actual_exception"] = exc
        else:
            msg = {
                "op": "task-finished",
                "status": "OK",
                "result": result,
                "nbytes": sizeof(result),
                "type": type(result) if result is not None else None,
            }
    finally:
        cpu_stop = thread_time()
        wall_stop = time()
        METER_CALLBACKS.reset(meter_token)
        own = sum(inner)
        cpu = max(0.0, cpu_stop - cpu_start - own)
        digest = context_meter.digest_metric
        digest("thread-cpu", cpu, "seconds")
        noncpu = max(0.0, wall_stop - wall_start - own - cpu)
        digest("thread-noncpu", noncpu, "seconds")
        _worker_cvar.reset(worker_token)
        for k in _THREAD_STATE_KEYS:
            if k in old:
                state[k] = old[k]
            else:
                state.pop(k, None)
        with lock:
            del active_threads[ident]
    msg["start"] = wall_start + delay
    msg["stop"] = wall_stop + delay
    msg["thread"] = ident
    return msg, own + cpu + noncpu


def digest_executor(started: float, metered: float) -> None:
    """The ``executor`` metric of ``context_meter.meter("executor")`` entered at
    ``started`` (perf_counter) and left now, ``metered`` seconds metered inside."""
    context_meter.digest_metric(
        "executor", max(0.0, timemod.perf_counter() - started - metered), "seconds"
    )


def event_from_result(worker: Any, ts: Any, key, run_id: int, result: dict):
    """What ``Worker.execute`` returns for ``result`` (``Worker.threads`` and the
    ``task-duration`` digest updated, ``Compute Failed`` logged as stock logs it)."""
    worker.threads[key] = result["thread"]
    if result["op"] == "task-finished":
        if worker.digests is not None:
            worker.digests["task-duration"].add(max(0, result["stop"] - result["start"]))
        return ExecuteSuccessEvent(
            key=key,
            run_id=run_id,
            value=result["result"],
            start=result["start"],
            stop=result["stop"],
            nbytes=result["nbytes"],
            type=result["type"],
            stimulus_id=f"task-finished-{time()}",
        )
    if isinstance(result["actual_exception"], Reschedule):
        return RescheduleEvent(key=key, stimulus_id=f"reschedule-{time()}")
    if ts.state in ("executing", "long-running", "resumed"):
        stock_logger.error(
            "Compute Failed\nKey:       %s\nState:     %s\nTask:  %s\n"
            "Exception: %r\nTraceback: %r\n",
            key, ts.state, repr(ts.run_spec)[:1000],
            result["exception_text"], result["traceback_text"],
        )
    return ExecuteFailureEvent.from_exception(
        result,
        key=key,
        run_id=run_id,
        start=result["start"],
        stop=result["stop"],
        stimulus_id=f"task-erred-{time()}",
    )


def unknown_error_event(ts: Any, key, run_id: int, exc: Exception):
    """Stock's event (and log line) for an error around the task rather than in it
    (an input that fails to unspill, an invalid executor...)."""
    if ts.state in ("executing", "long-running"):
        stock_logger.error(f"Exception during execution of task {key!r}", exc_info=True)
    return ExecuteFailureEvent.from_exception(
        exc, key=key, run_id=run_id, stimulus_id=f"execute-unknown-error-{time()}"
    )


def closing_event(key):
    """Stock's event for a task asked to run while the worker closes."""
    return RescheduleEvent(key=key, stimulus_id=f"worker-closing-{time()}")

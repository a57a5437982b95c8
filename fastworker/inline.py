"""The in-process executor: tiny tasks run on the worker's event loop, in batches.

Handing a trivial task to the worker's thread pool and back costs more than the
whole state machine does for it. :class:`InlineExecution`, installed on a worker
that runs the compiled state machine, takes the ``Execute`` instructions of tasks
known to be tiny and runs them directly in the event loop's thread, one after the
other, each followed by its ``handle_stimulus`` (whose new ``Execute`` instructions
join the queue), until the batch's time budget is spent; then it yields to the event
loop (heartbeats, comms, the dashboard) before the next batch.

Which tasks run inline:

- tasks annotated ``dask.annotate(executor="inline")``;
- *automatic selection* (``fastworker.inline.automatic``): tasks of a prefix whose
  runs in the thread pool on this worker showed that it is tiny (mean run time below
  ``fastworker.inline.max-duration``) and does not wait (thread CPU time close to
  wall time in most of at least ``fastworker.inline.admit-after`` runs), and that was
  never seen calling back into the worker (``get_client``, ``secede``,
  ``worker_client``, ``sync()`` or anything else that schedules work on the loop);

and never: coroutine tasks, actors, tasks that read actors, tasks of a prefix that
was demoted.

Liveness. A task that runs inline holds the event loop; one that waits for
something only the loop brings about (a spill, a transfer, a message, a task not
started yet) would hold it forever. No inline task holds it longer than
``fastworker.inline.take-back-after`` (default 50 ms, garbage collections not
counted): a watchdog thread then *takes it back* (:mod:`fastworker.takeback`), and the
task runs again from the start in the thread pool. A task that asks for a thread
(``secede``, ``get_client``, ``sync()`` against the worker's loop) is taken back at
once. Either way its prefix is demoted for the life of the worker: a re-run happens
at most once per prefix per worker, is counted and logged at WARNING. Dask runs
tasks at least once (a task is already run again when its worker dies), and a
re-run task's effects before the point where it was stopped happen twice, as then.

Automatic selection is on where a task blocked in a wait can be taken back: where
the event loop runs in the process's main thread (``dask worker``, Nanny worker
processes), the watchdog interrupts waits with a signal. Elsewhere (a worker inside
a process whose loop runs in another thread) only a task that returns to Python code
now and then can be taken back, and automatic selection is off unless forced.

Everything else is as in the thread pool: results, exceptions and tracebacks, fine
performance metrics (``execute`` digests and span metrics, the same labels and
units: ``executor``, ``thread-cpu``, ``thread-noncpu``, ``memory-read``,
``other``...), ``task-duration`` digests, ``get_worker()``, task start/stop times and
startstops, ``Worker.active_keys``, ``Worker.threads`` (one of the worker's pool
threads, so the task stream shows no extra row), resource accounting (the state
machine is unchanged), cancellation (a cancelled task still runs to its end, as
stock), contextvars (each task runs in a copy of the context).
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import sys
import threading
import time as timemod
import weakref
from collections import deque
from typing import Any

import dask
from dask.utils import key_split, parse_timedelta
from distributed.core import Status
from distributed.exceptions import Reschedule
from dask.sizeof import sizeof
from distributed.core import error_message
from distributed.metrics import DelayedMetricsLedger, context_meter, thread_time, time
from distributed.threadpoolexecutor import ThreadPoolExecutor
from distributed.threadpoolexecutor import thread_state as pool_thread_state
from distributed.utils import thread_state
import distributed.worker as _worker_module
from distributed.worker import Worker as _StockWorker
from distributed.worker import _worker_cvar
from distributed.worker_state_machine import (
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    RescheduleEvent,
)

from fastworker import config, takeback
from fastworker.takeback import Guard, GuardedCall, TakenBack

logger = logging.getLogger("distributed.fastworker")

RUNNING = (Status.running, Status.paused, Status.closing_gracefully)
_FINISHED = (Status.closed, Status.failed, Status.closing)

#: A pool run "waited" when its thread spent more time off the CPU than on it, and
#: more than this: a pure Python task of a few hundred microseconds does not.
WAIT_FLOOR = 0.0005


class NeedsThread(BaseException):
    """Raised inside an inline task that asked for what only a thread can give
    (``secede``, ``get_client``, ``sync()`` against the worker's own loop): the task is
    re-run in the thread pool."""


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

_STOCK_EXECUTE = _StockWorker.execute
_STOCK_RUN_TASK = _worker_module._run_task
#: The context variable behind context_meter.add_callback (what ledger.record sets).
_METER_CALLBACKS = context_meter._callbacks

#: Handed back by InlineExecution._execute: run this task in the pool instead.
_TO_POOL = object()


def _signal_number(name: str) -> int:
    """``"SIGRTMIN+4"``, ``"SIGUSR2"`` or a number, as a signal number (0: none)."""
    name = str(name).strip()
    if not name or name.lower() in ("none", "false", "0"):
        return 0
    if name.isdigit():
        return int(name)
    base, _, offset = name.partition("+")
    number = getattr(signal, base.strip(), None)
    if number is None:
        return 0
    return int(number) + (int(offset) if offset else 0)


class _Watchdog:
    """One per event loop thread: the :class:`~fastworker.takeback.Guard` of the inline
    task running there, and a thread that takes it back when it holds the loop for
    too long and warns when it cannot.

    The thread runs only while batches do: :meth:`arm` (at each batch) starts it if
    needed, and it ends a quarter of a second after the last batch, so that an idle
    or closed worker leaves no thread behind.
    """

    #: Seconds without a batch after which the watchdog thread ends.
    IDLE_EXIT = 0.25

    def __init__(self, thread_id: int, signum: int, bound: float, native_id: int | None = None):
        self.guard = Guard(thread_id, signum)
        #: Linux: where the kernel says how long the loop's thread waited for a CPU.
        self._schedstat = (
            f"/proc/self/task/{native_id}/schedstat" if native_id is not None else None
        )
        self._seen: tuple[int, int] = (-1, 0)  # (task serial, its first wait reading)
        self.signum = signum
        self.bound = bound
        self.mode = "signal" if signum else "async-exception"
        #: True while a batch runs on the loop.
        self.busy = False
        #: Batches started so far (the thread watches it move).
        self.batches = 0
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Longest time one inline task held the loop (seconds, GC left out).
        self.longest_hold = 0.0
        #: The task that holds the loop and could not be taken back (key, seconds), or
        #: None; the most recent such case is kept in ``last_stuck``.
        self.stuck: dict | None = None
        self.last_stuck: dict | None = None
        self._warned: tuple[int, float] = (0, 0.0)

    def arm(self) -> None:
        """A batch starts: make sure the watchdog thread runs."""
        self.busy = True
        self.batches += 1  # before the lock: an exiting thread sees it and stays
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(
                    target=_watch, args=(weakref.ref(self),),
                    name="fastworker-inline-watchdog", daemon=True,
                )
                self.thread.start()

    def _cpu_wait_ns(self) -> int | None:
        """Nanoseconds the loop's thread has spent runnable but waiting for a CPU."""
        path = self._schedstat
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            self._schedstat = None
            return None

    def check(self) -> None:
        guard = self.guard
        serial = guard.serial
        discount = 0.0
        if guard.running:
            # A machine so busy that the loop's thread waits for a CPU does not make
            # a task block the loop: that wait is not counted (from the first poll
            # that saw the task on; Linux).
            waited = self._cpu_wait_ns()
            if waited is not None:
                seen_serial, seen_wait = self._seen
                if seen_serial != serial:
                    self._seen = (serial, waited)
                else:
                    discount = (waited - seen_wait) * 1e-9
        state = guard.check(self.bound, discount, serial)
        if state is None:
            self.stuck = None
            return
        serial, key, held, fired = state
        if fired and held >= 4 * self.bound:
            # Fired at, and still running: it is blocked where no exception reaches it.
            last_serial, last_held = self._warned
            if serial != last_serial or held >= max(2 * last_held, last_held + 10.0):
                self._warned = (serial, held)
                self.stuck = self.last_stuck = {"key": key, "held": held}
                logger.warning(
                    "fastworker: inline task %r has held the event loop for %.2f s and "
                    "could not be taken back (it is blocked inside C code that neither "
                    "returns nor handles signals); fastworker.inline.take-back-after is "
                    "%.3f s. Annotate such tasks with another executor or set "
                    "fastworker.inline.automatic: false",
                    key, held, self.bound,
                )


def _watch(ref) -> None:
    """The watchdog thread: polls four times per bound while batches run; ends after
    :attr:`_Watchdog.IDLE_EXIT` seconds without one."""
    try:
        _watch_loop(ref)
    finally:
        watchdog = ref()
        if watchdog is not None:
            with watchdog._lock:
                if watchdog.thread is threading.current_thread():
                    watchdog.thread = None


def _watch_loop(ref) -> None:
    idle_since, idle_batches = None, -1
    while True:
        watchdog = ref()
        if watchdog is None:
            return
        period = watchdog.bound / 4
        del watchdog
        timemod.sleep(period)
        watchdog = ref()
        if watchdog is None:
            return
        try:
            watchdog.check()
        except Exception:  # pragma: no cover - never expected; keep watching
            logger.exception("fastworker: inline watchdog failed")
        if watchdog.busy or watchdog.guard.running:
            idle_since = None
        else:
            batches = watchdog.batches
            if idle_since is None or batches != idle_batches:
                idle_since, idle_batches = timemod.monotonic(), batches
            elif timemod.monotonic() - idle_since > watchdog.IDLE_EXIT:
                with watchdog._lock:
                    if watchdog.batches == batches and not watchdog.busy:
                        watchdog.thread = None  # the next batch starts another
                        return
        del watchdog


#: The watchdog of each event loop thread (thread id -> _Watchdog).
_WATCHDOGS: dict[int, _Watchdog] = {}
_WATCHDOGS_LOCK = threading.Lock()


def _watchdog_for(thread_id: int, signum: int, bound: float) -> _Watchdog:
    """The watchdog of the calling thread (an event loop's)."""
    with _WATCHDOGS_LOCK:
        watchdog = _WATCHDOGS.get(thread_id)
        if watchdog is None:
            native_id = threading.get_native_id() if sys.platform == "linux" else None
            watchdog = _WATCHDOGS[thread_id] = _Watchdog(thread_id, signum, bound, native_id)
        return watchdog


def _inline_task_here() -> bool:
    """Whether an inline task's own code is running on the calling thread."""
    watchdog = _WATCHDOGS.get(threading.get_ident())
    return watchdog is not None and watchdog.guard.running


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


def _wrap_add_callback(loop: Any) -> None:
    """Watch the worker's IOLoop for tasks that call back into it (``sync()``,
    ``secede``, ``Client`` calls): inline, such a task is taken back at once (it would
    wait for a loop it blocks); in the pool, its prefix is barred from running
    inline."""
    if getattr(loop, "_fastworker_add_callback", False):
        return
    original = loop.add_callback

    def add_callback(callback, *args, **kwargs):
        if _inline_task_here():
            raise NeedsThread("the task called back into the event loop (sync() or add_callback)")
        running = _pool_task_prefix_and_worker()
        if running is not None:
            prefix, worker = running
            inline = getattr(worker, "_fastworker_inline", None)
            if inline is not None:
                inline._bar(prefix, "it calls back into the event loop")
        return original(callback, *args, **kwargs)

    try:
        loop.add_callback = add_callback
        loop._fastworker_add_callback = True
    except AttributeError:  # pragma: no cover - an IOLoop that takes no attributes
        pass


class InlineExecution:
    """Runs a worker's tiny tasks inline; see the module docstring.

    Installed with :meth:`install` on a started or starting ``distributed.Worker``
    (it wraps three of the worker's methods on the instance). Counters for tests,
    benchmarks and :func:`fastworker.status`: ``inline_count`` (tasks finished inline),
    ``rerun_count`` (tasks stopped inline and run again in the pool),
    ``takeback_count`` (of those, taken back by the watchdog), ``fallback_count`` (of
    those, because they asked for a thread), ``batch_count``; ``durations`` (prefix ->
    mean measured run time, seconds), ``demoted`` (prefixes that no longer run inline)
    and ``demoted_why`` (prefix -> reason).
    """

    def __init__(
        self,
        worker: Any,
        *,
        max_duration: float,
        batch_time: float,
        take_back_after: float = 0.05,
        automatic: Any = "auto",
        admit_after: int = 4,
        take_back_signal: str = "SIGRTMIN+4",
    ):
        self.worker = worker
        self.max_duration = max_duration
        self.batch_time = batch_time
        self.take_back_after = take_back_after
        self.automatic_setting = automatic
        self.admit_after = admit_after
        self.take_back_signal = take_back_signal
        self.durations: dict[str, float] = {}
        #: prefix -> [pool runs that did not wait, pool runs that waited]
        self.pool_runs: dict[str, list[int]] = {}
        self.demoted: set[str] = set()
        self.demoted_why: dict[str, str] = {}
        self.strikes: dict[str, float] = {}
        self.queue: deque[tuple[Any, str | None, str, DelayedMetricsLedger]] = deque()
        self.scheduled = False
        #: Whether measured prefixes are chosen automatically (decided on the loop).
        self.automatic: bool | None = None
        self.watchdog: _Watchdog | None = None
        self.inline_count = 0
        #: prefix -> tasks finished inline
        self.inline_by_prefix: dict[str, int] = {}
        self.rerun_count = 0
        self.takeback_count = 0
        self.fallback_count = 0
        self.batch_count = 0
        self._pool_thread: int | None = None
        # Only a worker that runs distributed's own execute() on distributed's own
        # thread pool: a subclass that overrides execute(), or another default
        # executor, keeps every task where it would run them.
        self._plain = type(worker).execute is _STOCK_EXECUTE and type(
            worker.executors.get("default")
        ) is ThreadPoolExecutor
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
        get = config.get
        if not get("fastworker.inline.enabled"):
            return None
        self = cls(
            worker,
            max_duration=parse_timedelta(get("fastworker.inline.max-duration")),
            batch_time=parse_timedelta(get("fastworker.inline.batch-time")),
            take_back_after=parse_timedelta(get("fastworker.inline.take-back-after")),
            automatic=get("fastworker.inline.automatic"),
            admit_after=int(get("fastworker.inline.admit-after")),
            take_back_signal=get("fastworker.inline.take-back-signal"),
        )
        worker._start_async_instruction = self._start_async_instruction
        worker._finish_async_instruction = self._finish_async_instruction
        worker._get_client = self._get_client_guard
        worker._fastworker_inline = self
        takeback.install_gc_clock()
        return self

    def _setup_on_loop(self) -> None:
        """First call on the event loop's thread: choose how tasks are taken back
        there, start its watchdog, decide on automatic selection."""
        thread_id = threading.get_ident()
        signum = 0
        wanted = _signal_number(self.take_back_signal)
        if wanted and threading.current_thread() is threading.main_thread():
            existing = _WATCHDOGS.get(thread_id)
            if existing is not None:
                signum = existing.signum
            elif takeback.install_signal_handler(wanted):
                signum = wanted
        self.watchdog = _watchdog_for(thread_id, signum, self.take_back_after)
        setting = self.automatic_setting
        if isinstance(setting, str) and setting.lower() == "auto":
            self.automatic = self.watchdog.mode == "signal"
        else:
            self.automatic = bool(setting) and str(setting).lower() not in ("false", "no", "0")
        if self.automatic:
            why = ""
        elif isinstance(setting, str) and setting.lower() == "auto":
            why = (
                " (off: the event loop does not run in the main thread, or the signal "
                f"{self.take_back_signal} is taken, so a task blocked in a wait could not "
                "be taken back; set fastworker.inline.automatic: true to force it)"
            )
        else:
            why = " (off: fastworker.inline.automatic is false)"
        logger.info(
            "fastworker: in-process executor on %s: automatic selection %s%s; tasks "
            "holding the loop for %.0f ms are taken back by %s",
            _worker_name(self.worker), "on" if self.automatic else "off", why,
            self.take_back_after * 1000, self.watchdog.mode,
        )
        try:
            _wrap_add_callback(self.worker.loop)
        except Exception:  # pragma: no cover - a worker without a tornado loop
            pass

    # --- the worker's methods, wrapped --------------------------------------------------

    def _start_async_instruction(self, task_name, func, /, *args, span_id=None, **kwargs):
        if self.automatic is None:
            self._setup_on_loop()
        if getattr(func, "__func__", None) is _STOCK_EXECUTE and self._plain and self._wants(args[0]):
            # Metering starts here, as in BaseWorker._start_async_instruction.
            self.queue.append((args[0], span_id, kwargs["stimulus_id"], DelayedMetricsLedger()))
            if not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._drain)
            return
        self._start(task_name, func, *args, span_id=span_id, **kwargs)

    def _finish_async_instruction(self, task, ledger, span_id):
        # Learn from the thread pool's runs: how long, whether they waited or seceded.
        if not task.cancelled() and task.exception() is None:
            stim = task.result()
            if isinstance(stim, (ExecuteSuccessEvent, ExecuteFailureEvent)) and stim.stop:
                ts = self.worker.state.tasks.get(stim.key)
                if ts is not None:
                    if ts.state == "long-running" or ts.previous == "long-running":
                        self._bar(ts.prefix, "it secedes")
                    else:
                        self._pool_measured(ts.prefix, stim.stop - stim.start, ledger.metrics)
        self._finish(task, ledger, span_id)

    def _get_client_guard(self, *args, **kwargs):
        if _inline_task_here():
            raise NeedsThread("get_client() in a task run inline")
        running = _pool_task_prefix_and_worker()
        if running is not None and running[1] is self.worker:
            self._bar(running[0], "it calls get_client()")
        return self._get_client(*args, **kwargs)

    # --- which tasks --------------------------------------------------------------------

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
        if not self.automatic:
            return False
        mean = self.durations.get(prefix)
        if mean is None or mean >= self.max_duration:
            return False
        runs = self.pool_runs.get(prefix)
        return runs is not None and runs[0] >= self.admit_after and runs[0] >= 2 * runs[1]

    def _pool_measured(self, prefix: str, duration: float, metrics) -> None:
        self._measured(prefix, duration)
        cpu = noncpu = 0.0
        for label, value, unit in metrics:
            if label == "thread-cpu":
                cpu += value
            elif label == "thread-noncpu":
                noncpu += value
        runs = self.pool_runs.get(prefix)
        if runs is None:
            runs = self.pool_runs[prefix] = [0, 0]
        runs[noncpu > cpu and noncpu > WAIT_FLOOR] += 1

    def _measured(self, prefix: str, duration: float) -> None:
        mean = self.durations.get(prefix)
        # A slowly moving mean of clipped samples: one preempted or GC-paused run
        # does not swing it, a prefix that is really slower does within a few tasks.
        sample = min(duration, 2 * self.max_duration)
        self.durations[prefix] = sample if mean is None else 0.9 * mean + 0.1 * sample

    def _demote(self, prefix: str, why: str, *, log: bool = True) -> None:
        if prefix not in self.demoted:
            self.demoted.add(prefix)
            self.demoted_why[prefix] = why
            if log:
                logger.info("fastworker: tasks %r no longer run inline: %s", prefix, why)

    def _bar(self, prefix: str, why: str) -> None:
        """A pool run showed that ``prefix`` must never run inline."""
        if prefix not in self.demoted:
            self._demote(prefix, why, log=False)
            logger.debug("fastworker: tasks %r will not run inline: %s", prefix, why)

    # --- batches -------------------------------------------------------------------------

    def _drain(self) -> None:
        """Run queued tasks, each followed by its ``handle_stimulus``, until the queue
        is empty or the batch's time budget is spent; then yield."""
        self.scheduled = False
        worker = self.worker
        queue = self.queue
        if worker.status not in RUNNING:
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
                self._run(*queue.popleft())
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
        callbacks = _METER_CALLBACKS.get().copy()
        callbacks["async-instruction"] = ledger._callback
        token = _METER_CALLBACKS.set(callbacks)
        try:
            event = self._execute(key)
            if event is not _TO_POOL:
                worker.handle_stimulus(event)
        finally:
            _METER_CALLBACKS.reset(token)
        if event is _TO_POOL:
            self._start(
                f"execute({key!r})", worker.execute, key,
                span_id=span_id, stimulus_id=stimulus_id,
            )
            return
        worker._finalize_metrics(event, ledger, span_id)

    def _execute(self, key):
        """Run one task inline, as ``Worker.execute`` runs one in the pool; its
        Execute*Event or RescheduleEvent, or ``_TO_POOL`` to run it in the pool."""
        worker = self.worker
        if worker.status not in RUNNING:
            return RescheduleEvent(key=key, stimulus_id=f"worker-closing-{time()}")
        state = worker.state
        ts = state.tasks[key]
        if ts.prefix in self.demoted:  # demoted while this one waited in the queue
            return _TO_POOL
        run_id = ts.run_id
        try:
            if state.validate:
                assert not ts.waiting_for_data
                assert ts.state in ("executing", "cancelled", "resumed"), ts
            assert ts.run_spec is not None
            start = time()
            data = {}
            for dep in ts.dependencies:
                dkey = dep.key
                data[dkey] = worker.data[dkey]  # metered "memory-read" by a SpillBuffer
            stop = time()
            if stop - start > 0.005:
                ts.startstops.append({"action": "disk-read", "start": start, "stop": stop})

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
            try:
                ts.start_time = time()
                guard = self.watchdog.guard
                run_task = _worker_module._run_task  # looked up now, as Worker.execute does
                if run_task is _STOCK_RUN_TASK:
                    result = contextvars.copy_context().run(
                        _run_task_metered, guard, ts.run_spec, data, worker.execution_state,
                        key, worker.active_threads, worker.active_threads_lock,
                        worker.scheduler_delay,
                    )
                else:  # patched: call it as Worker.execute would, on a guarded callable
                    with context_meter.meter("executor"):
                        result = contextvars.copy_context().run(
                            run_task, GuardedCall(guard, ts.run_spec, key), data,
                            worker.execution_state, key,
                            worker.active_threads, worker.active_threads_lock,
                            worker.scheduler_delay,
                        )
            finally:
                # The event loop's thread is no pool thread: leave nothing behind.
                pool_thread_state.__dict__.pop("executor", None)
                pool_thread_state.__dict__.pop("proceed", None)
                worker.active_keys.discard(key)
                if span_ctx is not None:
                    span_ctx.__exit__(None, None, None)

            prefix = ts.prefix
            duration = max(0.0, result["stop"] - result["start"])
            guard = self.watchdog.guard
            own = guard.last_held
            if own > self.watchdog.longest_hold:
                self.watchdog.longest_hold = own
            task_exc = result.get("actual_exception")
            if isinstance(task_exc, (NeedsThread, TakenBack)):
                self._rerun(key, prefix, task_exc)
                return _TO_POOL

            self.inline_count += 1
            by_prefix = self.inline_by_prefix
            by_prefix[prefix] = by_prefix.get(prefix, 0) + 1
            self._learn_inline(prefix, own)
            worker.threads[key] = self._pool_thread_ident()
            if result["op"] == "task-finished":
                if worker.digests is not None:
                    worker.digests["task-duration"].add(duration)
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
            if isinstance(task_exc, Reschedule):
                return RescheduleEvent(key=key, stimulus_id=f"reschedule-{time()}")
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
                start=result["start"],
                stop=result["stop"],
                stimulus_id=f"task-erred-{time()}",
            )
        except Exception as exc:  # e.g. a dependency that fails to unspill
            if ts.state in ("executing", "long-running"):
                logger.error("Exception during execution of task %r", key, exc_info=True)
            return ExecuteFailureEvent.from_exception(
                exc, key=key, run_id=run_id, stimulus_id=f"execute-unknown-error-{time()}"
            )

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
        self._demote(prefix, reason, log=False)
        logger.warning(
            "fastworker: task %r was stopped in the in-process executor and runs again "
            "from the start in the thread pool (%s); tasks %r no longer run inline",
            key, reason, prefix,
        )

    def _learn_inline(self, prefix: str, own: float) -> None:
        """Demote a prefix whose inline runs turn slow (GC time left out)."""
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
        """What :func:`fastworker.status` shows of the in-process executor."""
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
            "demoted": dict(self.demoted_why),
        }


_THREAD_STATE_KEYS = ("start_time", "execution_state", "key")


def _run_task_metered(guard, task, data, execution_state, key, active_threads, lock, delay):
    """What ``with context_meter.meter("executor"): _run_task(task, data, ...)`` does in
    ``Worker.execute``, in one frame: the same result message (start and stop, result
    or error, nbytes, type, thread), the same thread state, worker context variable
    and ``active_threads`` entry while the task runs, and the same metrics, in the
    same order, with the same values: whatever the task's own code meters, then
    ``thread-cpu``, ``thread-noncpu`` and ``executor`` seconds, each less the seconds
    metered inside it (and not below 0), as distributed's nested meters compute them.
    Stock builds them with six context managers per task; here they are sums.
    """
    executor_start = timemod.perf_counter()
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
    # are subtracted from the three meters around it.
    inner: list[float] = []

    def nested(label, value, unit):
        if unit == "seconds":
            inner.append(value)

    callbacks = _METER_CALLBACKS.get()
    with_nested = callbacks.copy()
    with_nested[nested] = nested
    meter_token = _METER_CALLBACKS.set(with_nested)
    wall_start = time()
    cpu_start = thread_time()
    try:
        try:
            result = guard.call(task, data, key)  # marked for the watchdog while it runs
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
        _METER_CALLBACKS.reset(meter_token)
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
        executor = timemod.perf_counter() - executor_start - own - cpu - noncpu
        digest("executor", max(0.0, executor), "seconds")
    msg["start"] = wall_start + delay
    msg["stop"] = wall_stop + delay
    msg["thread"] = ident
    return msg


def _worker_name(worker: Any) -> str:
    for attr in ("address", "name"):
        try:
            value = getattr(worker, attr)
        except (AttributeError, ValueError):
            continue
        if value:
            return str(value)
    return hex(id(worker))

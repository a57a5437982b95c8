"""Where a fastworker worker runs each task.

:class:`Execution`, installed on every worker that runs the compiled state machine,
takes over ``worker._start_async_instruction`` on the instance and sends each
``Execute`` instruction one of three ways, counted in ``tasks_by_path``:

- ``"pool"`` (the default): the fast pool path, :mod:`fastworker.pool`: the task's
  code runs in the worker's thread pool exactly as in stock, with less plumbing
  around it;
- ``"inline"``, only for tasks users opted in (``dask.annotate(executor="inline")``,
  or ``fastworker.inline.automatic: true`` and an admitted prefix): the event-loop
  executor, :mod:`fastworker.inline`;
- ``"stock"``: distributed's own ``Worker.execute`` in an asyncio task, for whatever
  the fast path does not reproduce: a ``Worker`` subclass that overrides ``execute``,
  a patched ``distributed.worker._run_task``, coroutine tasks, actors and tasks that
  read actors, executors other than distributed's own thread pool (another
  executor class, a process pool, an invalid name), and tasks that start after the
  worker began to close.

Other asynchronous instructions (``gather_dep``, ``retry_busy_worker_later``) always
keep stock's path.
"""
from __future__ import annotations

import logging
from typing import Any

from dask.utils import parse_timedelta
try:
    from dask._task_spec import Task as _DaskTask
except ImportError:  # pragma: no cover - a dask without task specs: no caching
    _DaskTask = None
from distributed.threadpoolexecutor import ThreadPoolExecutor

from fastworker import config, runner
from fastworker.admission import Admission
from fastworker.inline import InlineExecution
from fastworker.pool import PoolPath

logger = logging.getLogger("distributed.fastworker")

#: The executor name that sends a task to the event-loop executor.
INLINE_EXECUTOR = "inline"

_POOL, _INLINE, _STOCK = "pool", "inline", "stock"

#: Functions whose ``iscoroutinefunction`` answer is kept (then the cache starts over).
_CORO_CACHE_SIZE = 1024


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def worker_name(worker: Any) -> str:
    for attr in ("address", "name"):
        try:
            value = getattr(worker, attr)
        except (AttributeError, ValueError):
            continue
        if value:
            return str(value)
    return hex(id(worker))


class Execution:
    """The execution paths of one worker (see the module docstring)."""

    def __init__(self, worker: Any):
        get = config.get
        self.worker = worker
        self.tasks_by_path = {_POOL: 0, _INLINE: 0, _STOCK: 0}
        self.inline_enabled = _truthy(get("fastworker.inline.enabled"))
        self.automatic = self.inline_enabled and _truthy(get("fastworker.inline.automatic"))
        self.admission = Admission(
            worker,
            max_duration=parse_timedelta(get("fastworker.inline.max-duration")),
            batch_time=parse_timedelta(get("fastworker.inline.batch-time")),
            admit_after=int(get("fastworker.inline.admit-after")),
        )
        self.pool = PoolPath(worker, on_pool_run=self.admission.pool_run if self.automatic else None)
        self.inline = (
            InlineExecution(
                worker,
                self,
                batch_time=parse_timedelta(get("fastworker.inline.batch-time")),
                take_back_after=parse_timedelta(get("fastworker.inline.take-back-after")),
                take_back_signal=get("fastworker.inline.take-back-signal"),
            )
            if self.inline_enabled
            else None
        )
        # Only a worker that runs distributed's own execute(): a subclass that
        # overrides it keeps every task on its own path.
        self._execute = type(worker).execute
        self._plain = self._execute is runner.STOCK_EXECUTE
        self._start = worker._start_async_instruction
        #: function -> whether it is a coroutine function (see _is_coro)
        self._coro_funcs: dict = {}

    @property
    def worker_name(self) -> str:
        return worker_name(self.worker)

    @classmethod
    def install(cls, worker: Any) -> Execution:
        """Install on ``worker`` (once)."""
        existing = getattr(worker, "_fastworker_execution", None)
        if existing is not None:
            return existing
        # "inline" is a valid executor name on every fastworker worker: with the
        # event-loop executor off, such tasks use the default pool.
        worker.executors.setdefault(INLINE_EXECUTOR, worker.executors["default"])
        self = cls(worker)
        worker._start_async_instruction = self._start_async_instruction
        worker._fastworker_execution = self
        worker._fastworker_inline = self.inline
        if self.automatic:
            logger.info(
                "fastworker: %s: automatic selection of tiny tasks for the event-loop "
                "executor is on (fastworker.inline.automatic)", self.worker_name,
            )
        return self

    # --- the worker's method, wrapped ----------------------------------------------------

    def _start_async_instruction(self, task_name, func, /, *args, span_id=None, **kwargs):
        if getattr(func, "__func__", None) is self._execute:  # an Execute instruction
            key = args[0]
            path = self._path(key)
            self.tasks_by_path[path] += 1
            if path is _POOL:
                self.pool.start(key, span_id, kwargs["stimulus_id"])
                return
            if path is _INLINE:
                self.inline.start(key, span_id, kwargs["stimulus_id"])
                return
        self._start(task_name, func, *args, span_id=span_id, **kwargs)

    def _path(self, key) -> str:
        worker = self.worker
        if not self._plain or self.pool.closed or not runner.uses_stock_run_task():
            return _STOCK
        state = worker.state
        ts = state.tasks.get(key)
        if ts is None or ts.run_spec is None or self._is_coro(ts.run_spec):
            return _STOCK
        actors = state.actors
        if actors and (key in actors or any(dep.key in actors for dep in ts.dependencies)):
            return _STOCK
        annotations = ts.annotations
        name = annotations.get("executor", "default") if annotations else "default"
        inline = self.inline
        if inline is not None and ts.prefix not in self.admission.demoted:
            if name == INLINE_EXECUTOR or (
                self.automatic and name == "default" and self.admission.wants(ts.prefix)
            ):
                return _INLINE
        if type(worker.executors.get(name)) is ThreadPoolExecutor:
            return _POOL
        return _STOCK

    def _is_coro(self, run_spec) -> bool:
        """``run_spec.is_coro``, which dask works out per task object with
        ``iscoroutinefunction(func)``: here once per function (the answer is the
        function's), then stored on the task object as dask stores it."""
        if type(run_spec) is not _DaskTask or getattr(run_spec, "_is_coro", True) is not None:
            return run_spec.is_coro
        known = self._coro_funcs
        try:
            is_coro = known.get(run_spec.func)
        except TypeError:  # an unhashable callable
            return run_spec.is_coro
        if is_coro is None:
            is_coro = run_spec.is_coro
            if len(known) >= _CORO_CACHE_SIZE:
                known.clear()
            known[run_spec.func] = is_coro
        else:
            run_spec._is_coro = is_coro
        return is_coro

    # --- reporting ------------------------------------------------------------------------

    def report(self) -> dict:
        inline = self.inline
        return {
            "tasks_by_path": dict(self.tasks_by_path),
            "reruns": 0 if inline is None else inline.rerun_count,
            "inline_executor": None if inline is None else inline.report(),
        }

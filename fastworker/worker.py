"""The ways into a distributed worker: worker class, plugin, preload.

Each way in asks :func:`select_state_class` which state machine to use, so every one
of them honours the same two guards:

- ``fastworker.enabled`` in dask's config (``False`` keeps distributed's stock state
  machine, logged at INFO);
- the installed distributed release must be one of ``SUPPORTED_DISTRIBUTED``
  (otherwise one WARNING on the ``distributed.fastworker`` logger, stock kept).

A worker that is refused keeps working on the stock state machine: nothing is
half-installed. Which state machine a worker runs is visible from the client
(:func:`status`, through ``client.run``) and on the scheduler (the worker metric
``"fastworker"``: 1 or 0, sent with every heartbeat).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import distributed
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.worker_state_machine import WorkerState as StockWorkerState

from fastworker import compat, config, dispatch
from fastworker._version import __version__
from fastworker.execution import Execution, worker_name

logger = logging.getLogger("distributed.fastworker")

#: Worker metric (scheduler-visible) telling whether the worker runs fastworker.
METRIC = "fastworker"

# WorkerState attributes and what a switch from stock to compiled does with each.
# tests/test_ways_in.py checks that every attribute stock declares is listed here, so
# a new distributed release's additions are noticed.
_PASSED_TO_CONSTRUCTOR = (
    "nthreads",
    "data",  # the worker's own mapping (and threads, plugins): shared, never copied
    "threads",
    "plugins",
    "validate",
    "transfer_incoming_count_limit",
    "transition_counter_max",
    "transfer_incoming_bytes_limit",
    "transfer_message_bytes_limit",
    "total_resources",
)
_COPIED = (
    "address",
    "running",
    "generation",
    "fetch_count",
    "transfer_incoming_count_total",
    "transfer_incoming_bytes_throttle_threshold",
    "transfer_incoming_bytes",
    "nbytes",
    "executed_count",
    "transition_counter",
    "available_resources",
    "busy_workers",
    "log",
    "stimulus_log",
    "rng",
)
#: Empty on an idle worker; a worker where any of them is not empty is busy.
_EMPTY_WHEN_IDLE = (
    "tasks",
    "ready",
    "constrained",
    "waiting",
    "executing",
    "long_running",
    "in_flight_tasks",
    "in_flight_workers",
    "missing_dep_flight",
    "actors",
    "data_needed",  # per-peer queues: may hold keys of empty queues
    "has_what",  # per-peer key sets: likewise
)
#: Started afresh: per-state counts are all zero on an idle worker.
_FRESH = ("task_counter",)


def _compiled_class() -> type:
    from fastworker.workerstate import WorkerState

    return WorkerState


def refusal_reason() -> str | None:
    """Why the ways in would keep the stock state machine now, or None if they would not."""
    if not config.enabled():
        return "fastworker.enabled is False in dask's config"
    installed = compat.distributed_version()
    if not compat.is_supported(installed):
        return compat.unsupported_message(installed)
    return None


def select_state_class(what: str = "worker") -> type:
    """The WorkerState class a new worker should get, logging why if it is stock's."""
    reason = refusal_reason()
    if reason is None:
        return _compiled_class()
    _log_refusal(what, reason)
    return StockWorkerState


def _log_refusal(what: str, reason: str) -> None:
    if config.enabled():
        logger.warning("fastworker: %s keeps distributed's stock state machine: %s", what, reason)
    else:
        logger.info("fastworker: %s keeps distributed's stock state machine: %s", what, reason)


def is_compiled(state: Any) -> bool:
    """Whether ``state`` is fastworker's compiled WorkerState (or a subclass of it)."""
    try:
        cls = _compiled_class()
    except ImportError:  # the compiled module does not import next to this distributed
        return False
    return isinstance(state, cls)


def _busy(state: Any) -> list[str]:
    """Names of the non-empty collections that make ``state`` not idle."""
    busy = []
    for name in _EMPTY_WHEN_IDLE:
        value = getattr(state, name)
        if isinstance(value, Mapping) and name in ("data_needed", "has_what"):
            if any(len(v) for v in value.values()):
                busy.append(name)
        elif len(value):
            busy.append(name)
    return busy


def compiled_copy(state: Any, cls: type | None = None) -> Any:
    """A compiled WorkerState equivalent to the idle ``state``.

    Shares ``data``, ``threads`` and ``plugins`` with it, carries over its limits,
    counters, logs, stories, resources and random-number state. Raises ValueError if
    ``state`` holds tasks (a busy worker is never half-migrated).
    """
    busy = _busy(state)
    if busy:
        raise ValueError(
            f"the worker state is not idle ({', '.join(busy)} not empty: "
            f"{len(state.tasks)} tasks)"
        )
    cls = cls or _compiled_class()
    new = cls(
        nthreads=state.nthreads,
        data=state.data,
        threads=state.threads,
        plugins=state.plugins,
        resources=state.total_resources,
        validate=state.validate,
        transfer_incoming_count_limit=state.transfer_incoming_count_limit,
        transition_counter_max=state.transition_counter_max,
        transfer_incoming_bytes_limit=state.transfer_incoming_bytes_limit,
        transfer_message_bytes_limit=state.transfer_message_bytes_limit,
    )
    for name in _COPIED:
        if name == "address" and not hasattr(state, "address"):
            continue  # not known yet (before the worker listens)
        value = getattr(state, name)
        if name in ("log", "stimulus_log"):
            getattr(new, name).extend(value)
        elif name == "rng":
            new.rng.setstate(value.getstate())
        elif name in ("available_resources", "busy_workers"):
            setattr(new, name, value.copy())
        else:
            setattr(new, name, value)
    return new


def install(worker: Any, *, via: str) -> bool:
    """Give ``worker`` the compiled state machine if allowed and it is idle.

    Returns whether the worker runs fastworker afterwards. A refusal (config, version,
    busy worker) is logged on ``distributed.fastworker`` and the stock state kept.
    """
    _expose_metric(worker)
    what = f"worker {worker_name(worker)} ({via})"
    if is_compiled(worker.state):
        worker._fastworker_reason = None
        Execution.install(worker)
        pace_worker_stream(worker)
        return True
    reason = refusal_reason()
    if reason is None:
        busy = _busy(worker.state)
        if busy:
            reason = (
                f"it already holds {len(worker.state.tasks)} tasks; a running state "
                "machine is never migrated. Register the plugin before submitting work "
                "or restart the worker"
            )
            logger.warning("fastworker: %s keeps distributed's stock state machine: %s", what, reason)
            worker._fastworker_reason = reason
            return False
        worker.state = compiled_copy(worker.state)
        worker._fastworker_reason = None
        Execution.install(worker)
        pace_worker_stream(worker)
        logger.info("fastworker: %s now runs the compiled state machine", what)
        return True
    _log_refusal(what, reason)
    worker._fastworker_reason = reason
    return False


def pace_worker_stream(worker: Any) -> bool:
    """Low-latency dispatch on the worker's stream to the scheduler (see
    :mod:`fastworker.dispatch`) unless ``fastworker.dispatch.enabled`` is False."""
    stream = getattr(worker, "batched_stream", None)
    if stream is None or not dispatch.enabled():
        return False
    rule = dispatch.Rule.from_config()
    dispatch.log_rule_once("worker", rule)
    dispatch.Pacer.adopt(stream, rule)
    return True


def _fastworker_metric(worker: Any) -> int:
    return int(is_compiled(worker.state))


def _expose_metric(worker: Any) -> None:
    """Publish the scheduler-visible metric; make ``executor="inline"`` annotations
    valid on this worker whatever it runs (the default pool when not inline)."""
    metrics = getattr(worker, "metrics", None)
    if isinstance(metrics, dict):
        metrics[METRIC] = _fastworker_metric
    executors = getattr(worker, "executors", None)
    if isinstance(executors, dict) and "default" in executors:
        executors.setdefault("inline", executors["default"])


def status(dask_worker: Any = None, dask_scheduler: Any = None) -> dict:
    """What a worker runs; meant for ``client.run(fastworker.status)``.

    ``{"fastworker": bool, "state_class": "module.Class", "version": ...,
    "reason": why stock is kept (None if it is not), "tasks_by_path": tasks
    started per execution path ({"pool": the fast pool path, the default; "inline":
    the opt-in event-loop executor; "stock": distributed's own Worker.execute}, None
    on a stock worker), "reruns": tasks stopped on the event loop and run again in
    the pool (only ever tasks users opted in), "inline": whether the event-loop
    executor is available, "inline_executor": its counters (tasks run there,
    re-runs, take-backs, the longest hold of the event loop by one task, a task
    stuck on the loop that could not be taken back) or None,
    "dispatch": the low-latency state of the worker's stream to the scheduler (None
    when it keeps stock's batching)}``.

    On the scheduler, ``client.run_on_scheduler(fastworker.status)``:
    ``{"scheduler_plugin": bool, "reason": why not (None if it runs), "streams":
    worker streams, "paced_streams": how many are low-latency, "modes": streams per
    mode ("quiet"/"busy"), ...}``.
    """
    # distributed's run() hands the server to both keywords, whichever it is
    server = dask_worker if dask_worker is not None else dask_scheduler
    if server is None:
        raise TypeError("status() needs a worker or a scheduler")
    if isinstance(server, distributed.Scheduler):
        from fastworker.scheduler import scheduler_status

        return scheduler_status(server)
    dask_worker = server
    pacer = dispatch.Pacer.of(getattr(dask_worker, "batched_stream", None))
    state_type = type(dask_worker.state)
    compiled = is_compiled(dask_worker.state)
    execution = getattr(dask_worker, "_fastworker_execution", None)
    report = execution.report() if execution is not None else {
        "tasks_by_path": None, "reruns": 0, "inline_executor": None,
    }
    return {
        "fastworker": compiled,
        "state_class": f"{state_type.__module__}.{state_type.__qualname__}",
        "version": __version__,
        "reason": None if compiled else getattr(
            dask_worker, "_fastworker_reason", "not installed on this worker"
        ),
        "inline": report["inline_executor"] is not None,
        **report,
        "dispatch": pacer.state() if pacer is not None else None,
    }


class FastWorkerPlugin(WorkerPlugin):
    """Worker plugin that switches workers to fastworker's compiled state machine.

    ``client.register_plugin(fastworker.FastWorkerPlugin())``: every idle worker
    switches now, and every worker that joins later starts compiled. A worker that
    already holds tasks stays on stock, with a warning in its log. The workers need
    fastworker installed (the plugin is unpickled there).
    """

    name = "fastworker"
    idempotent = False

    def setup(self, worker):
        install(worker, via="FastWorkerPlugin")

    def teardown(self, worker):
        # The compiled state keeps running: switching back would lose nothing but
        # would also gain nothing; a restart brings the stock state back.
        pass


class Worker(distributed.Worker):
    """``distributed.Worker`` whose state machine is fastworker's compiled WorkerState.

    ``LocalCluster(worker_class=fastworker.Worker)``, ``dask worker SCHED
    --worker-class fastworker.Worker``. Identical to ``distributed.Worker`` otherwise;
    an explicit ``WorkerStateClass=`` argument wins. When refused (config, version),
    the stock state machine is used and the reason logged once.
    """

    def __init__(self, *args: Any, WorkerStateClass: type | None = None, **kwargs: Any):
        reason = None
        if WorkerStateClass is None:
            reason = refusal_reason()
            WorkerStateClass = select_state_class("fastworker.Worker")
        super().__init__(*args, WorkerStateClass=WorkerStateClass, **kwargs)
        self._fastworker_reason = reason
        _expose_metric(self)
        if is_compiled(self.state):
            Execution.install(self)
            pace_worker_stream(self)


class Nanny(distributed.Nanny):
    """``distributed.Nanny`` whose worker process runs :class:`fastworker.Worker`.

    ``LocalCluster(worker_class=fastworker.Nanny)`` gives worker processes (as
    ``LocalCluster()`` does with distributed's Nanny), where
    ``LocalCluster(worker_class=fastworker.Worker)`` runs the workers inside the
    calling process, as distributed does for any Worker class. An explicit
    ``worker_class=`` argument wins.
    """

    def __init__(self, *args: Any, worker_class: Any = None, **kwargs: Any):
        super().__init__(*args, worker_class=worker_class or Worker, **kwargs)


def dask_setup(server: Any) -> None:
    """Preload hook: ``dask worker SCHED --preload fastworker``,
    ``dask scheduler --preload fastworker``.

    In a worker process it runs when the worker starts, before it registers with the
    scheduler, so the worker is idle and switches to the compiled state machine. On
    a scheduler it adds :class:`fastworker.SchedulerPlugin` (started with the
    scheduler, which logs a refusal there if one applies).
    """
    if isinstance(server, distributed.Scheduler):
        from fastworker.scheduler import install as install_on_scheduler

        install_on_scheduler(server)
        return
    if not isinstance(server, distributed.Worker):
        logger.warning(
            "fastworker: --preload fastworker acts on workers and schedulers only; %s left unchanged",
            type(server).__name__,
        )
        return
    install(server, via="preload")

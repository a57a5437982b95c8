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

from fastworker import dispatch, prometheus
from fastworker.execution import Execution, worker_name
from fastworker.refusal import log_refusal, refusal_reason

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


def select_state_class(what: str = "worker") -> type:
    """The WorkerState class a new worker should get, logging why if it is stock's."""
    reason = refusal_reason()
    if reason is None:
        return _compiled_class()
    log_refusal(what, reason)
    return StockWorkerState


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
    log_refusal(what, reason)
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
    prometheus.watch_worker(worker)
    executors = getattr(worker, "executors", None)
    if isinstance(executors, dict) and "default" in executors:
        executors.setdefault("inline", executors["default"])


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

"""What fastworker reports (:func:`status`) and the preload hook
(:func:`dask_setup`): the two places that speak of both sides, a worker and a
scheduler. This module imports :mod:`fastworker.worker` and
:mod:`fastworker.scheduler`; neither of them imports the other or this one.
"""
from __future__ import annotations

import logging
from typing import Any

import distributed

from fastworker import dispatch
from fastworker._version import __version__
from fastworker.scheduler import install as install_on_scheduler
from fastworker.scheduler import scheduler_status
from fastworker.worker import install, is_compiled

logger = logging.getLogger("distributed.fastworker")


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
    when it keeps stock's batching), "data_fast_path": whether the compiled state
    machine stores to, reads from and drops from ``worker.data`` (distributed's
    SpillBuffer) without its Python layers when nothing spills}``.

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
        "data_fast_path": compiled and _data_fast_path(dask_worker.data),
    }


def _data_fast_path(data: Any) -> bool:
    from fastworker.workerstate import spill_fast_path

    return spill_fast_path(data)


def dask_setup(server: Any) -> None:
    """Preload hook: ``dask worker SCHED --preload fastworker``,
    ``dask scheduler --preload fastworker``.

    In a worker process it runs when the worker starts, before it registers with the
    scheduler, so the worker is idle and switches to the compiled state machine. On
    a scheduler it adds :class:`fastworker.SchedulerPlugin` (started with the
    scheduler, which logs a refusal there if one applies).
    """
    if isinstance(server, distributed.Scheduler):
        install_on_scheduler(server)
        return
    if not isinstance(server, distributed.Worker):
        logger.warning(
            "fastworker: --preload fastworker acts on workers and schedulers only; %s left unchanged",
            type(server).__name__,
        )
        return
    install(server, via="preload")

"""fastworker: a Cython-compiled drop-in for distributed's worker state machine.

``fastworker.WorkerState`` and ``fastworker.TaskState`` behave like the classes of
``distributed.worker_state_machine`` of the supported distributed release
(``fastworker.SUPPORTED_DISTRIBUTED``). The ways into a worker:

- ``client.register_plugin(fastworker.FastWorkerPlugin())``
- ``dask worker SCHED --preload fastworker`` (this module's ``dask_setup``)
- ``dask worker SCHED --worker-class fastworker.Worker``,
  ``LocalCluster(worker_class=fastworker.Worker)`` (workers in this process) and
  ``LocalCluster(worker_class=fastworker.Nanny)`` (worker processes)
- ``Worker(WorkerStateClass=fastworker.WorkerState)``

and one into the scheduler, low-latency dispatch to the workers:
``client.register_plugin(fastworker.SchedulerPlugin())`` or
``dask scheduler --preload fastworker``.

Next to another distributed release, importing fastworker warns once
(UnsupportedVersionWarning) and every way in keeps distributed's stock state
machine: ``fastworker.WorkerState`` and ``fastworker.TaskState`` are then
distributed's own classes, and the compiled ones stay in ``fastworker.workerstate``
and ``fastworker.taskstate``. ``fastworker.enabled: False`` in dask's config also
keeps the stock state machine, without uninstalling.
"""
from fastworker._version import __version__
from fastworker.compat import (
    SUPPORTED_DASK,
    SUPPORTED_DISTRIBUTED,
    UnsupportedVersionError,
    UnsupportedVersionWarning,
    check_distributed_version,
    is_supported,
)

from fastworker import config  # noqa: E402, F401  (registers the fastworker.* config keys)

#: Whether the installed distributed is one this build reproduces exactly.
DISTRIBUTED_SUPPORTED: bool = check_distributed_version(log=False)

if DISTRIBUTED_SUPPORTED:
    from fastworker.taskstate import RELEASE_TASKSTATE as TaskState
    from fastworker.taskstate import TASK_STATES
    from fastworker.workerstate import WorkerState
else:  # keep distributed's own classes, so that no way in installs ours
    from distributed.worker_state_machine import TaskState, WorkerState

    TASK_STATES = ()

from fastworker.scheduler import SchedulerPlugin  # noqa: E402
from fastworker.status import dask_setup, status  # noqa: E402
from fastworker.worker import FastWorkerPlugin, Nanny, Worker  # noqa: E402

__all__ = [
    "DISTRIBUTED_SUPPORTED",
    "FastWorkerPlugin",
    "Nanny",
    "SUPPORTED_DASK",
    "SUPPORTED_DISTRIBUTED",
    "SchedulerPlugin",
    "TASK_STATES",
    "TaskState",
    "UnsupportedVersionError",
    "UnsupportedVersionWarning",
    "Worker",
    "WorkerState",
    "__version__",
    "check_distributed_version",
    "dask_setup",
    "is_supported",
    "status",
]

"""fastworker: a Cython-compiled drop-in for distributed's worker state machine.

``fastworker.TaskState`` behaves like ``distributed.worker_state_machine.TaskState``
of the supported distributed release (``fastworker.SUPPORTED_DISTRIBUTED``).
Importing fastworker next to another distributed release warns once, with the
reason, on the ``distributed.fastworker`` logger and as an UnsupportedVersionWarning.
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

#: Whether the installed distributed is one this build reproduces exactly.
DISTRIBUTED_SUPPORTED: bool = check_distributed_version()

from fastworker.taskstate import TASK_STATES, TaskState  # noqa: E402
from fastworker.workerstate import WorkerState  # noqa: E402

__all__ = [
    "DISTRIBUTED_SUPPORTED",
    "SUPPORTED_DASK",
    "SUPPORTED_DISTRIBUTED",
    "TASK_STATES",
    "TaskState",
    "UnsupportedVersionError",
    "UnsupportedVersionWarning",
    "WorkerState",
    "__version__",
    "check_distributed_version",
    "is_supported",
]

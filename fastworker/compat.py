"""Which dask/distributed releases fastworker supports, and the run-time check.

fastworker re-implements distributed's worker state machine release by release;
its behaviour (instructions, stories, messages) is only known to match the releases
in SUPPORTED_DISTRIBUTED, each checked against its own stock (`make test-versions`).
Anything else is refused with a clear message so that the stock worker keeps running.

The few places where those releases' state machines differ are named in
``RELEASE_FEATURES``; the compiled modules read them once, when they are imported
(``features()``), and pick per-release C functions then: no per-task branch.
"""
from __future__ import annotations

import logging
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple

__all__ = [
    "NEWEST_DISTRIBUTED",
    "OLDEST_DISTRIBUTED",
    "RELEASE_FEATURES",
    "DASK_FOR_DISTRIBUTED",
    "Features",
    "SUPPORTED_DASK",
    "SUPPORTED_DISTRIBUTED",
    "UnsupportedVersionError",
    "UnsupportedVersionWarning",
    "check_distributed_version",
    "distributed_version",
    "features",
    "is_supported",
]

#: distributed releases whose worker state machine fastworker reproduces exactly,
#: oldest first (dask and distributed are released in lockstep: dask==X goes with
#: distributed==X, but for DASK_FOR_DISTRIBUTED). The last one is the pinned release
#: `make test` checks.
SUPPORTED_DISTRIBUTED: tuple[str, ...] = (
    "2024.11.0", "2024.11.1", "2024.11.2", "2024.12.0", "2024.12.1",
    "2025.1.0", "2025.2.0", "2025.3.0", "2025.3.1", "2025.4.0", "2025.4.1",
    "2025.5.0", "2025.5.1", "2025.7.0", "2025.9.0", "2025.9.1", "2025.9.2",
    "2025.9.3", "2025.10.0", "2025.11.0", "2025.12.0", "2026.1.0", "2026.1.1",
    "2026.1.2", "2026.1.3", "2026.3.0", "2026.6.0", "2026.7.0", "2026.7.1",
    "2026.8.0",
)
#: The dask release a supported distributed release requires where it is not the same
#: number (distributed 2026.1.0 requires dask 2025.12.0; there is no lockstep dask).
DASK_FOR_DISTRIBUTED: dict[str, str] = {"2026.1.0": "2025.12.0"}
#: dask releases tested together with them (each distributed release pins its dask).
SUPPORTED_DASK: tuple[str, ...] = tuple(
    dict.fromkeys(DASK_FOR_DISTRIBUTED.get(r, r) for r in SUPPORTED_DISTRIBUTED)
)
#: The oldest and newest supported releases: the dependency range in pyproject.toml.
OLDEST_DISTRIBUTED = SUPPORTED_DISTRIBUTED[0]
NEWEST_DISTRIBUTED = SUPPORTED_DISTRIBUTED[-1]


class Features(NamedTuple):
    """How one release's worker_state_machine.py differs from the newest one's.

    Found by diffing stock's module between releases (docs/versions.md); every
    difference in behaviour or in the classes' faces has a flag here.
    """

    #: TaskState has a ``duration`` field (after ``next``), which the compute-task
    #: handler sets from ``ComputeTaskEvent.duration`` (until 2025.1.0).
    taskstate_duration: bool
    #: LongRunningMsg carries the task's ``run_id`` (from 2025.2.0).
    long_running_run_id: bool
    #: _get_task_finished_msg asserts ``ts.nbytes is not None`` also when not
    #: validating (from 2026.6.0; before, only under ``validate``).
    finished_msg_asserts_nbytes: bool


#: The releases where stock's module changed, with what changed, oldest first; a
#: release has the features of the last entry at or before it.
_FEATURE_CHANGES: tuple[tuple[str, Features], ...] = (
    ("2024.11.0", Features(True, False, False)),
    # 2025.2.0: TaskState.duration and ComputeTaskEvent.duration gone; LongRunningMsg.run_id
    ("2025.2.0", Features(False, True, False)),
    # 2025.12.0: typing only (TypeAlias/ParamSpec from typing); no behaviour change
    # 2026.6.0: unconditional nbytes assert; TaskState.nbytes annotated ``int``
    #           (the dataclass face is copied from stock's); DeprecatedWorkerStateAttribute gone
    ("2026.6.0", Features(False, True, True)),
)


def _release_key(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in release.split("."))


#: Features of every supported release.
RELEASE_FEATURES: dict[str, Features] = {
    release: [f for start, f in _FEATURE_CHANGES if _release_key(start) <= _release_key(release)][-1]
    for release in SUPPORTED_DISTRIBUTED
}


def features(distributed: str | None = None) -> Features:
    """The features of ``distributed`` (default: the installed release); those of the
    newest supported release for a release that is not supported (the compiled
    classes are then not installed by any way in, see check_distributed_version)."""
    if distributed is None:
        distributed = distributed_version()
    return RELEASE_FEATURES.get(distributed, RELEASE_FEATURES[NEWEST_DISTRIBUTED])

logger = logging.getLogger("distributed.fastworker")


class UnsupportedVersionError(RuntimeError):
    """The installed distributed release is not one fastworker supports."""


class UnsupportedVersionWarning(UserWarning):
    """fastworker is installed next to a distributed release it does not support."""


def distributed_version() -> str | None:
    """The installed distributed release, or None if it is not installed."""
    try:
        return version("distributed")
    except PackageNotFoundError:
        return None


def is_supported(distributed: str | None = None) -> bool:
    """Whether ``distributed`` (default: the installed release) is supported."""
    if distributed is None:
        distributed = distributed_version()
    return distributed in SUPPORTED_DISTRIBUTED


def unsupported_message(distributed: str | None) -> str:
    return (
        f"fastworker supports distributed {OLDEST_DISTRIBUTED} to {NEWEST_DISTRIBUTED} only, "
        f"but distributed {distributed or '(not installed)'} is installed; "
        "the stock worker state machine stays in use. Install a supported "
        "distributed release or a fastworker built for this one."
    )


def check_distributed_version(
    distributed: str | None = None, *, strict: bool = False, log: bool = True
) -> bool:
    """Check the installed (or given) distributed release against SUPPORTED_DISTRIBUTED.

    Returns True when it is supported. Otherwise raises UnsupportedVersionError if
    ``strict``, else logs the reason on the ``distributed.fastworker`` logger (unless
    ``log`` is False), emits an UnsupportedVersionWarning and returns False.
    """
    if distributed is None:
        distributed = distributed_version()
    if is_supported(distributed):
        return True
    message = unsupported_message(distributed)
    if strict:
        raise UnsupportedVersionError(message)
    if log:
        logger.warning(message)
    warnings.warn(message, UnsupportedVersionWarning, stacklevel=2)
    return False

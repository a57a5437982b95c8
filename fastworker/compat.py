"""Which dask/distributed releases fastworker supports, and the run-time check.

fastworker re-implements distributed's worker state machine of one exact release;
its behaviour (instructions, stories, messages) is only known to match that release.
Anything else is refused with a clear message so that the stock worker keeps running.
"""
from __future__ import annotations

import logging
import warnings
from importlib.metadata import PackageNotFoundError, version

__all__ = [
    "SUPPORTED_DASK",
    "SUPPORTED_DISTRIBUTED",
    "UnsupportedVersionError",
    "UnsupportedVersionWarning",
    "check_distributed_version",
    "distributed_version",
    "is_supported",
]

#: distributed releases whose worker state machine fastworker reproduces exactly.
SUPPORTED_DISTRIBUTED: tuple[str, ...] = ("2026.8.0",)
#: dask releases tested together with them.
SUPPORTED_DASK: tuple[str, ...] = ("2026.8.0",)

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
        f"fastworker supports distributed {', '.join(SUPPORTED_DISTRIBUTED)} only, "
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

"""Why fastworker would leave a worker or a scheduler stock: the one rule every way
in (worker and scheduler side) asks, and how a refusal is logged. It imports neither
:mod:`fastworker.worker` nor :mod:`fastworker.scheduler`, which both use it."""
from __future__ import annotations

import logging

from fastworker import compat, config

logger = logging.getLogger("distributed.fastworker")


def refusal_reason() -> str | None:
    """Why the ways in would keep distributed's stock code now, or None if they would not."""
    if not config.enabled():
        return "fastworker.enabled is False in dask's config"
    installed = compat.distributed_version()
    if not compat.is_supported(installed):
        return compat.unsupported_message(installed)
    return None


def log_refusal(what: str, reason: str) -> None:
    """One line on ``distributed.fastworker``: WARNING, or INFO when the user switched
    fastworker off."""
    if config.enabled():
        logger.warning("fastworker: %s keeps distributed's stock state machine: %s", what, reason)
    else:
        logger.info("fastworker: %s keeps distributed's stock state machine: %s", what, reason)

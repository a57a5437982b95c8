"""fastworker's keys in dask's configuration.

Registered as defaults when fastworker is imported, so they can be set like any other
dask key: ``dask.config.set({"fastworker.enabled": False})``, a YAML file under
``~/.config/dask/``, or the environment (``DASK_FASTWORKER__ENABLED=False``).
"""
from __future__ import annotations

import dask

#: Defaults of every key fastworker reads.
DEFAULTS: dict = {
    "fastworker": {
        # Whether the ways in (plugin, preload, fastworker.Worker) install the compiled
        # state machine. False keeps distributed's stock one without uninstalling.
        "enabled": True,
    }
}

dask.config.update_defaults(DEFAULTS)


def enabled() -> bool:
    """The current value of ``fastworker.enabled`` (read on every call)."""
    return bool(dask.config.get("fastworker.enabled", True))

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
        # The in-process executor (fastworker.inline): tiny tasks run on the event
        # loop in batches instead of going through the thread pool.
        "inline": {
            "enabled": True,
            # A prefix whose tasks take less than this on average runs inline; a
            # task that takes longer demotes its prefix to the thread pool.
            "max-duration": "1ms",
            # Each batch runs for at most about this long, then yields to the loop.
            "batch-time": "10ms",
        },
        # Low-latency dispatch (fastworker.dispatch): the scheduler's streams to the
        # workers (with fastworker.SchedulerPlugin) and fastworker workers' stream to
        # the scheduler send at once when idle instead of on distributed's fixed
        # batching interval (5 ms scheduler -> worker, 2 ms worker -> scheduler).
        "dispatch": {
            "enabled": True,
            # A stream that carries this many messages per second or more (measured
            # over `window`) batches at distributed's own interval again.
            "busy-rate": 5000,
            "window": "50ms",
            # The interval of a stream that is not busy: 0 sends on the next loop
            # iteration (what is sent during a write still leaves together after it).
            "interval": "0ms",
        },
    }
}

dask.config.update_defaults(DEFAULTS)


def enabled() -> bool:
    """The current value of ``fastworker.enabled`` (read on every call)."""
    return bool(dask.config.get("fastworker.enabled", True))

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
        # The event-loop executor (fastworker.inline), opt-in only: tasks annotated
        # dask.annotate(executor="inline"), and with `automatic` tiny tasks chosen by
        # fastworker, run on the event loop in batches instead of the thread pool.
        # What changes for code that runs there: docs/ways-in.md. False: such tasks
        # run in the thread pool like every other.
        "inline": {
            "enabled": True,
            # A prefix whose tasks take less than this on average runs inline; a
            # task that takes longer demotes its prefix to the thread pool.
            "max-duration": "1ms",
            # Each batch runs for at most about this long, then yields to the loop.
            "batch-time": "10ms",
            # No inline task holds the event loop longer than this (garbage
            # collections not counted): a watchdog takes it back and it runs again
            # in the thread pool; its prefix no longer runs inline.
            "take-back-after": "50ms",
            # Automatic selection of measured prefixes for the event loop: False (the
            # default: only tasks annotated executor="inline" run there) or True
            # (opt-in: tiny prefixes that do not wait run there too).
            "automatic": False,
            # Pool runs of a prefix needed before it may run inline: most of them
            # must not wait (thread CPU time close to wall time).
            "admit-after": 4,
            # The signal that interrupts a task blocked in a wait on the loop's
            # (main) thread; used only if no other handler owns it.
            "take-back-signal": "SIGRTMIN+4",
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
            # Small plain messages on a paced stream's TCP comm are framed, written,
            # read and decoded by fastworker.wire (the same bytes as distributed's
            # comm; anything else goes through the comm). False: the comm's own.
            "wire": True,
        },
    }
}

dask.config.update_defaults(DEFAULTS)


def enabled() -> bool:
    """The current value of ``fastworker.enabled`` (read on every call)."""
    return bool(get("fastworker.enabled"))


def get(name: str):
    """``dask.config.get(name)``, falling back to fastworker's default: test harnesses
    (distributed's ``gen_cluster`` among them) may reset dask's config to a copy
    taken before fastworker registered its defaults."""
    default = DEFAULTS
    for part in name.split("."):
        default = default[part]
    return dask.config.get(name, default=default)

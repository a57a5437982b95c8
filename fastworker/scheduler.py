"""The scheduler-side way in: low-latency dispatch to every worker.

``client.register_plugin(fastworker.SchedulerPlugin())`` on a running cluster, or
``dask scheduler --preload fastworker``. The plugin puts a
:class:`fastworker.dispatch.Pacer` on the scheduler's ``BatchedSend`` to each worker
(``scheduler.stream_comms``): on those present when it starts and, through the
``add_worker`` hook (called after the stream is made and before it starts), on every
worker that joins later. With ``fastworker.dispatch.wire`` on, the scheduler's stream
to each client keeps distributed's timing (its 2 ms window) and sending loop, and its
small messages are framed, written and read by :mod:`fastworker.wire` (the same
bytes): for the clients present when the plugin starts and, through the
``add_client`` hook, for each one that connects later. Nothing is patched on
distributed's classes.

It honours the same guards as every other way in (``fastworker.enabled``, the
supported distributed release) and its own off switch,
``fastworker.dispatch.enabled``; a refusal is logged once and leaves the scheduler
as stock. ``client.run_on_scheduler(fastworker.status)`` reports whether it runs.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin as _BasePlugin

from fastworker import dispatch, prometheus, wire
from fastworker.refusal import refusal_reason as common_reason

logger = logging.getLogger("distributed.fastworker")

#: The name the plugin is registered under on the scheduler.
PLUGIN_NAME = "fastworker-dispatch"


def refusal_reason() -> str | None:
    """Why the scheduler plugin would leave the scheduler stock now, or None."""
    reason = common_reason()
    if reason is None and not dispatch.enabled():
        reason = "fastworker.dispatch.enabled is False in dask's config"
    return reason


class SchedulerPlugin(_BasePlugin):
    """Scheduler plugin that makes the scheduler's stream to every worker low-latency.

    A message to a worker whose stream is idle leaves at once instead of at the end
    of distributed's 5 ms window; messages sent while a write is in flight leave
    together after it; a stream busier than ``fastworker.dispatch.busy-rate``
    messages per second batches at the stock interval. The messages and their order
    are unchanged. Settings are read on the scheduler when the plugin starts.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.active = False
        self.reason: str | None = "not started"
        self.rule: dispatch.Rule | None = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        scheduler._fastworker_dispatch = self
        prometheus.watch_scheduler(scheduler)
        reason = refusal_reason()
        if reason is not None:
            self.reason = reason
            self.active = False
            level = logging.INFO if "is False in dask's config" in reason else logging.WARNING
            logger.log(level, "fastworker: the scheduler keeps distributed's stock dispatch: %s", reason)
            return
        self.resume()

    def resume(self) -> None:
        """Pace every present stream (and, from now on, every new one)."""
        self.rule = dispatch.Rule.from_config()
        self.active = True
        self.reason = None
        dispatch.log_rule_once("scheduler", self.rule)
        for stream in list(self.scheduler.stream_comms.values()):
            dispatch.Pacer.adopt(stream, self.rule)
        for client in list(self.scheduler.client_comms):
            self._wire_client(client)

    def pause(self) -> None:
        """Give every stream back its stock interval, every client stream its comm's
        own write and read; new workers and clients stay stock."""
        self.active = False
        self.reason = "paused"
        for stream in list(self.scheduler.stream_comms.values()):
            pacer = dispatch.Pacer.of(stream)
            if pacer is not None:
                pacer.release()
        for stream in list(self.scheduler.client_comms.values()):
            comm = getattr(stream, "comm", None)
            if comm is not None:
                wire.uninstall(comm)

    def add_worker(self, scheduler: Any, worker: str) -> None:
        if self.active:
            stream = scheduler.stream_comms.get(worker)
            if stream is not None:
                dispatch.Pacer.adopt(stream, self.rule)

    def add_client(self, scheduler: Any, client: str) -> None:
        # distributed calls this before it makes and starts the client's stream; it
        # is in place once the handler that called us yields to the loop
        if self.active and self.rule.wire:
            asyncio.get_running_loop().call_soon(self._wire_client, client)

    def _wire_client(self, client: str) -> None:
        """The client's stream: its comm's small writes and reads through the wire."""
        if not (self.active and self.rule.wire):
            return
        stream = self.scheduler.client_comms.get(client)
        comm = getattr(stream, "comm", None)
        if comm is not None and wire.install_write(comm):
            # the scheduler's handle_stream reads the same comm (the read in progress
            # ends as the comm's; the next ones are the wire's)
            wire.install_read(comm)

    async def close(self) -> None:
        self.active = False

    def state(self) -> dict:
        """What ``fastworker.status`` reports for the scheduler."""
        modes: dict[str, int] = {}
        loops: dict[str, int] = {}
        wires: dict[str, int] = {}
        paced = 0
        streams = list(self.scheduler.stream_comms.values()) if self.scheduler else []
        for stream in streams:
            pacer = dispatch.Pacer.of(stream)
            if pacer is not None:
                paced += 1
                state = pacer.state()
                modes[state["mode"]] = modes.get(state["mode"], 0) + 1
                loops[state["loop"]] = loops.get(state["loop"], 0) + 1
                wires[state["wire"]] = wires.get(state["wire"], 0) + 1
        return {
            "scheduler_plugin": self.active,
            "reason": self.reason,
            "streams": len(streams),
            "paced_streams": paced,
            "modes": modes,
            "loops": loops,
            # who frames, writes and reads the small messages (fastworker.wire)
            "wires": wires,
            "client_wires": client_wire_counts(self.scheduler),
            "rule": asdict(self.rule) if self.rule else None,
        }


def client_wire_counts(scheduler: Any) -> dict[str, int]:
    """How many of the scheduler's client streams each side frames and writes."""
    counts: dict[str, int] = {}
    for stream in list(scheduler.client_comms.values()) if scheduler else []:
        comm = getattr(stream, "comm", None)
        side = "fastworker" if comm is not None and wire.installed_write(comm) else "distributed"
        counts[side] = counts.get(side, 0) + 1
    return counts


def scheduler_status(scheduler: Any) -> dict:
    """``fastworker.status`` on the scheduler (``client.run_on_scheduler``)."""
    from fastworker._version import __version__

    plugin = getattr(scheduler, "_fastworker_dispatch", None)
    if isinstance(plugin, SchedulerPlugin) and scheduler.plugins.get(plugin.name) is plugin:
        info = plugin.state()
    else:
        info = {
            "scheduler_plugin": False,
            "reason": "fastworker.SchedulerPlugin is not registered on this scheduler",
            "streams": len(scheduler.stream_comms),
            "paced_streams": 0,
            "modes": {},
            "loops": {},
            "wires": {},
            "client_wires": client_wire_counts(scheduler),
        }
    info["version"] = __version__
    return info


def install(scheduler: Any) -> SchedulerPlugin:
    """Add the plugin to a scheduler that has not started yet (the preload)."""
    plugin = SchedulerPlugin()
    scheduler.add_plugin(plugin, name=plugin.name, idempotent=True)
    return scheduler.plugins[plugin.name]

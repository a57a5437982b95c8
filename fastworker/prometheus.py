"""fastworker's counters on distributed's Prometheus endpoints (``/metrics``).

distributed serves ``/metrics`` on the worker's and the scheduler's HTTP server
(``distributed.http.worker.prometheus`` and ``distributed.http.scheduler.prometheus``)
from ``prometheus_client``'s global registry. fastworker adds one collector per side
to that registry, from its own ways in (the worker plugin, the preload,
``fastworker.Worker``/``Nanny`` and the scheduler plugin); nothing of distributed's is
patched. Names follow distributed's: ``<namespace>_worker_...`` and
``<namespace>_scheduler_...``, where the namespace is
``distributed.dashboard.prometheus.namespace`` (``dask`` by default).

On a worker (once any way in has run there, even if it was refused):

- ``dask_worker_fastworker``: 1 if the worker runs fastworker's compiled state
  machine, 0 if it keeps distributed's stock one;
- ``dask_worker_fastworker_tasks_total{path}``: tasks started per execution path
  (``pool``, ``inline``, ``stock``), as ``fastworker.status()["tasks_by_path"]``;
- ``dask_worker_fastworker_reruns_total{cause}``: tasks stopped on the event-loop
  executor and run again in the pool (``takeback``: taken back by the watchdog,
  ``fallback``: they asked for a thread); their sum is ``status()["reruns"]``;
- ``dask_worker_fastworker_dispatch_mode{mode}``: 1 for the mode of the worker's
  stream to the scheduler (``quiet``, ``busy``, or ``stock`` when not paced), 0 for
  the others;
- ``dask_worker_fastworker_wire``: 1 if that stream's small messages go through
  ``fastworker.wire``, 0 if through distributed's comm;
- ``dask_worker_fastworker_stream_messages_total`` and
  ``dask_worker_fastworker_stream_writes_total``: messages sent on that stream and the
  writes that carried them.

A stock worker keeps ``dask_worker_fastworker`` at 0 and has no task or re-run
samples. On the scheduler (once :class:`fastworker.SchedulerPlugin` has started, also
when it refused):

- ``dask_scheduler_fastworker_dispatch``: 1 if the plugin paces the streams, else 0;
- ``dask_scheduler_fastworker_workers{state_machine}``: workers by the state machine
  their heartbeats report (``fastworker`` or ``stock``);
- ``dask_scheduler_fastworker_streams{mode}``: the scheduler's streams to workers per
  mode (``quiet``, ``busy``, ``stock``);
- ``dask_scheduler_fastworker_streams_by_wire{wire}``: the scheduler's streams to
  workers whose small messages go through ``fastworker.wire`` or distributed's comm;
- ``dask_scheduler_fastworker_stream_messages_total{worker}``,
  ``dask_scheduler_fastworker_stream_writes_total{worker}`` and
  ``dask_scheduler_fastworker_stream_messages_per_write{worker}``: per stream, the
  messages sent, the writes and their ratio over the stream's life.

Where several workers share a process (``LocalCluster(processes=False)``) the worker
collector reports the worker whose ``/metrics`` is being served, as distributed's own
collector does. Without ``prometheus_client`` installed nothing is registered (and
distributed serves no metrics either).
"""
from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("distributed.fastworker")

#: Execution paths and re-run causes, always reported in this order.
PATHS = ("pool", "inline", "stock")
#: re-run cause -> the event-loop executor's counter of it (fastworker.inline)
RERUN_CAUSES = {"takeback": "takeback_count", "fallback": "fallback_count"}
MODES = ("quiet", "busy", "stock")
#: Who frames a stream's small messages (fastworker.wire or distributed's comm).
WIRES = ("fastworker", "distributed")

_collectors: dict[str, Any] = {}


def watch_worker(worker: Any) -> None:
    """Report ``worker`` on this process's worker ``/metrics`` (idempotent)."""
    _watch("worker", worker)


def watch_scheduler(scheduler: Any) -> None:
    """Report ``scheduler`` on this process's scheduler ``/metrics`` (idempotent)."""
    _watch("scheduler", scheduler)


def _watch(side: str, server: Any) -> None:
    collector = _collectors.get(side)
    if collector is None:
        try:
            import prometheus_client
        except ImportError:
            logger.debug("fastworker: prometheus_client is not installed; no %s metrics", side)
            return
        collector = (_WorkerCollector if side == "worker" else _SchedulerCollector)(server)
        prometheus_client.REGISTRY.register(collector)
        _collectors[side] = collector
    collector.watch(server)


def _handler_server(module: str) -> Any:
    """The server whose ``/metrics`` distributed's handler serves now, if known."""
    core = sys.modules.get(module)
    handler = getattr(core, "PrometheusHandler", None)
    collector = getattr(handler, "_collector", None)
    if collector is None:
        collectors = getattr(handler, "_collectors", None) or ()
        collector = collectors[0] if collectors else None
    return getattr(collector, "server", None)


class _Collector:
    """A ``prometheus_client`` collector for one side; names built as distributed's
    ``PrometheusCollector.build_name`` builds them."""

    side = ""
    handler_module = ""

    def __init__(self, server: Any):
        self._server: weakref.ref | None = None
        self.watch(server)

    def watch(self, server: Any) -> None:
        self._server = weakref.ref(server)

    def server(self) -> Any:
        current = _handler_server(self.handler_module)
        if current is not None:
            return current
        return self._server() if self._server is not None else None

    def name(self, suffix: str) -> str:
        import dask.config

        namespace = dask.config.get("distributed.dashboard.prometheus.namespace", "dask")
        return "_".join(p for p in (namespace, self.side, "fastworker", suffix) if p)

    def describe(self) -> Iterator[Any]:
        # No server-dependent work at registration; names never clash with distributed's.
        return iter(())

    def collect(self) -> Iterator[Any]:
        server = self.server()
        if server is None:
            return iter(())
        return self.families(server)

    def families(self, server: Any) -> Iterator[Any]:
        """The metric families of ``server`` (each side defines its own)."""
        raise NotImplementedError


class _WorkerCollector(_Collector):
    side = "worker"
    handler_module = "distributed.http.worker.prometheus.core"

    def families(self, worker: Any) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from fastworker.status import status

        if getattr(worker, "state", None) is None:
            return
        report = status(worker)
        yield GaugeMetricFamily(
            self.name(""),
            "Whether the worker runs fastworker's compiled state machine (1) or "
            "distributed's stock one (0)",
            value=int(report["fastworker"]),
        )
        tasks_by_path = report["tasks_by_path"]
        tasks = CounterMetricFamily(
            self.name("tasks"),
            "Tasks started by fastworker per execution path (pool: the fast pool path; "
            "inline: the opt-in event-loop executor; stock: distributed's Worker.execute)",
            labels=["path"],
        )
        reruns = CounterMetricFamily(
            self.name("reruns"),
            "Tasks stopped on the event-loop executor and run again in the pool "
            "(takeback: by the watchdog; fallback: they asked for a thread)",
            labels=["cause"],
        )
        if tasks_by_path is not None:
            for path in PATHS:
                tasks.add_metric([path], tasks_by_path.get(path, 0))
            inline = report["inline_executor"] or {}
            for cause, counter in RERUN_CAUSES.items():
                reruns.add_metric([cause], inline.get(counter, 0))
        yield tasks
        yield reruns

        # the worker's stream to the scheduler: its dispatch mode, messages and writes
        stream = getattr(worker, "batched_stream", None)
        mode = "stock" if report["dispatch"] is None else report["dispatch"]["mode"]
        modes = GaugeMetricFamily(
            self.name("dispatch_mode"),
            "Dispatch mode of the worker's stream to the scheduler (quiet: low-latency; "
            "busy: distributed's batching; stock: not paced by fastworker)",
            labels=["mode"],
        )
        for m in MODES:
            modes.add_metric([m], int(m == mode))
        yield modes
        yield GaugeMetricFamily(
            self.name("wire"),
            "Whether the worker's stream to the scheduler frames, writes, reads and "
            "decodes its small messages through fastworker.wire (1) or distributed's "
            "comm (0)",
            value=int(report["dispatch"] is not None
                      and report["dispatch"].get("wire") == "fastworker"),
        )
        yield CounterMetricFamily(
            self.name("stream_messages"),
            "Messages sent on the worker's stream to the scheduler",
            value=getattr(stream, "message_count", 0),
        )
        yield CounterMetricFamily(
            self.name("stream_writes"),
            "Writes on the worker's stream to the scheduler (each carries one or more "
            "messages)",
            value=getattr(stream, "batch_count", 0),
        )


class _SchedulerCollector(_Collector):
    side = "scheduler"
    handler_module = "distributed.http.scheduler.prometheus.core"

    def families(self, scheduler: Any) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from fastworker.dispatch import Pacer
        from fastworker.scheduler import client_wire_counts, scheduler_status

        report = scheduler_status(scheduler)
        yield GaugeMetricFamily(
            self.name("dispatch"),
            "Whether fastworker's scheduler plugin paces the streams to the workers (1) or "
            "the scheduler keeps distributed's stock dispatch (0)",
            value=int(bool(report["scheduler_plugin"])),
        )
        machines = {"fastworker": 0, "stock": 0}
        for ws in list(getattr(scheduler, "workers", {}).values()):
            compiled = (getattr(ws, "metrics", None) or {}).get("fastworker")
            machines["fastworker" if compiled else "stock"] += 1
        workers = GaugeMetricFamily(
            self.name("workers"),
            "Workers by the state machine their heartbeats report",
            labels=["state_machine"],
        )
        for machine, n in machines.items():
            workers.add_metric([machine], n)
        yield workers

        streams = GaugeMetricFamily(
            self.name("streams"),
            "The scheduler's streams to workers per dispatch mode (quiet: low-latency; "
            "busy: distributed's batching; stock: not paced by fastworker)",
            labels=["mode"],
        )
        messages = CounterMetricFamily(
            self.name("stream_messages"),
            "Messages sent on the scheduler's stream to each worker",
            labels=["worker"],
        )
        writes = CounterMetricFamily(
            self.name("stream_writes"),
            "Writes on the scheduler's stream to each worker (each carries one or more "
            "messages)",
            labels=["worker"],
        )
        per_write = GaugeMetricFamily(
            self.name("stream_messages_per_write"),
            "Messages per write on the scheduler's stream to each worker, over the "
            "stream's life",
            labels=["worker"],
        )
        wires = GaugeMetricFamily(
            self.name("streams_by_wire"),
            "The scheduler's streams to workers by who frames, writes and reads their "
            "small messages (fastworker: fastworker.wire; distributed: the comm)",
            labels=["wire"],
        )
        counts = dict.fromkeys(MODES, 0)
        wire_counts = dict.fromkeys(WIRES, 0)
        for address, stream in list(scheduler.stream_comms.items()):
            pacer = Pacer.of(stream)
            state = None if pacer is None else pacer.state()
            counts["stock" if state is None else state["mode"]] += 1
            wire_counts["distributed" if state is None else state["wire"]] += 1
            n_messages, n_writes = stream.message_count, stream.batch_count
            messages.add_metric([address], n_messages)
            writes.add_metric([address], n_writes)
            per_write.add_metric([address], n_messages / n_writes if n_writes else 0.0)
        for mode, n in counts.items():
            streams.add_metric([mode], n)
        for wire, n in wire_counts.items():
            wires.add_metric([wire], n)
        client_wires = GaugeMetricFamily(
            self.name("client_streams_by_wire"),
            "The scheduler's streams to clients by who frames, writes and reads their "
            "small messages (fastworker: fastworker.wire; distributed: the comm)",
            labels=["wire"],
        )
        for wire, n in {**dict.fromkeys(WIRES, 0), **client_wire_counts(scheduler)}.items():
            client_wires.add_metric([wire], n)
        yield streams
        yield wires
        yield client_wires
        yield messages
        yield writes
        yield per_write

"""Low-latency dispatch from 1 to 16 worker processes: tasks/s and scheduler CPU.

Every process is its own: the scheduler (``dask spec``, so its CPU time is its
own and not the client's) and each worker (one thread by default, no nanny),
started by distributed's ``SubprocessCluster``. For each cluster size one cluster per
configuration runs, side by side, of stock ``distributed.Worker`` processes or of
``fastworker.Worker`` processes (in-process executor and worker-side dispatch as
shipped), its scheduler with or without ``--preload fastworker`` (the scheduler
plugin, present before the workers join, so that every stream is paced from its
start), alternating which goes first in each repeat:

- ``stock``: stock workers, stock scheduler;
- ``stock+plugin``: stock workers, ``fastworker.SchedulerPlugin`` on the scheduler;
- ``fastworker``: fastworker workers, stock scheduler;
- ``fastworker+plugin``: fastworker workers and the scheduler plugin;
- with ``inline``, also ``fastworker-inline`` and ``fastworker-inline+plugin`` on a
  third cluster whose workers are opted in to the event-loop executor
  (``fastworker.inline.automatic: true``).

Each run is timed from
submission to completion on the client; the scheduler process's CPU time
(``time.process_time``, all its threads) and the workers' are read before and after.
"""
from __future__ import annotations

import gc
import logging
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from distributed import Client
from distributed.deploy.subprocess import SubprocessCluster

import fastworker
from bench_e2e import _array_sum, _map_noop, _settle, _tree, array_side, tree_leaves

#: Worker processes per cluster (1 thread each).
SIZES: tuple[int, ...] = (1, 2, 4, 8, 16)
QUICK_TASKS = 1_000
FULL_TASKS = 10_000

#: Worker class of each cluster, and the environment its processes start with.
WORKER_KINDS: dict[str, tuple[str, dict]] = {
    "stock": ("distributed.Worker", {}),
    "fastworker": ("fastworker.Worker", {}),
    "fastworker-inline": ("fastworker.Worker", {"DASK_FASTWORKER__INLINE__AUTOMATIC": "True"}),
}
#: Configuration -> (cluster, whether the scheduler plugin runs).
CONFIGURATIONS: dict[str, tuple[str, bool]] = {
    "stock": ("stock", False),
    "stock+plugin": ("stock", True),
    "fastworker": ("fastworker", False),
    "fastworker+plugin": ("fastworker", True),
}
#: Added with ``inline=True``: fastworker workers opted in to the event-loop executor.
INLINE_CONFIGURATIONS: dict[str, tuple[str, bool]] = {
    "fastworker-inline": ("fastworker-inline", False),
    "fastworker-inline+plugin": ("fastworker-inline", True),
}
WORKLOADS = {"map no-op": _map_noop, "tree (fan-in 8)": _tree}
#: Run only when asked for by name (``--workload array``): the dask.array sum of the
#: end-to-end group, for the worker's CPU per task on a third shape.
OPTIONAL_WORKLOADS = {"array sum": _array_sum}
ALL_WORKLOADS = {**WORKLOADS, **OPTIONAL_WORKLOADS}


def describe(name: str, n: int) -> str:
    if name == "map no-op":
        return f"client.map(no-op, range({n:,}))"
    if name == "array sum":
        side = array_side(n)
        return f"da.ones(({side:,}, {side:,}), chunks=50).sum()"
    return f"fan-in-8 delayed tree of sum over {tree_leaves(n):,} leaves"


@dataclass
class DispatchRow:
    workers: int
    workload: str
    description: str
    size: int
    runs: dict[str, list[dict]] = field(default_factory=dict)


@contextmanager
def _subprocess_environment(extra: dict):
    """Worker and scheduler processes inherit the environment: they log errors only
    and can import this module (the functions sent to them by client.run)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.environ.get("PYTHONPATH")
    changes = {
        "DASK_LOGGING__DISTRIBUTED": "error",
        "PYTHONPATH": here + (os.pathsep + path if path else ""),
        **extra,
    }
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def start_cluster(kind: str, plugin: bool, nworkers: int, threads: int = 1):
    """A cluster of ``kind`` workers; with ``plugin``, its scheduler starts with
    ``--preload fastworker`` (so every worker joins paced, with the Pacer's loop)."""
    worker_class, env = WORKER_KINDS[kind]
    with _subprocess_environment(env):
        cluster = SubprocessCluster(
            worker_class=worker_class,
            n_workers=nworkers,
            threads_per_worker=threads,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            scheduler_kwargs={"preload": ["fastworker"]} if plugin else None,
        )
    client = Client(cluster)
    client.wait_for_workers(nworkers, timeout=180)
    state = client.run_on_scheduler(fastworker.status)
    if state["scheduler_plugin"] is not plugin or (
        plugin and state["loops"].get("fastworker") != nworkers
    ):
        raise RuntimeError(f"scheduler plugin not {'on' if plugin else 'off'}: {state}")
    return cluster, client


def _scheduler_cpu(dask_scheduler) -> float:
    return time.process_time()


def _worker_counts(dask_worker) -> dict:
    return {"cpu": time.process_time(), "executed": dask_worker.state.executed_count}


def run_once(client: Client, workload, n: int) -> dict:
    workers = sorted(client.scheduler_info()["workers"])
    go = workload(client, n, workers)
    gc.collect()
    before = client.run(_worker_counts)
    s0 = client.run_on_scheduler(_scheduler_cpu)
    start = time.perf_counter()
    go()
    wall = time.perf_counter() - start
    s1 = client.run_on_scheduler(_scheduler_cpu)
    after = client.run(_worker_counts)
    _settle(client)
    return {
        "wall": wall,
        "tasks": sum(after[w]["executed"] - before[w]["executed"] for w in after),
        "scheduler_cpu": s1 - s0,
        "worker_cpu": sum(after[w]["cpu"] - before[w]["cpu"] for w in after),
    }


def run(
    tasks: int = QUICK_TASKS,
    repeats: int = 3,
    progress: bool = True,
    sizes: tuple[int, ...] = SIZES,
    workloads: list[str] | None = None,
    threads: int = 1,
    inline: bool = False,
    one_at_a_time: bool = False,
) -> tuple[list[DispatchRow], dict]:
    """The dispatch rows. ``one_at_a_time``: only the measured configuration's cluster
    is alive, started (and warmed up) for each repeat and closed after it, still
    alternating the configurations; for many workers on few cores, where the idle
    clusters' processes would take a share of the machine (slower: a cluster start
    per repeat)."""
    names = workloads or list(WORKLOADS)
    rows: list[DispatchRow] = []
    configurations = {**CONFIGURATIONS, **(INLINE_CONFIGURATIONS if inline else {})}
    kinds = sorted({kind for kind, _ in configurations.values()}, key=list(WORKER_KINDS).index)

    def say(msg: str) -> None:
        if progress:
            print(f"  dispatch: {msg}", file=sys.stderr, flush=True)

    def warm_up(client: Client, workload) -> None:
        workload(client, min(tasks, max(50, tasks // 10)), sorted(client.scheduler_info()["workers"]))()
        _settle(client)

    def measure_row(nworkers: int, name: str, measure) -> DispatchRow:
        """One row: ``measure(config)`` for each repeat of each configuration, the
        configurations in alternating order."""
        row = DispatchRow(nworkers, name, describe(name, tasks), tasks,
                          {c: [] for c in configurations})
        for i in range(repeats):
            order = list(configurations) if i % 2 == 0 else list(reversed(configurations))
            for config in order:
                result = measure(config)
                row.runs[config].append(result)
                say(f"{nworkers}w {name}: {config} repeat {i + 1}/{repeats}: "
                    f"{result['wall']:.2f} s, {result['tasks']:,} tasks")
        return row

    for nworkers in sizes:
        if one_at_a_time:
            say(f"{nworkers} worker process(es) x {threads} thread(s): one cluster alive at a "
                f"time, started for each repeat of {', '.join(configurations)}")
            for name in names:
                workload = ALL_WORKLOADS[name]

                def alone(config: str) -> dict:
                    cluster, client = start_cluster(*configurations[config], nworkers, threads)
                    try:
                        warm_up(client, workload)
                        return run_once(client, workload, tasks)
                    finally:
                        client.close()
                        cluster.close()

                rows.append(measure_row(nworkers, name, alone))
            continue
        say(f"{nworkers} worker process(es) x {threads} thread(s): starting a cluster for each "
            f"of {', '.join(configurations)}")
        clusters = {}
        try:
            for config, (kind, plugin) in configurations.items():
                clusters[config] = start_cluster(kind, plugin, nworkers, threads)
            for name in names:
                workload = ALL_WORKLOADS[name]
                for _, client in clusters.values():
                    warm_up(client, workload)
                rows.append(measure_row(
                    nworkers, name, lambda config: run_once(clusters[config][1], workload, tasks)
                ))
        finally:
            for cluster, client in clusters.values():
                client.close()
                cluster.close()
    info = {
        "tasks": tasks,
        "repeats": repeats,
        "sizes": list(sizes),
        "threads_per_worker": threads,
        "one_cluster_at_a_time": one_at_a_time,
        "workloads": {name: describe(name, tasks) for name in names},
        "worker_kinds": {k: {"class": WORKER_KINDS[k][0], "env": WORKER_KINDS[k][1]} for k in kinds},
        "configurations": {c: {"workers": k, "scheduler_plugin": p} for c, (k, p) in configurations.items()},
        "dispatch_rule": asdict(fastworker.dispatch.Rule.from_config()),
        "scheduler_cpu_clock": "time.process_time of the scheduler process (dask spec subprocess)",
    }
    return rows, info


def summarize(runs: list[dict]) -> dict:
    med = statistics.median
    return {
        "wall": med(r["wall"] for r in runs),
        "tasks": med(r["tasks"] for r in runs),
        "tasks_per_s": med(r["tasks"] / r["wall"] for r in runs),
        "scheduler_us_per_task": med(1e6 * r["scheduler_cpu"] / max(1, r["tasks"]) for r in runs),
        "worker_us_per_task": med(1e6 * r["worker_cpu"] / max(1, r["tasks"]) for r in runs),
    }


def row_record(row: DispatchRow) -> dict:
    rec = asdict(row)
    rec["medians"] = {c: summarize(runs) for c, runs in row.runs.items() if runs}
    stock = rec["medians"]["stock"]
    rec["speedup"] = {c: m["tasks_per_s"] / stock["tasks_per_s"] for c, m in rec["medians"].items()}
    rec["scheduler_cpu_ratio"] = {
        c: m["scheduler_us_per_task"] / stock["scheduler_us_per_task"] for c, m in rec["medians"].items()
    }
    return rec

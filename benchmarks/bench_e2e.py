"""End to end: real LocalClusters (worker processes), stock workers against fastworker.

For each cluster shape (``1x2``: one worker with two threads, ``2x1``: two workers
with one thread each) a stock cluster and a fastworker cluster are started side by
side, each gets one small warm-up run of every workload, and then every workload
runs ``repeats`` times on both, alternating which goes first. Each run is timed
from submission to completion on the client; the workers are asked before and
after it for their process CPU time, their executed-task and transfer counters and
the time they spent inside the state machine.

Time inside the state machine is measured the same way for both implementations:
the worker's ``handle_stimulus`` (the one door through which every event reaches
``worker.state.handle_stimulus``) is shadowed on the worker instance by a probe that,
for the length of that call, puts a thin stand-in in ``worker.state`` whose
``handle_stimulus`` times the real state's and whose other attributes are the real
state's. So only the state machine's own call is counted, not the Worker turning
its instructions into messages and asyncio tasks. The clock is the event-loop
thread's CPU time (``time.thread_time``), so neither waits for the GIL nor other
processes on the machine count, and the result compares with the worker process's
CPU time (``time.process_time``, all its threads); the median cost of an empty
timed window, measured in each worker, is subtracted per call. The probe costs two
attribute swaps and two clock reads per stimulus, on both implementations.

Which implementation a cluster runs is decided in one place, ``CLUSTER_KWARGS``.
"""
from __future__ import annotations

import gc
import logging
import operator
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from time import thread_time

import dask
import dask.array as da
import distributed
from dask import delayed
from distributed import Client, LocalCluster, wait

import fastworker

#: The one place that says how each implementation's workers are made: extra
#: keyword arguments for LocalCluster and the dask config the cluster is started
#: with (Nannies hand it to their worker processes). Every worker is a process of
#: its own: distributed's Nanny for stock, fastworker.Nanny (fastworker.Worker
#: processes) for fastworker, with the in-process executor on (the default) and off.
CLUSTER_KWARGS: dict[str, dict] = {
    "stock": {"worker_class": distributed.Nanny},
    "fastworker": {"worker_class": fastworker.Nanny},
    "fastworker_inline": {"worker_class": fastworker.Nanny},
}
CLUSTER_CONFIG: dict[str, dict] = {
    "stock": {},
    "fastworker": {},
    "fastworker_inline": {"fastworker.inline.automatic": True},
}

#: Cluster shapes: name -> (workers, threads per worker).
CONFIGS: dict[str, tuple[int, int]] = {"1x2": (1, 2), "2x1": (2, 1)}

#: Quick default and --full task counts per workload.
QUICK_TASKS = 1_000
FULL_TASKS = 20_000


# --- the workloads ---------------------------------------------------------------
# Each takes the client, a task budget and the worker addresses (sorted), builds
# what it needs untimed and returns the timed part, which runs to completion on
# that client; ``describe`` says what it runs. Task functions are builtins or
# operator functions, so worker processes never have to import this module.


def _map_noop(client: Client, n: int, workers: list[str]):
    """``client.map`` of a no-op over n items."""

    def go():
        futures = client.map(operator.pos, range(n), pure=False)
        with client.as_current():  # wait() runs on the default client's loop otherwise
            wait(futures)

    return go


def array_side(n: int) -> int:
    """Side of the square array of 50x50 chunks for a budget of n (4,000 for 20,000)."""
    return max(100, round(4_000 * (n / FULL_TASKS) ** 0.5 / 50) * 50)


def _array_sum(client: Client, n: int, workers: list[str]):
    side = array_side(n)
    total = da.ones((side, side), chunks=(50, 50)).sum()

    def go():
        assert client.compute(total).result() == side * side

    return go


def tree_leaves(n: int, fan_in: int = 8) -> int:
    """Leaves of a fan-in tree with about n tasks in all."""
    return max(fan_in, n * (fan_in - 1) // fan_in)


def _tree(client: Client, n: int, workers: list[str]):
    leaves = tree_leaves(n)
    level = [delayed(operator.pos)(i, dask_key_name=("leaf", i)) for i in range(leaves)]
    depth = 0
    while len(level) > 1:
        depth += 1
        level = [
            delayed(sum)(level[i : i + 8], dask_key_name=("sum", depth, i))
            for i in range(0, len(level), 8)
        ]
    root = level[0]

    def go():
        assert client.compute(root).result() == sum(range(leaves))

    return go


def _transfers(client: Client, n: int, workers: list[str]):
    """Inputs pinned to alternate workers, each output needs one from each.

    n/3 pairs: input a_i on the first worker, b_i on the last (the same worker on a
    one-worker cluster), and a_i + b_i, so with two workers every output fetches
    one 1 kB input from the other worker.
    """
    pairs = max(1, n // 3)

    def go():
        a = client.map(bytes, [1_000] * pairs, workers=workers[:1], pure=False)
        b = client.map(bytes, [1_000] * pairs, workers=workers[-1:], pure=False)
        futures = client.map(operator.add, a, b, pure=False)
        with client.as_current():
            wait(futures)

    return go


WORKLOADS = {
    "map no-op": _map_noop,
    "array sum": _array_sum,
    "tree (fan-in 8)": _tree,
    "transfers": _transfers,
}


# --- the probe, run inside each worker process via client.run ----------------------


class _TimedState:
    """Stands in for ``worker.state`` during one ``Worker.handle_stimulus`` call."""

    __slots__ = ("_probe",)

    def __init__(self, probe):
        object.__setattr__(self, "_probe", probe)

    def handle_stimulus(self, *stims):
        probe = self._probe
        start = thread_time()
        try:
            return probe.state.handle_stimulus(*stims)
        finally:
            probe.seconds += thread_time() - start
            probe.calls += 1
            probe.stimuli += len(stims)

    def __getattr__(self, name):
        return getattr(self._probe.state, name)

    def __setattr__(self, name, value):
        setattr(self._probe.state, name, value)


def _clock_overhead(samples: int = 2_000) -> float:
    """What one timed window adds by itself: the median of empty windows, seconds."""
    costs = []
    for _ in range(samples):
        start = thread_time()
        costs.append(thread_time() - start)
    return statistics.median(costs)


class _Probe:
    def __init__(self, worker):
        self.worker = worker
        self.state = worker.state
        self.inner = worker.handle_stimulus  # the bound Worker method
        self.view = _TimedState(self)
        self.seconds = 0.0
        self.calls = 0
        self.stimuli = 0
        self.overhead = _clock_overhead()

    def handle_stimulus(self, *stims):
        worker = self.worker
        real = worker.state
        if real is self.view:  # nested call: the outer one is timing
            return self.inner(*stims)
        self.state = real  # follows a state replaced after installation (plugin)
        worker.state = self.view
        try:
            return self.inner(*stims)
        finally:
            worker.state = real


def _install_probe(dask_worker) -> str:
    if not isinstance(getattr(dask_worker, "_bench_probe", None), _Probe):
        probe = _Probe(dask_worker)
        dask_worker._bench_probe = probe
        dask_worker.handle_stimulus = probe.handle_stimulus  # shadows the method
    return f"{type(dask_worker.state).__module__}.{type(dask_worker.state).__qualname__}"


def _read_probe(dask_worker) -> dict:
    probe = dask_worker._bench_probe
    state = probe.state
    return {
        "cpu": time.process_time(),
        # CPU seconds inside the state machine, less what the clock reads cost
        "sm_seconds": max(0.0, probe.seconds - probe.calls * probe.overhead),
        "sm_calls": probe.calls,
        "stimuli": probe.stimuli,
        "executed": state.executed_count,
        "transfers": state.transfer_incoming_count_total,
        "tasks_held": len(state.tasks),
    }


# --- measurement -----------------------------------------------------------------


@dataclass
class E2ERow:
    """One workload on one cluster shape: every repeat's metrics for both."""

    config: str
    workload: str
    description: str
    size: int
    stock: list[dict] = field(default_factory=list)
    fastworker: list[dict] = field(default_factory=list)
    fastworker_inline: list[dict] = field(default_factory=list)


def _settle(client: Client, timeout: float = 30.0) -> None:
    """Wait until the scheduler and every worker hold no task (the last run's are
    released), so that runs start alike."""
    deadline = time.monotonic() + timeout
    while True:
        held = client.run(lambda dask_worker: len(dask_worker.state.tasks))
        on_scheduler = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        if not on_scheduler and not any(held.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"tasks left after a run: scheduler {on_scheduler}, workers {held}")
        time.sleep(0.02)


def run_once(client: Client, workload, n: int) -> dict:
    """One timed run: wall time on the client, deltas summed over the workers."""
    workers = sorted(client.scheduler_info()["workers"])
    go = workload(client, n, workers)
    gc.collect()
    before = client.run(_read_probe)
    cpu0 = time.process_time()
    start = time.perf_counter()
    go()
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu0
    after = client.run(_read_probe)
    _settle(client)
    delta = {
        k: sum(after[w][k] - before[w][k] for w in after)
        for k in ("cpu", "sm_seconds", "sm_calls", "stimuli", "executed", "transfers")
    }
    return {
        "wall": wall,
        "tasks": delta["executed"],
        "worker_cpu": delta["cpu"],
        "sm_seconds": delta["sm_seconds"],
        "sm_calls": delta["sm_calls"],
        "stimuli": delta["stimuli"],
        "transfers": delta["transfers"],  # incoming transfers (one may bring several keys)
        "client_cpu": client_cpu,  # client and scheduler share this process
    }


def start_cluster(impl: str, nworkers: int, nthreads: int) -> tuple[LocalCluster, Client]:
    with dask.config.set(CLUSTER_CONFIG[impl]):
        cluster = LocalCluster(
            n_workers=nworkers,
            threads_per_worker=nthreads,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            **CLUSTER_KWARGS[impl],
        )
    client = Client(cluster)
    client.wait_for_workers(nworkers)
    return cluster, client


def run(
    tasks: int = QUICK_TASKS,
    repeats: int = 3,
    progress: bool = True,
    configs: list[str] | None = None,
    workloads: list[str] | None = None,
) -> tuple[list[E2ERow], dict]:
    """Every workload on every cluster shape; returns the rows and what was run."""
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the clusters' start/stop chatter in this process
    try:
        return _run(tasks, repeats, progress, configs, workloads)
    finally:
        quiet.setLevel(level)


def _run(tasks, repeats, progress, configs, workloads):
    configs = configs or list(CONFIGS)
    names = workloads or list(WORKLOADS)
    rows: list[E2ERow] = []
    state_classes: dict[str, dict[str, str]] = {}

    def say(msg: str) -> None:
        if progress:
            print(f"  e2e: {msg}", file=sys.stderr, flush=True)

    for config in configs:
        nworkers, nthreads = CONFIGS[config]
        say(f"{config}: starting clusters {', '.join(CLUSTER_KWARGS)} ({nworkers} worker(s) x {nthreads} thread(s))")
        clusters = {impl: start_cluster(impl, nworkers, nthreads) for impl in CLUSTER_KWARGS}
        try:
            for impl, (_, client) in clusters.items():
                kinds = set(client.run(_install_probe).values())
                state_classes.setdefault(config, {})[impl] = ", ".join(sorted(kinds))
            for name in names:
                workload = WORKLOADS[name]
                warm = min(tasks, max(50, tasks // 10))
                for impl, (_, client) in clusters.items():
                    workload(client, warm, sorted(client.scheduler_info()["workers"]))()
                    _settle(client)
                row = E2ERow(config, name, describe(name, tasks), tasks)
                for i in range(repeats):
                    order = list(clusters) if i % 2 == 0 else list(reversed(clusters))
                    for impl in order:
                        client = clusters[impl][1]
                        result = run_once(client, workload, tasks)
                        getattr(row, impl).append(result)
                        say(
                            f"{config} {name}: {impl} repeat {i + 1}/{repeats}: "
                            f"{result['wall']:.2f} s, {result['tasks']:,} tasks"
                        )
                rows.append(row)
        finally:
            for cluster, client in clusters.values():
                client.close()
                cluster.close()
    info = {
        "tasks": tasks,
        "repeats": repeats,
        "configs": {c: {"workers": CONFIGS[c][0], "threads_per_worker": CONFIGS[c][1]} for c in configs},
        "workloads": {name: describe(name, tasks) for name in names},
        "cluster_kwargs": {impl: {k: repr(v) for k, v in kw.items()} for impl, kw in CLUSTER_KWARGS.items()},
        "cluster_config": CLUSTER_CONFIG,
        "state_classes": state_classes,
        "dask_config": {
            k: dask.config.get(k)
            for k in ("distributed.worker.validate", "distributed.worker.profile.enabled")
        },
        "state_machine_clock": "time.thread_time of the worker's event-loop thread",
    }
    return rows, info


def describe(name: str, n: int) -> str:
    if name == "map no-op":
        return f"client.map(no-op, range({n:,}))"
    if name == "array sum":
        side = array_side(n)
        return f"da.ones(({side:,}, {side:,}), chunks=(50, 50)).sum()"
    if name == "tree (fan-in 8)":
        return f"fan-in-8 delayed tree of sum over {tree_leaves(n):,} leaves"
    return f"{max(1, n // 3):,} x operator.add(a_i, b_i), a_i pinned on the first worker, b_i on the last"


def summarize(runs: list[dict]) -> dict:
    """Medians over repeats of the reported metrics."""
    med = statistics.median
    return {
        "wall": med(r["wall"] for r in runs),
        "tasks": med(r["tasks"] for r in runs),
        "tasks_per_s": med(r["tasks"] / r["wall"] for r in runs),
        "cpu_us_per_task": med(1e6 * r["worker_cpu"] / max(1, r["tasks"]) for r in runs),
        "sm_us_per_task": med(1e6 * r["sm_seconds"] / max(1, r["tasks"]) for r in runs),
        "sm_share": med(r["sm_seconds"] / r["worker_cpu"] if r["worker_cpu"] else 0.0 for r in runs),
        "transfers": med(r["transfers"] for r in runs),
    }


def row_record(row: E2ERow) -> dict:
    rec = asdict(row)
    s, f = summarize(row.stock), summarize(row.fastworker)
    rec["stock_median"] = s
    rec["fastworker_median"] = f
    rec["wall_speedup"] = s["wall"] / f["wall"]
    rec["cpu_ratio"] = s["cpu_us_per_task"] / f["cpu_us_per_task"]
    if row.fastworker_inline:
        n = rec["fastworker_inline_median"] = summarize(row.fastworker_inline)
        rec["inline_wall_speedup"] = s["wall"] / n["wall"]
        rec["inline_cpu_ratio"] = s["cpu_us_per_task"] / n["cpu_us_per_task"]
    return rec

"""fastworker's counters on the real HTTP ``/metrics`` endpoints (docs/prometheus.md).

A `dask scheduler --preload fastworker` process and a `dask worker --preload
fastworker` process serve ``/metrics``; each test scrapes them over HTTP, parses the
text with ``prometheus_client``'s parser and checks one counter: its value against
``fastworker.status`` and against the work the test sent (so the values move). A
cluster of stock processes (no fastworker anywhere) has none of the counters, and one
where ``fastworker.enabled`` is False says 0 / ``stock``.
"""
from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distributed import Client

import fastworker

from test_cli import Processes, scheduler_address, wait_for_names

prometheus_parser = pytest.importorskip("prometheus_client.parser")

DASK = str(Path(sys.executable).with_name("dask"))


class Cluster:
    """A scheduler and one worker process, their HTTP ports and a client."""

    def __init__(self, processes: Processes, options: list[str], env: dict | None = None):
        sched_file = processes.directory / f"scheduler-{len(processes.procs)}.json"
        common = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", *options]
        proc, log = processes.start(
            [DASK, "scheduler", "--port", "0", "--scheduler-file", str(sched_file), *common],
            env=env, name="scheduler",
        )
        self.address = scheduler_address(proc, log, sched_file)
        processes.start([DASK, "worker", self.address, "--name", "w", "--nthreads", "2",
                         "--no-nanny", *common], env=env, name="worker")
        self.client = Client(self.address, timeout=30)
        self.worker = wait_for_names(self.client, ["w"])["w"]
        info = self.client.scheduler_info(n_workers=-1)
        self.scheduler_port = info["services"]["dashboard"]
        self.worker_port = info["workers"][self.worker]["services"]["dashboard"]

    def scrape(self, port: int) -> dict:
        """{family name: {(sample name, labels as sorted tuple): value}}"""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
        return {
            family.name: {
                (s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples
            }
            for family in prometheus_parser.text_string_to_metric_families(text)
        }

    def worker_metrics(self) -> dict:
        return self.scrape(self.worker_port)

    def scheduler_metrics(self) -> dict:
        return self.scrape(self.scheduler_port)

    def run_tasks(self, n: int) -> None:
        futures = self.client.map(lambda i: i + 1, range(n), pure=False)
        assert sum(self.client.gather(futures)) == sum(range(1, n + 1))
        del futures

    def worker_status(self) -> dict:
        return self.client.run(fastworker.status, workers=[self.worker])[self.worker]


def _cluster(tmp_path_factory, name, options, env=None):
    processes = Processes(tmp_path_factory.mktemp(name))
    try:
        cluster = Cluster(processes, options, env)
    except BaseException:
        processes.stop_all()
        raise
    return processes, cluster


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    processes, cluster = _cluster(tmp_path_factory, "prom-fast", ["--preload", "fastworker"])
    yield cluster
    cluster.client.close()
    processes.stop_all()


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    processes, cluster = _cluster(tmp_path_factory, "prom-stock", [])
    yield cluster
    cluster.client.close()
    processes.stop_all()


@pytest.fixture(scope="module")
def disabled(tmp_path_factory):
    processes, cluster = _cluster(
        tmp_path_factory, "prom-off", ["--preload", "fastworker"],
        env={"DASK_FASTWORKER__ENABLED": "False"},
    )
    yield cluster
    cluster.client.close()
    processes.stop_all()


def fastworker_families(metrics: dict) -> set[str]:
    return {name for name in metrics if "fastworker" in name}


def test_stock_processes_have_no_fastworker_metrics(stock):
    stock.run_tasks(5)
    worker, scheduler = stock.worker_metrics(), stock.scheduler_metrics()
    assert "dask_worker_threads" in worker  # distributed's own are there
    assert "dask_scheduler_workers" in scheduler
    assert fastworker_families(worker) == set()
    assert fastworker_families(scheduler) == set()


def test_worker_fastworker_gauge(fast, disabled):
    assert fast.worker_metrics()["dask_worker_fastworker"] == {("dask_worker_fastworker", ()): 1}
    assert fast.worker_status()["fastworker"] is True
    off = disabled.worker_metrics()
    assert off["dask_worker_fastworker"] == {("dask_worker_fastworker", ()): 0}
    assert disabled.worker_status()["fastworker"] is False


def tasks(metrics: dict) -> dict:
    family = metrics["dask_worker_fastworker_tasks"]
    assert {name for name, _ in family} == {"dask_worker_fastworker_tasks_total"}
    return {dict(labels)["path"]: value for (_, labels), value in family.items()}


def test_worker_tasks_by_path(fast, disabled):
    before = tasks(fast.worker_metrics())
    assert before == {path: float(n) for path, n in fast.worker_status()["tasks_by_path"].items()}
    fast.run_tasks(40)
    # a coroutine task takes distributed's own execute (counted as "stock")
    async def coro(x):
        return x
    assert fast.client.submit(coro, 1, pure=False).result() == 1
    after = tasks(fast.worker_metrics())
    assert after["pool"] - before["pool"] == 40
    assert after["stock"] - before["stock"] == 1
    assert after["inline"] == before["inline"] == 0
    assert after == {path: float(n) for path, n in fast.worker_status()["tasks_by_path"].items()}
    # a worker that keeps stock counts nothing
    disabled.run_tasks(3)
    assert disabled.worker_metrics()["dask_worker_fastworker_tasks"] == {}


def test_worker_reruns(fast):
    def reruns():
        family = fast.worker_metrics()["dask_worker_fastworker_reruns"]
        return {dict(labels)["cause"]: value for (_, labels), value in family.items()}

    before = reruns()
    assert set(before) == {"takeback", "fallback"}
    assert sum(before.values()) == fast.worker_status()["reruns"]

    # opted in to the event-loop executor, the task asks for a thread: it is stopped
    # there and runs again in the pool (a fallback)
    def asks_for_a_thread(x):
        from distributed import secede
        secede()
        return x

    import dask

    with dask.annotate(executor="inline"):
        future = fast.client.submit(asks_for_a_thread, 7, pure=False)
    assert future.result() == 7
    after = reruns()
    status = fast.worker_status()
    assert sum(after.values()) == status["reruns"]
    assert after["fallback"] - before["fallback"] == 1
    assert after["takeback"] == before["takeback"]


def test_worker_dispatch_mode_and_stream(fast, disabled):
    def mode(cluster):
        family = cluster.worker_metrics()["dask_worker_fastworker_dispatch_mode"]
        return {dict(labels)["mode"]: value for (_, labels), value in family.items()}

    assert mode(fast) == {"quiet": 1, "busy": 0, "stock": 0}
    assert fast.worker_status()["dispatch"]["mode"] == "quiet"
    assert mode(disabled) == {"quiet": 0, "busy": 0, "stock": 1}

    def stream(cluster):
        metrics = cluster.worker_metrics()
        return (
            metrics["dask_worker_fastworker_stream_messages"][
                ("dask_worker_fastworker_stream_messages_total", ())],
            metrics["dask_worker_fastworker_stream_writes"][
                ("dask_worker_fastworker_stream_writes_total", ())],
        )

    messages, writes = stream(fast)
    fast.run_tasks(20)
    messages2, writes2 = stream(fast)
    assert messages2 >= messages + 20  # at least a task-finished message per task
    assert writes2 > writes
    assert messages2 >= writes2


def test_scheduler_dispatch_gauge(fast, disabled):
    assert fast.scheduler_metrics()["dask_scheduler_fastworker_dispatch"] == {
        ("dask_scheduler_fastworker_dispatch", ()): 1}
    assert disabled.scheduler_metrics()["dask_scheduler_fastworker_dispatch"] == {
        ("dask_scheduler_fastworker_dispatch", ()): 0}
    assert fast.client.run_on_scheduler(fastworker.status)["scheduler_plugin"] is True


def test_scheduler_workers_by_state_machine(fast, disabled):
    def machines(cluster):
        # the worker metric travels with heartbeats: wait for the first one
        deadline = time.monotonic() + 30
        while True:
            family = cluster.scheduler_metrics()["dask_scheduler_fastworker_workers"]
            found = {dict(labels)["state_machine"]: value for (_, labels), value in family.items()}
            if sum(found.values()) == 1 or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    assert machines(fast) == {"fastworker": 1, "stock": 0}
    assert machines(disabled) == {"fastworker": 0, "stock": 1}


def test_scheduler_streams_by_mode(fast, disabled):
    def modes(cluster):
        family = cluster.scheduler_metrics()["dask_scheduler_fastworker_streams"]
        return {dict(labels)["mode"]: value for (_, labels), value in family.items()}

    assert modes(fast) == {"quiet": 1, "busy": 0, "stock": 0}
    assert fast.client.run_on_scheduler(fastworker.status)["modes"] == {"quiet": 1}
    assert modes(disabled) == {"quiet": 0, "busy": 0, "stock": 1}


def test_worker_wire(fast, disabled):
    def wire(cluster):
        return cluster.worker_metrics()["dask_worker_fastworker_wire"][
            ("dask_worker_fastworker_wire", ())]

    assert wire(fast) == 1
    assert fast.worker_status()["dispatch"]["wire"] == "fastworker"
    assert wire(disabled) == 0
    assert disabled.worker_status()["dispatch"] is None


@pytest.mark.parametrize("streams, status_key", [("streams", "wires"),
                                                 ("client_streams", "client_wires")])
def test_scheduler_streams_by_wire(fast, disabled, streams, status_key):
    def wires(cluster):
        family = cluster.scheduler_metrics()[f"dask_scheduler_fastworker_{streams}_by_wire"]
        return {dict(labels)["wire"]: value for (_, labels), value in family.items()}

    # the worker joined, and the test's client connected to, a scheduler that already
    # ran the plugin: the worker's stream has the Pacer's loop and the wire from its
    # start, the client's stream the wire on distributed's loop
    assert wires(fast) == {"fastworker": 1, "distributed": 0}
    assert fast.client.run_on_scheduler(fastworker.status)[status_key] == {"fastworker": 1}
    assert wires(disabled) == {"fastworker": 0, "distributed": 1}


def test_scheduler_messages_per_write_per_stream(fast):
    def per_stream():
        metrics = fast.scheduler_metrics()
        out = {}
        for family in ("stream_messages", "stream_writes", "stream_messages_per_write"):
            samples = metrics[f"dask_scheduler_fastworker_{family}"]
            assert {dict(labels)["worker"] for _, labels in samples} == {fast.worker}
            (value,) = samples.values()
            out[family] = value
        return out

    before = per_stream()
    fast.run_tasks(30)
    after = per_stream()
    assert after["stream_messages"] >= before["stream_messages"] + 30  # a compute-task each
    assert after["stream_writes"] > before["stream_writes"]
    assert after["stream_messages_per_write"] == pytest.approx(
        after["stream_messages"] / after["stream_writes"])
    assert after["stream_messages_per_write"] >= 1


def test_in_process_workers_each_report_their_own():
    """Two workers in one process (LocalCluster(processes=False)) share
    prometheus_client's registry; each one's /metrics reports that worker."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      worker_class=fastworker.Worker,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        a, b = sorted(cluster.workers.values(), key=lambda w: w.address)
        futures = client.map(lambda i: i, range(12), workers=[a.address], pure=False,
                             allow_other_workers=False)
        client.gather(futures)
        for worker, expected in ((a, 12), (b, 0), (a, 12)):
            text = urllib.request.urlopen(
                f"http://127.0.0.1:{worker.http_server.port}/metrics", timeout=30).read()
            families = {f.name: f for f in
                        prometheus_parser.text_string_to_metric_families(text.decode())}
            pool = [s.value for s in families["dask_worker_fastworker_tasks"].samples
                    if s.labels == {"path": "pool"}]
            assert pool == [expected], worker.address
            assert fastworker.status(worker)["tasks_by_path"]["pool"] == expected

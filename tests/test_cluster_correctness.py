"""Real graphs on clusters: stock distributed vs fastworker.

Most tests run on process clusters, once per configuration (distributed.Nanny,
fastworker.Nanny, and fastworker.Nanny with fastworker.SchedulerPlugin on the
scheduler); all must compute the same, known results. The last section runs
in-process workers given the state class through distributed's own
``WorkerStateClass`` keyword (LocalCluster and Worker), once per implementation.
Every worker's state is checked with ``validate_state()`` after each test
on the shared cluster; the clusters of the resource, pause and fault tests run with
``distributed.worker.validate`` (a check after every stimulus, quadratic in the
number of tasks, hence not on the shared cluster's 20,000-task graphs).
"""
from __future__ import annotations

import asyncio
import operator
import os
import time
import traceback
import urllib.request

import numpy as np
import pytest

import dask
import dask.array as da
import distributed
from dask import delayed
from distributed import (
    Client,
    Event,
    LocalCluster,
    Scheduler,
    Worker,
    get_client,
    get_worker,
    rejoin,
    secede,
    wait,
)

import fastworker

# Nannies, so that every worker is a process of its own (fastworker.Nanny starts
# fastworker.Worker processes). "fastworker+plugin" adds fastworker.SchedulerPlugin
# (low-latency dispatch) to the scheduler through `--preload fastworker`'s hook.
WORKER_CLASSES = {
    "stock": distributed.Nanny,
    "fastworker": fastworker.Nanny,
    "fastworker+plugin": fastworker.Nanny,
}
STATE_MODULES = {
    "stock": "distributed.worker_state_machine",
    "fastworker": "fastworker.workerstate",
    "fastworker+plugin": "fastworker.workerstate",
}
SCHEDULER_PLUGIN = {"stock": False, "fastworker": False, "fastworker+plugin": True}


@pytest.fixture(params=list(WORKER_CLASSES), ids=str, scope="module")
def kind(request):
    return request.param


def make_cluster(kind, validate=True, **kwargs):
    options = dict(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        dashboard_address=":0",
        worker_class=WORKER_CLASSES[kind],
    )
    if SCHEDULER_PLUGIN[kind]:
        options["scheduler_kwargs"] = {"preload": ["fastworker"]}
    options.update(kwargs)
    with dask.config.set({"distributed.worker.validate": validate}):
        return LocalCluster(**options)


def check_state_class(client, kind):
    modules = client.run(lambda dask_worker: type(dask_worker.state).__module__)
    assert set(modules.values()) == {STATE_MODULES[kind]}
    dispatch = client.run_on_scheduler(fastworker.status)
    assert dispatch["scheduler_plugin"] is SCHEDULER_PLUGIN[kind], dispatch
    if SCHEDULER_PLUGIN[kind]:
        assert dispatch["paced_streams"] == dispatch["streams"] == len(modules), dispatch
    pids = client.run(os.getpid)
    assert len(set(pids.values())) == len(pids) and os.getpid() not in pids.values()


def validate_workers(client):
    client.run(lambda dask_worker: dask_worker.state.validate_state())


@pytest.fixture(scope="module")
def shared_client(kind):
    # No root-task queuing on the scheduler: every task goes to a worker at once, so
    # the workers' ready queues get deep (and the run is not bound by one scheduler
    # round trip per task).
    with dask.config.set({"distributed.scheduler.worker-saturation": float("inf")}):
        cluster = make_cluster(kind, validate=False)
    with cluster, Client(cluster) as c:
        check_state_class(c, kind)
        yield c
        check_state_class(c, kind)


@pytest.fixture
def client(shared_client):
    yield shared_client
    validate_workers(shared_client)


def tree_sum(values, fan_in=8):
    while len(values) > 1:
        values = [delayed(sum)(values[i : i + fan_in]) for i in range(0, len(values), fan_in)]
    return values[0]


def inc(x):
    return x + 1


# --- graphs -----------------------------------------------------------------------------


def test_array_reductions_small_chunks(client):
    x = da.arange(250_000, chunks=5_000).reshape((500, 500)).rechunk((25, 25))
    expected = np.arange(250_000).reshape((500, 500))
    assert x.sum().compute() == expected.sum()
    np.testing.assert_array_equal((x + x.T).sum(axis=0).compute(), (expected + expected.T).sum(axis=0))
    np.testing.assert_allclose(x.mean(axis=1).compute(), expected.mean(axis=1))
    assert da.ones((2000, 2000), chunks=(50, 50)).sum().compute() == 4_000_000


def test_delayed_tree(client):
    leaves = [delayed(inc)(i) for i in range(5_000)]
    assert tree_sum(leaves).compute() == sum(range(1, 5_001))


def test_map_20000(client):
    futures = client.map(operator.mul, range(20_000), range(20_000))
    assert sum(client.gather(futures)) == sum(i * i for i in range(20_000))
    del futures


def test_errors_reach_the_client_with_traceback(client):
    def boom(x):
        raise ZeroDivisionError(f"boom {x}")

    future = client.submit(boom, 7)
    with pytest.raises(ZeroDivisionError, match="boom 7"):
        future.result()
    assert "in boom" in "".join(traceback.format_tb(future.traceback()))
    downstream = client.submit(inc, future)
    with pytest.raises(ZeroDivisionError):
        downstream.result()
    assert client.submit(inc, 1).result() == 2  # the worker goes on


def test_retries(client, tmp_path):
    marker = tmp_path / "attempts"

    def flaky(path):
        n = int(open(path).read()) if os.path.exists(path) else 0
        open(path, "w").write(str(n + 1))
        if n < 2:
            raise RuntimeError(f"attempt {n}")
        return n

    assert client.submit(flaky, str(marker), retries=3, pure=False).result() == 2
    assert marker.read_text() == "3"


def test_secede_and_get_client_long_running(client):
    def fan_out(n):
        c = get_client()
        futures = c.map(inc, range(n), pure=False)
        secede()
        total = sum(c.gather(futures))
        rejoin()
        return total

    # More long-running tasks than threads: seceded tasks free their threads.
    outer = client.map(fan_out, [100, 200, 300, 400, 500, 600], pure=False)
    assert client.gather(outer) == [sum(range(1, n + 1)) for n in (100, 200, 300, 400, 500, 600)]


def test_transfers_between_workers(client):
    a, b = sorted(client.scheduler_info()["workers"])
    xs = client.map(lambda i: np.full(1000, i), range(50), workers=[a], pure=False)
    total = client.submit(lambda arrays: int(sum(x.sum() for x in arrays)), xs, workers=[b])
    assert total.result() == 1000 * sum(range(50))
    fetched = client.run(lambda dask_worker: dask_worker.state.transfer_incoming_count_total, workers=[b])
    assert fetched[b] >= 1


def test_work_stealing(client):
    a, b = sorted(client.scheduler_info()["workers"])
    seed = client.submit(lambda: 1, workers=[a])
    wait(seed)

    def slow(x, i):
        time.sleep(0.02)
        return get_worker().address

    # All depend on data held by `a`, so the scheduler queues them there; stealing
    # moves some to `b`.
    futures = [client.submit(slow, seed, i, pure=False) for i in range(200)]
    where = client.gather(futures)
    assert len(where) == 200
    assert set(where) == {a, b}


def test_cancel_while_running(kind):
    with make_cluster(kind, n_workers=1) as cluster, Client(cluster) as client:
        cancel_while_running(client)
        validate_workers(client)


def cancel_while_running(client):
    ev = Event()
    started = Event()

    def wait_for(ev, started):
        started.set()
        ev.wait(30)
        return 1

    future = client.submit(wait_for, ev, started, pure=False)
    started.wait(30)
    key = future.key
    future.cancel()
    assert future.cancelled()

    def state_of_key(dask_worker):
        ts = dask_worker.state.tasks.get(key)
        return ts.state if ts is not None else None

    # The worker cannot stop the running task: it keeps it as cancelled until it
    # ends, and meanwhile runs others.
    deadline = time.monotonic() + 30
    while "cancelled" not in client.run(state_of_key).values():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.submit(inc, 41, pure=False).result() == 42
    ev.set()

    deadline = time.monotonic() + 30
    while any(key in keys for keys in client.run(lambda dask_worker: list(dask_worker.state.tasks)).values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.submit(inc, 1, pure=False).result() == 2


def test_introspection_http_and_cluster_dump(client, tmp_path):
    counts = client.run(lambda dask_worker: dask_worker.state.task_counter.current_count(by_prefix=False))
    assert len(counts) == 2
    ports = client.run(lambda dask_worker: dask_worker.http_server.port)
    future = client.submit(inc, 1)
    future.result()
    memory_gauges = []
    for port in ports.values():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.read() == b"ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        # Read from the state's nthreads and task counter.
        assert "dask_worker_threads 2.0" in metrics
        memory_gauges += [m for m in metrics.splitlines() if m.startswith('dask_worker_tasks{state="memory"}')]
    assert memory_gauges == ['dask_worker_tasks{state="memory"} 1.0']
    stories = client.story(future.key)
    # The worker's part of the story: (worker, key, start, finish, ...).
    assert any(s[0] != "scheduler" and s[2:4] == ("executing", "memory") for s in stories)
    client.dump_cluster_state(str(tmp_path / "dump"), format="yaml")
    assert (tmp_path / "dump.yaml").exists()
    text = (tmp_path / "dump.yaml").read_text()
    assert future.key in text or str(future.key) in text


# --- clusters of their own --------------------------------------------------------------


def test_resources_are_respected(kind):
    with make_cluster(kind, n_workers=1, threads_per_worker=4, resources={"GPU": 1}) as cluster, Client(
        cluster
    ) as client:
        def gpu_task(i):
            w = get_worker()
            running = sum(1 for ts in w.state.executing if ts.resource_restrictions)
            time.sleep(0.005)
            return running

        with dask.annotate(resources={"GPU": 1}):
            xs = [delayed(gpu_task)(i) for i in range(40)]
        free = [delayed(inc)(i) for i in range(40)]
        concurrent, results = dask.compute(xs, free)
        assert set(concurrent) == {1}  # never two GPU tasks at once
        assert results == list(range(1, 41))
        available = client.run(lambda dask_worker: dict(dask_worker.state.available_resources))
        assert list(available.values()) == [{"GPU": 1}]


def test_pause_and_unpause_under_memory_pressure(kind):
    memory = {
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": 0.8,
        "distributed.worker.memory.terminate": False,
        "distributed.worker.memory.monitor-interval": "20ms",
    }
    with dask.config.set(memory):
        cluster = make_cluster(kind, n_workers=1, threads_per_worker=2, memory_limit="4GiB")
    with cluster, Client(cluster) as client:
        (addr,) = client.scheduler_info()["workers"]

        def squeeze(dask_worker):
            # Memory pressure as the worker's own monitor sees it: the process already
            # uses more than 80% of its (lowered) limit.
            import psutil

            dask_worker.memory_manager.memory_limit = int(psutil.Process().memory_info().rss)

        def relieve(dask_worker):
            dask_worker.memory_manager.memory_limit = 4 * 2**30

        def status(dask_worker):
            return dask_worker.status.name

        client.run(squeeze)
        deadline = time.monotonic() + 30
        while client.run(status)[addr] != "paused":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        futures = client.map(inc, range(100), pure=False)
        time.sleep(0.5)
        assert not any(f.done() for f in futures)
        client.run(relieve)
        assert client.gather(futures) == list(range(1, 101))
        events = client.run(
            lambda dask_worker: [type(e).__name__ for e in dask_worker.state.stimulus_log]
        )[addr]
        assert "PauseEvent" in events and "UnpauseEvent" in events


def test_killed_worker_process_is_restarted_and_graph_completes(kind):
    with make_cluster(kind, n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        def slow_inc(x):
            time.sleep(0.002)
            return x + 1

        leaves = [delayed(slow_inc)(i) for i in range(1_500)]
        total = client.compute(tree_sum(leaves))
        deadline = time.monotonic() + 60
        while sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values()) < 50:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        victim = sorted(client.scheduler_info()["workers"])[0]
        async def die():
            os._exit(1)

        client.run(die, workers=[victim], wait=False)
        assert total.result(timeout=120) == sum(range(1, 1_501))
        client.wait_for_workers(2, timeout=60)
        check_state_class(client, kind)


@pytest.mark.parametrize("fault", ["busy", "dropped"])
def test_peer_refuses_or_drops_a_gather(kind, fault):
    with make_cluster(kind, n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])

        def sabotage(dask_worker, fault=fault):
            real = dask_worker.handlers["get_data"]
            calls = []

            async def get_data(comm, *args, **kwargs):
                calls.append(1)
                if len(calls) <= 2:
                    if fault == "busy":
                        return {"status": "busy"}
                    comm.abort()  # the connection drops mid-request
                    raise OSError("dropped by the test")
                return await real(comm, *args, **kwargs)

            dask_worker.handlers["get_data"] = get_data
            dask_worker._test_gather_calls = calls

        x = client.submit(lambda: np.arange(100), workers=[a], pure=False)
        wait(x)
        client.run(sabotage, workers=[a])
        y = client.submit(lambda arr: int(arr.sum()) + 1, x, workers=[b], pure=False)
        assert y.result(timeout=60) == sum(range(100)) + 1
        calls = client.run(lambda dask_worker: len(dask_worker._test_gather_calls), workers=[a])[a]
        assert calls == 3  # refused or dropped twice, served the third time
        validate_workers(client)


# --- in-process workers through WorkerStateClass ------------------------------------------


def test_in_process_workers_with_worker_state_class(impl):
    """LocalCluster(WorkerStateClass=...): two in-process workers (dependencies also
    travel between them), checking their state after every stimulus."""
    with dask.config.set({"distributed.worker.validate": True}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0",
            WorkerStateClass=impl.WorkerState,
        )
    with cluster, Client(cluster) as client:
        kinds = client.run(lambda dask_worker: type(dask_worker.state))
        assert set(kinds.values()) == {impl.WorkerState}
        futures = client.map(operator.add, range(2_000), range(2_000))
        assert client.gather(futures) == [2 * i for i in range(2_000)]
        x = da.ones((400, 400), chunks=(20, 20))
        assert (x + x.T).mean(axis=0).compute().tolist() == [2.0] * 400
        total = tree_sum([delayed(inc)(i) for i in range(600)]).compute()
        assert total == sum(range(1, 601))
        cancel_while_running(client)
        validate_workers(client)


def test_worker_state_class_keyword_of_worker(impl):
    """Worker(scheduler_address, WorkerStateClass=...), as the README documents."""

    async def main():
        async with Scheduler(dashboard_address=":0") as s:
            async with Worker(s.address, WorkerStateClass=impl.WorkerState) as w:
                async with Client(s.address, asynchronous=True) as c:
                    assert await c.submit(operator.add, 20, 22) == 42
                    assert isinstance(w.state, impl.WorkerState)

    asyncio.run(main())

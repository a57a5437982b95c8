"""The compiled WorkerState inside real workers: same results as stock.

In-process LocalClusters (two workers, so dependencies also travel between
workers), ``validate=True`` so every worker checks its state after each stimulus.
"""
from __future__ import annotations

import operator

import pytest

import dask
from dask import delayed
from distributed import Client, LocalCluster, Worker, wait

import fastworker


@pytest.fixture
def cluster_client(impl):
    with dask.config.set({"distributed.worker.validate": True}):
        with LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=False,
            dashboard_address=":0",
            WorkerStateClass=impl.WorkerState,
        ) as cluster, Client(cluster) as client:
            yield client


def tree_sum(values, fan_in=8):
    while len(values) > 1:
        values = [delayed(sum)(values[i : i + fan_in]) for i in range(0, len(values), fan_in)]
    return values[0]


def test_workers_run_the_requested_state_machine(cluster_client, impl):
    kinds = cluster_client.run(lambda dask_worker: type(dask_worker.state))
    assert set(kinds.values()) == {impl.WorkerState}


def test_map_array_tree_and_errors(cluster_client):
    client = cluster_client
    futures = client.map(operator.add, range(2_000), range(2_000))
    assert client.gather(futures) == [2 * i for i in range(2_000)]

    da = pytest.importorskip("dask.array")
    x = da.ones((400, 400), chunks=(20, 20))
    assert x.sum().compute() == 160_000
    assert (x + x.T).mean(axis=0).compute().tolist() == [2.0] * 400

    assert tree_sum([delayed(lambda i: i)(i) for i in range(600)]).compute() == sum(range(600))

    def boom(x):
        raise ValueError(f"boom {x}")

    future = client.submit(boom, 1)
    with pytest.raises(ValueError, match="boom 1"):
        future.result()
    assert "boom" in "".join(__import__("traceback").format_tb(future.traceback()))


def test_resources_and_cancel(impl):
    with dask.config.set({"distributed.worker.validate": True}):
        with LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
            resources={"GPU": 1}, WorkerStateClass=impl.WorkerState,
        ) as cluster, Client(cluster) as client:
            with dask.annotate(resources={"GPU": 1}):
                xs = [delayed(operator.mul)(i, 2) for i in range(20)]
            assert sum(dask.compute(*xs)) == 2 * sum(range(20))
            state = client.run(lambda dask_worker: dict(dask_worker.state.available_resources))
            assert list(state.values()) == [{"GPU": 1}]

            import time

            slow = client.submit(time.sleep, 1, pure=False)
            time.sleep(0.2)
            slow.cancel()
            wait(client.submit(operator.add, 1, 1))
            assert client.submit(operator.add, 2, 3).result() == 5


def test_worker_kwarg(impl):
    """Worker(WorkerStateClass=...) as documented in the README."""
    import asyncio

    from distributed import Scheduler

    async def main():
        async with Scheduler(dashboard_address=":0") as s:
            async with Worker(s.address, WorkerStateClass=impl.WorkerState) as w:
                async with Client(s.address, asynchronous=True) as c:
                    assert await c.submit(operator.add, 20, 22) == 42
                    assert isinstance(w.state, impl.WorkerState)

    asyncio.run(main())


def test_readme_example_with_worker_processes():
    """The README's example as written: worker processes (Nanny) get the class too."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, WorkerStateClass=fastworker.WorkerState, dashboard_address=":0"
    ) as cluster:
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
            kinds = client.run(lambda dask_worker: type(dask_worker.state).__module__)
            assert set(kinds.values()) == {"fastworker.workerstate"}
            x = client.scatter(list(range(100)))
            total = client.submit(sum, x)
            assert total.result() == 4950

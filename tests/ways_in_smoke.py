"""A small graph on a cluster through each way into a worker; every worker must run
fastworker's compiled state machine. Run as a script by tests/test_dist.py (the wheel
in a fresh venv) and by make test-versions (each release's venv):

    python tests/ways_in_smoke.py [--no-compiler]
"""
import shutil
import sys

import fastworker
from distributed import Client, LocalCluster, Nanny

COMPILERS = ("cc", "gcc", "clang", "c++", "g++", "cython", "cythonize")


def inc(x):
    return x + 1


def run(name, client):
    futures = client.map(inc, range(20))
    total = client.submit(sum, futures).result()
    assert total == sum(range(1, 21)), total
    states = client.run(lambda dask_worker: type(dask_worker.state).__module__)
    assert set(states.values()) == {"fastworker.workerstate"}, (name, states)
    print(name, "ok", flush=True)


def main():
    if "--no-compiler" in sys.argv:
        assert all(shutil.which(c) is None for c in COMPILERS), "a compiler on PATH"
        try:
            import Cython  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("Cython is installed")
    assert fastworker.DISTRIBUTED_SUPPORTED
    common = dict(n_workers=1, threads_per_worker=2, dashboard_address=":0")
    with LocalCluster(processes=True, **common) as cluster, Client(cluster) as client:
        client.register_plugin(fastworker.FastWorkerPlugin())
        run("plugin", client)
    with LocalCluster(processes=True, worker_class=Nanny, preload=["fastworker"],
                      **common) as cluster, Client(cluster) as client:
        run("preload", client)
    with LocalCluster(processes=False, worker_class=fastworker.Worker,
                      **common) as cluster, Client(cluster) as client:
        run("Worker", client)
    with LocalCluster(processes=True, worker_class=fastworker.Nanny,
                      **common) as cluster, Client(cluster) as client:
        run("Nanny", client)
    with LocalCluster(processes=False, WorkerStateClass=fastworker.WorkerState,
                      **common) as cluster, Client(cluster) as client:
        run("WorkerStateClass", client)


if __name__ == "__main__":
    main()

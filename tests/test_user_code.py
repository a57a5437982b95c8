"""User code sees what it sees in stock's thread pool: with fastworker's default
configuration every task runs in the worker's executor threads, is never interrupted
and never run twice, whatever it does.

One graph per hazard of asynchronous exceptions and of running on the event loop,
on real clusters of worker processes (1 worker x 2 threads): distributed's Nanny
(``stock``), fastworker.Nanny with the default configuration (``fastworker``), and
fastworker.Nanny opted in to the event-loop executor (``opted-in``,
``fastworker.inline.automatic: true``). Stock and the default must agree exactly
(results, side effects, no hang, nothing of fastworker in the logs); the opted-in
cluster shows that each graph does hit its hazard there (that is what users accept
when they opt in, docs/ways-in.md), so a default that ran user code on the loop
would fail these tests.

Each hazard function first runs tiny (so that the opted-in worker admits its prefix
to the event loop), then once for longer than ``take-back-after``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import threading
import time

import numpy as np
import pytest

import dask
import distributed
from distributed import Client, LocalCluster, get_worker

import fastworker

#: Seconds a graph may take before the test calls it a hang.
HANG = 60
#: Longer than fastworker.inline.take-back-after (50 ms): the opted-in worker takes
#: such a task back.
LONG = 0.25
WARM_UP = 12

KINDS = {
    "stock": (distributed.Nanny, {}),
    "fastworker": (fastworker.Nanny, {}),
    "opted-in": (fastworker.Nanny, {"fastworker.inline.automatic": True}),
}


def start(kind: str) -> tuple[LocalCluster, Client]:
    worker_class, config = KINDS[kind]
    with dask.config.set(config):
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0",
            worker_class=worker_class,
        )
    client = Client(cluster)
    client.run(_record_logs_and_unraisables)
    return cluster, client


@pytest.fixture(scope="module")
def clusters():
    """One cluster of each kind for the module (each hazard uses its own prefixes)."""
    started = {}
    try:
        for kind in KINDS:
            started[kind] = start(kind)
        yield {kind: client for kind, (_, client) in started.items()}
    finally:
        for cluster, client in started.values():
            client.close()
            cluster.close()


# --- what the worker saw: log records at WARNING and above, unraisable exceptions ----

_SEEN: dict = {"records": [], "unraisable": []}


class _Recorder(logging.Handler):
    def emit(self, record):
        _SEEN["records"].append((record.name, record.levelname, record.getMessage()))


def _record_logs_and_unraisables():
    handler = _Recorder(level=logging.WARNING)
    logging.getLogger("distributed").addHandler(handler)
    previous = sys.unraisablehook

    def hook(unraisable):
        _SEEN["unraisable"].append(f"{unraisable.exc_type.__name__}: {unraisable.object!r}")
        previous(unraisable)

    sys.unraisablehook = hook


def _take_seen():
    seen = {k: list(v) for k, v in _SEEN.items()}
    for v in _SEEN.values():
        v.clear()
    return seen


def seen(client) -> dict:
    """What the worker logged at WARNING+ and the unraisable exceptions since last
    asked."""
    (result,) = client.run(_take_seen).values()
    return result


def report(client) -> dict | None:
    (status,) = client.run(fastworker.status).values()
    return status if status.get("fastworker") else None


def warm_up(client, func, *args):
    """Tiny runs of ``func``'s prefix, one after the other: the opted-in worker
    measures them in the pool and admits the prefix."""
    for i in range(WARM_UP):
        client.submit(func, *args, pure=False).result(HANG)


def run_hazard(clients: dict, func, make_args, expected, *, kinds=("stock", "fastworker")):
    """Warm ``func`` up and run it long on each kind: its results per kind, and what
    each worker logged (cleared first)."""
    results = {}
    for kind in kinds:
        client = clients[kind]
        warm_up(client, func, *make_args(client, tiny=True))
        seen(client)
        future = client.submit(func, *make_args(client, tiny=False), pure=False)
        try:
            results[kind] = future.result(HANG)
        except Exception as exc:  # noqa: BLE001 - compared below
            results[kind] = exc
        results[kind + ":seen"] = seen(client)
        results[kind + ":status"] = report(client)
        client.cancel(future)
    for kind in kinds:
        assert results[kind] == expected, (kind, results[kind])
        logged = results[kind + ":seen"]
        assert not logged["unraisable"], (kind, logged)
        ours = [r for r in logged["records"] if r[0] == "distributed.fastworker"
                or "fastworker" in r[2] or "taken back" in r[2]]
        assert not ours, (kind, ours)
    status = results["fastworker:status"]
    assert status["reruns"] == 0 and status["tasks_by_path"]["inline"] == 0, status
    assert status["tasks_by_path"]["pool"] >= WARM_UP + 1, status
    return results


def opted_in_hits(clients, func, make_args):
    """Run the same hazard on the opted-in worker: its result (or the first error of
    a tiny run once the prefix runs on the loop), its log and status."""
    client = clients["opted-in"]
    try:
        warm_up(client, func, *make_args(client, tiny=True))
        # On a loaded machine a tiny run may wait for a core and look like a task
        # that waits (wall time well above CPU time): more runs until one runs on
        # the loop, so that the long run below does too.
        for _ in range(4 * WARM_UP):
            if report(client)["inline_executor"]["inline_by_prefix"].get(func.__name__):
                break
            client.submit(func, *make_args(client, tiny=True), pure=False).result(HANG)
    except Exception as exc:  # noqa: BLE001 - the hazard, already on a tiny run
        return exc, seen(client), report(client)
    seen(client)
    future = client.submit(func, *make_args(client, tiny=False), pure=False)
    try:
        result = future.result(HANG)
    except Exception as exc:  # noqa: BLE001
        result = exc
    return result, seen(client), report(client)


# --- 1. a per-record loop with a bare except: ------------------------------------------


def count_records(n, delay):
    done = 0
    for _ in range(n):
        try:
            time.sleep(delay)  # one record
            done += 1
        except:  # noqa: E722 - the hazard: swallows whatever is raised into it
            pass
    return done


def test_bare_except_counts_every_record(clusters):
    def args(client, tiny):
        return (1, 0.0) if tiny else (50, LONG / 50)

    run_hazard(clusters, count_records, args, 50)
    result, _, status = opted_in_hits(clusters, count_records, args)
    # Opted in: the take-back was swallowed (a record lost, the task not re-run).
    assert status["inline_executor"]["inline_by_prefix"].get("count_records"), status
    assert result < 50, result


# --- 2. a task that updates its input in place -------------------------------------------


def bump(arr, steps, delay):
    for _ in range(steps):
        arr += 1  # in place: the input held by the worker changes
        time.sleep(delay)
    return int(arr.sum())


def test_in_place_update_runs_once(clusters):
    def args(client, tiny):
        arr = client.scatter(np.zeros(10, dtype="i8"), hash=False)
        return (arr, 1, 0.0) if tiny else (arr, 10, LONG / 10)

    run_hazard(clusters, bump, args, 100)
    result, _, status = opted_in_hits(clusters, bump, args)
    # Opted in: taken back half-way, re-run on the half-updated input.
    assert status["inline_executor"]["takeback_count"] >= 1, status
    assert result > 100, result


# --- 3. asyncio.run() inside a task ---------------------------------------------------------


def uses_asyncio(i, delay):
    async def work():
        await asyncio.sleep(delay)
        return i

    return asyncio.run(work())


def test_asyncio_run_inside_a_task(clusters):
    def args(client, tiny):
        return (7, 0.0) if tiny else (7, LONG)

    run_hazard(clusters, uses_asyncio, args, 7)
    result, _, _ = opted_in_hits(clusters, uses_asyncio, args)
    # Opted in: the task runs where an event loop is already running.
    assert isinstance(result, RuntimeError), result


# --- 4. a C library calling back into Python (sqlite3 user functions) ----------------------


def sql_task(n, delay):
    con = sqlite3.connect(":memory:")
    con.create_function("slow", 1, lambda x: (time.sleep(delay), x)[1])
    return con.execute(
        "select sum(slow(value)) from (select 1 as value"
        + " union all select 1" * (n - 1) + ")"
    ).fetchone()[0]


def test_sqlite_user_function(clusters):
    def args(client, tiny):
        return (1, 0.0) if tiny else (20, LONG / 20)

    run_hazard(clusters, sql_task, args, 20)
    result, _, _ = opted_in_hits(clusters, sql_task, args)
    # Opted in: sqlite turns the take-back into an error of the task.
    assert isinstance(result, sqlite3.OperationalError), result


# --- 5. finalizers that run during the task --------------------------------


class Node:
    def __del__(self):
        time.sleep(0.002)  # cleanup that takes a while


def churn(rounds):
    done = 0
    for _ in range(rounds):
        Node()  # finalized at once (its last reference is gone)
        done += 1
    return done


def test_finalizers_are_not_interrupted(clusters):
    def args(client, tiny):
        return (0,) if tiny else (int(LONG / 0.002),)

    run_hazard(clusters, churn, args, int(LONG / 0.002))
    result, logged, _ = opted_in_hits(clusters, churn, args)
    # Opted in: the take-back lands in a finalizer ("Exception ignored in __del__").
    assert logged["unraisable"], (result, logged)


# --- 6. side effects (a file appended to) happen once ----------------------------------------


def append_line(path, i, delay):
    with open(path, "a") as f:
        f.write(f"{i}\n")
    time.sleep(delay)
    return i


def test_side_effects_happen_once(clusters, tmp_path):
    def args(client, tiny):
        return (os.fspath(tmp_path / "tiny.txt"), 0, 0.0) if tiny else (
            os.fspath(tmp_path / f"long-{id(client)}.txt"), 1, LONG
        )

    results = run_hazard(clusters, append_line, args, 1)
    del results
    for kind in ("stock", "fastworker"):
        lines = (tmp_path / f"long-{id(clusters[kind])}.txt").read_text().split()
        assert lines == ["1"], (kind, lines)
    opted_in_hits(clusters, append_line, args)
    lines = (tmp_path / f"long-{id(clusters['opted-in'])}.txt").read_text().split()
    assert lines == ["1", "1"], lines  # opted in: run twice


# --- 7. where the task runs: thread, running loop, thread-local state -------------------------

def where(delay):
    time.sleep(delay)
    try:
        asyncio.get_running_loop()
        loop = True
    except RuntimeError:
        loop = False
    thread = threading.current_thread()
    return {
        "pool_thread": "Dask-Default-Threads" in thread.name,
        "main_thread": thread is threading.main_thread(),
        "running_loop": loop,
        "in_worker_threads": threading.get_ident() in get_worker().active_threads,
    }


def test_thread_identity_and_no_running_loop(clusters):
    expected = {
        "pool_thread": True, "main_thread": False, "running_loop": False,
        "in_worker_threads": True,
    }
    run_hazard(clusters, where, lambda client, tiny: (0.0 if tiny else LONG,), expected)
    client = clusters["opted-in"]
    warm_up(client, where, 0.0)
    got = client.submit(where, 0.0, pure=False).result(HANG)  # admitted to the loop
    assert got["running_loop"] and got["main_thread"], got


# --- 8. a lock taken without try/finally (last: the opted-in worker hangs) --------------------

LOCK = threading.Lock()


def locked_step(delay):
    LOCK.acquire()
    time.sleep(delay)  # an exception raised here leaves the lock held
    LOCK.release()
    return "done"


def test_lock_without_finally_never_hangs(clusters):
    def args(client, tiny):
        return (0.0,) if tiny else (LONG,)

    run_hazard(clusters, locked_step, args, "done")
    # Opted in: the take-back leaves the lock held, and the re-run waits for it
    # forever (here: past a short timeout, then the cluster is closed).
    client = clusters["opted-in"]
    warm_up(client, locked_step, 0.0)
    future = client.submit(locked_step, LONG, pure=False)
    with pytest.raises(TimeoutError):
        future.result(5)


# --- 9. what keeps stock's path, and callbacks into the cluster from tasks -----------------


class Counter:
    def __init__(self):
        self.n = 0

    def increment(self):
        self.n += 1
        return self.n


def inc(x):
    return x + 1


async def coroutine_inc(x):
    await asyncio.sleep(0)
    return x + 1


def uses_worker_client(x):
    from distributed import worker_client

    with worker_client() as client:
        return client.submit(inc, x, pure=False).result()


def secedes_and_rejoins(x):
    from distributed import get_client, rejoin, secede

    client = get_client()
    secede()
    value = client.submit(inc, x, pure=False).result()
    rejoin()
    return value


def _add_io_executor(dask_worker):
    import concurrent.futures

    dask_worker.executors["io"] = concurrent.futures.ThreadPoolExecutor(1)


def routes_graph(client) -> dict:
    client.run(_add_io_executor)
    with client.as_current():  # an actor handle talks through the current client
        counter = client.submit(Counter, actor=True).result(HANG)
        actor_calls = [counter.increment().result(HANG) for _ in range(3)]
    with dask.annotate(executor="io"):
        io = client.submit(inc, 1, pure=False)
    results = {
        "actor": actor_calls,
        "coroutine": client.submit(coroutine_inc, 1, pure=False).result(HANG),
        "other executor": io.result(HANG),
        "worker_client": client.submit(uses_worker_client, 1, pure=False).result(HANG),
        "secede/rejoin": client.gather(
            client.map(secedes_and_rejoins, range(4), pure=False), direct=False
        ),
        "pool": client.gather(client.map(inc, range(20), pure=False)),
    }
    return results


def test_stock_paths_and_callbacks_into_the_cluster(clusters):
    before = report(clusters["fastworker"])["tasks_by_path"]
    stock = routes_graph(clusters["stock"])
    fast = routes_graph(clusters["fastworker"])
    assert fast == stock == {
        "actor": [1, 2, 3], "coroutine": 2, "other executor": 2, "worker_client": 2,
        "secede/rejoin": [1, 2, 3, 4], "pool": list(range(1, 21)),
    }
    after = report(clusters["fastworker"])["tasks_by_path"]
    # The actor's constructor, the coroutine and the io-executor task keep stock's path.
    assert after["stock"] - before["stock"] == 3, (before, after)
    assert after["inline"] == before["inline"] == 0


class ExecuteOverridden(fastworker.Worker):
    """A Worker subclass with its own execute(): fastworker leaves every task to it."""

    calls = 0

    async def execute(self, key, *, stimulus_id):
        type(self).calls += 1
        return await super().execute(key, stimulus_id=stimulus_id)


def test_a_subclass_execute_keeps_stock_path():
    async def main():
        async with distributed.Scheduler(dashboard_address=":0") as s, ExecuteOverridden(
            s.address, nthreads=2
        ) as w, Client(s.address, asynchronous=True) as c:
            assert await c.gather(c.map(inc, range(10))) == list(range(1, 11))
            status = fastworker.status(w)
            assert status["tasks_by_path"] == {"pool": 0, "inline": 0, "stock": 10}
            assert ExecuteOverridden.calls == 10

    asyncio.run(asyncio.wait_for(main(), HANG))

"""The opt-in event-loop executor never hangs a worker that stock would not, and
reports inline tasks as the pool does: one graph per hazard, on a real cluster of
worker processes, with distributed's Nanny (stock) and with fastworker.Nanny opted in
to automatic selection (``fastworker.inline.automatic: true``).

Each hazard graph first runs many fast tasks of a prefix, so that fastworker
measures the prefix as tiny and runs it inline; then a task of the same prefix
waits for something only the worker's event loop brings about. On stock it runs in a
pool thread and the loop does its part; on fastworker it starts inline and must be
taken back. A worker that hangs makes its test fail by its own timeout (the workers
are processes: the test process and the rest of the suite go on).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time

import numpy as np
import pytest

import dask
import dask.array as da
import distributed
from distributed import Client, Event, LocalCluster, get_worker, secede, wait, worker_client
from distributed.utils import sync

import fastworker

WORKER_CLASSES = {"stock": distributed.Nanny, "fastworker": fastworker.Nanny}
#: Seconds a hazard graph may take before the test calls it a hang.
HANG = 60
TAKE_BACK_AFTER = 0.05  # fastworker.inline.take-back-after's default


@pytest.fixture(params=list(WORKER_CLASSES), ids=str)
def kind(request):
    return request.param


def cluster(kind, threads=2, **config):
    """A one-worker process cluster of ``kind``: "stock", "fastworker" (opted in to
    automatic selection) or "fastworker-default" (fastworker's default: every task
    in the pool)."""
    if kind == "fastworker":
        config.setdefault("fastworker.inline.automatic", True)
    with dask.config.set(config):
        return LocalCluster(
            n_workers=1,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",
            worker_class=WORKER_CLASSES[kind.removesuffix("-default")],
        )


def inline_report(client):
    """The in-process executor's report per worker (None on stock)."""
    return [s["inline_executor"] for s in client.run(fastworker.status).values()]


def warm_up(client, func, n=40, arg=0):
    """Run ``n`` fast tasks of ``func``'s prefix, one after the other, so that
    fastworker measures the prefix in the pool and then runs it inline."""
    for i in range(n):
        assert client.submit(func, arg, i, key=f"{func.__name__}-{i}").result(HANG) is not None


# --- 1. waiting in a sleep loop for the worker to spill ---------------------------


def make_payload(i):
    return np.full(200_000, i, dtype="i8")


def wait_spilled(name, i):
    """Return once ``name`` was spilled by the worker's memory monitor (its loop)."""
    data = get_worker().data
    deadline = time.monotonic() + HANG
    while name not in data.slow:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never spilled")
        time.sleep(0.005)
    return i


def test_sleep_loop_waiting_for_spill(kind):
    config = {
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": 0.0001,  # below any process's memory
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": False,
        "distributed.worker.memory.monitor-interval": "500ms",
    }
    with cluster(kind, **config) as c, Client(c) as client:
        early = client.submit(make_payload, 0, key="payload-0")
        wait(early)
        time.sleep(1.5)  # the memory monitor spills payload-0 meanwhile
        # Spilled long ago: these return at once, so the prefix measures tiny.
        warm_up(client, wait_spilled, arg="payload-0")
        # A fresh payload, and at once a task that waits for the loop to spill it.
        late = client.submit(make_payload, 1, key="payload-1")
        wait(late)
        waiter = client.submit(wait_spilled, "payload-1", 99, key="wait_spilled-1000")
        assert waiter.result(HANG) == 99
        if kind == "fastworker":
            (report,) = inline_report(client)
            assert report["inline_count"] > 0
            assert report["takeback_count"] == 1, report
            assert "wait_spilled" in report["demoted"]


# --- 2. sync() against the worker's own loop (as P2P's worker side does) -----------


def maybe_sync(x, i):
    if x:
        # The worker's loop runs the coroutine: from a pool thread this waits for
        # the loop; on the loop's own thread it would wait forever.
        return sync(get_worker().loop, asyncio.sleep, 0, result=i)
    return i


def test_sync_against_the_workers_own_loop(kind):
    with cluster(kind) as c, Client(c) as client:
        warm_up(client, maybe_sync)
        assert client.submit(maybe_sync, 1, 7, key="maybe_sync-1000").result(HANG) == 7
        assert client.submit(maybe_sync, 1, 8, key="maybe_sync-1001").result(HANG) == 8
        if kind == "fastworker":
            (report,) = inline_report(client)
            assert report["inline_count"] >= 1
            assert report["rerun_count"] == 1 and report["fallback_count"] == 1, report
            assert "event loop" in report["demoted"]["maybe_sync"]


def test_p2p_rechunk_same_result(kind):
    x = da.random.default_rng(42).random((400, 400), chunks=(10, 400))
    expected = x.compute(scheduler="sync").sum(axis=0)
    with cluster(kind) as c, Client(c) as client:
        with dask.config.set({"array.rechunk.method": "p2p"}):
            y = x.rechunk((400, 10))
        np.testing.assert_allclose(client.compute(y.sum(axis=0)).result(HANG), expected)


# --- 3. a lock held by a pool thread that waits on the loop ------------------------

LOCK = threading.Lock()


def take_lock(x, i):
    with LOCK:
        return i


def hold_lock_until(event_name):
    """In a pool thread: hold LOCK while waiting, through the worker's client (that
    is, through its event loop), for an Event the test sets."""
    with LOCK:
        Event(event_name).wait(HANG)
    return "held"


def lock_is_held():
    return LOCK.locked()


def test_lock_held_by_a_pool_thread_waiting_on_the_loop(kind):
    with cluster(kind) as c, Client(c) as client:
        warm_up(client, take_lock)
        holder = client.submit(hold_lock_until, "go", key="hold_lock_until-0")
        deadline = time.monotonic() + HANG
        while not any(client.run(lock_is_held).values()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        taker = client.submit(take_lock, 0, 42, key="take_lock-1000")
        time.sleep(0.5)  # it starts (inline on fastworker) and blocks on the lock
        Event("go", client=client).set()
        assert holder.result(HANG) == "held"
        assert taker.result(HANG) == 42
        if kind == "fastworker":
            (report,) = inline_report(client)
            assert report["takeback_count"] == 1, report
            assert "take_lock" in report["demoted"]


# --- 4. waiting for a task not yet started on the same worker ----------------------


def wait_for_key(x, i, name=None):
    """Return once ``name`` is in the worker's memory (None: at once)."""
    data = get_worker().data
    deadline = time.monotonic() + HANG
    while name is not None and name not in data:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never arrived")
        time.sleep(0.002)
    return i


def produce(i):
    return i


def test_waiting_for_a_task_not_yet_started(kind):
    with cluster(kind) as c, Client(c) as client:
        warm_up(client, wait_for_key)
        waiter = client.submit(wait_for_key, 0, 5, "produced", key="wait_for_key-1000")
        time.sleep(0.2)  # the waiter holds a thread (or, inline, the loop)
        producer = client.submit(produce, 1, key="produced")
        assert producer.result(HANG) == 1
        assert waiter.result(HANG) == 5
        if kind == "fastworker":
            (report,) = inline_report(client)
            assert report["takeback_count"] == 1, report


# --- 5. get_client / secede inline: re-run at most once per prefix -----------------


def client_inc(x, i):
    with worker_client() as client:  # get_client() and secede()
        return client.submit(lambda v: v + 1, i, pure=False).result()


def secede_inc(x, i):
    secede()
    return i + 1


class _Capture(logging.Handler):
    records: list = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage()))


def _capture_fastworker_log():
    logging.getLogger("distributed.fastworker").addHandler(_Capture())


def _captured():
    return _Capture.records


def test_get_client_and_secede_rerun_at_most_once(kind):
    with cluster(kind) as c, Client(c) as client:
        client.run(_capture_fastworker_log)
        # Stock workers know no "inline" executor: there these run in the pool.
        with dask.annotate(executor="inline" if kind == "fastworker" else "default"):
            futures = [
                client.compute(dask.delayed(f)(0, i, dask_key_name=f"{f.__name__}-{i}"))
                for f in (client_inc, secede_inc) for i in range(5)
            ]
        wait(futures, timeout=HANG)
        assert client.gather(futures) == [i + 1 for i in range(5)] * 2
        if kind == "fastworker":
            (report,) = inline_report(client)
            # Once per prefix: the other tasks of each prefix went to the pool.
            assert report["rerun_count"] == report["fallback_count"] == 2, report
            (records,) = client.run(_captured).values()
            reruns = [m for level, m in records if "runs again from the start in the thread pool" in m]
            assert len(reruns) == 2, records
            assert all(level == "WARNING" for level, m in records if m in reruns)


# --- 6. the loop's longest hold when tasks turn slow or blocking --------------------


def turns(x, i, how=None):
    if how == "slow":
        time.sleep(0.3)
    elif how == "blocked":
        threading.Event().wait(0.5)  # one long wait in C
    return i


async def _probe_loop(dask_worker, seconds):
    """Longest gap between wake-ups of a coroutine on the worker's loop."""
    longest, last = 0.0, time.perf_counter()
    end = last + seconds
    while last < end:
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        longest = max(longest, now - last - 0.005)
        last = now
    return longest


def test_longest_hold_when_tasks_turn_slow(kind):
    with cluster(kind) as c, Client(c) as client:
        warm_up(client, turns, n=100)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            probe = pool.submit(client.run, _probe_loop, seconds=3)
            time.sleep(0.2)
            futures = [
                client.submit(turns, 0, i, how, key=f"turns-{1000 + i}", pure=False)
                for i, how in enumerate(["slow", None, "blocked", None, "slow"] * 2)
            ]
            wait(futures, timeout=HANG)
            assert client.gather(futures) == list(range(10))
            (longest_gap,) = probe.result(HANG).values()
        report = inline_report(client)[0] if kind != "stock" else None
        # Held by nothing but short callbacks (and, on fastworker, at most one task
        # until it was taken back).
        assert longest_gap < 0.25, (longest_gap, report)
        if kind == "fastworker":
            # One task was taken back; its prefix no longer runs inline.
            assert report["takeback_count"] == 1, report
            assert report["longest_hold"] < 2 * TAKE_BACK_AFTER + 0.05, report


# --- 7. same observability as the pool ----------------------------------------------


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


def fails(x):
    raise ValueError(x)


async def _heartbeat(dask_worker):
    await dask_worker.heartbeat()


def execute_metrics(client):
    """The scheduler's ``execute`` metrics of every prefix except warm-up's:
    {(prefix, label, unit): value}, plus the root span's metric keys."""
    client.run(_heartbeat)

    def read(dask_scheduler):
        # ("execute", span id, prefix, label, unit): the span ids differ per run
        cumulative = {
            k[-3:]: v for k, v in dask_scheduler.cumulative_worker_metrics.items()
            if isinstance(k, tuple) and k[0] == "execute"
        }
        spans = dask_scheduler.extensions["spans"]
        span_keys = set()
        for span in spans.root_spans:
            span_keys |= {k[-3:] for k in span.cumulative_worker_metrics if k[0] == "execute"}
        return cumulative, span_keys

    return client.run_on_scheduler(read)


def metrics_of(kind, annotate_fails):
    """Run the metric graph on a fresh cluster of ``kind``: the scheduler's metric
    labels, the exact counts, the span metric keys, the task stream's thread rows,
    and the event-loop executor's report (None on stock)."""
    with cluster(kind, threads=1) as c, Client(c) as client:
        with distributed.get_task_stream(client) as stream:
            for i in range(8):  # pool runs, then inline runs on fastworker
                leaves = [dask.delayed(inc)(j, dask_key_name=f"inc-{i}-{j}") for j in range(30)]
                total = dask.delayed(add)(*leaves, dask_key_name=f"add-{i}")
                assert client.compute(total).result(HANG) == sum(range(1, 31))
            # Failing tasks (with tracebacks) take about a millisecond: inline only
            # when annotated.
            with dask.annotate(executor="inline" if annotate_fails else "default"):
                for i in range(3):
                    bad = client.compute(dask.delayed(fails)(i, dask_key_name=f"fails-{i}"))
                    with pytest.raises(ValueError):
                        bad.result(HANG)
        cumulative, span_keys = execute_metrics(client)
        threads = {(t["worker"], t.get("thread")) for t in stream.data}
        report = inline_report(client)[0] if kind != "stock" else None
    # Counts are exact (one memory-read per dependency read); times are not compared.
    counts = {k: v for k, v in cumulative.items() if k[2] == "count"}
    return set(cumulative), counts, span_keys, len(threads), report


def test_metrics_task_stream_and_active_keys_as_the_pool():
    stock = metrics_of("stock", annotate_fails=False)
    fast = metrics_of("fastworker", annotate_fails=True)
    # Each prefix ran in the pool first, then inline.
    assert set(fast[4]["inline_by_prefix"]) == {"inc", "add", "fails"}, fast[4]
    assert fast[0] == stock[0]
    assert fast[1] == stock[1]
    assert fast[2] == stock[2]
    assert fast[3] == stock[3] == 1


def test_metrics_task_stream_and_active_keys_default_pool_path():
    """The default configuration (every task through the fast pool path): the same
    metric labels, exact counts, span metric keys and task-stream rows as stock."""
    stock = metrics_of("stock", annotate_fails=False)
    fast = metrics_of("fastworker-default", annotate_fails=False)
    assert fast[4]["inline_count"] == 0 and not fast[4]["inline_by_prefix"], fast[4]
    assert fast[0] == stock[0]
    assert fast[1] == stock[1]
    assert fast[2] == stock[2]
    assert fast[3] == stock[3] == 1

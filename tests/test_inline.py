"""The opt-in event-loop executor (fastworker.inline): same results and semantics
as the thread pool for the tasks users send there, bounded batches, demotion of slow
prefixes, the off switch. Every test here opts in (``fastworker.inline.automatic:
true``); by default no task runs on the loop (tests/test_user_code.py)."""
from __future__ import annotations

import asyncio
import contextvars
import operator
import threading
import time
import traceback

import pytest

import dask
import distributed
from distributed import Client, Scheduler, get_client, get_worker, secede, rejoin

import fastworker

VAR = contextvars.ContextVar("fastworker_test_var", default="unset")


@pytest.fixture(autouse=True)
def opted_in():
    """This module tests the event-loop executor: opt in to automatic selection."""
    with dask.config.set({"fastworker.inline.automatic": True}):
        yield


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def tiny(x):
    return x + 1


def prime(worker, prefix="tiny"):
    """Make ``prefix`` known as tiny on ``worker`` (as if measured in the pool)."""
    admission = worker._fastworker_execution.admission
    admission.durations[prefix] = 1e-5
    admission.pool_runs[prefix] = [admission.admit_after, 0]


async def cluster(**worker_kwargs):
    s = await Scheduler(dashboard_address=":0")
    w = await fastworker.Worker(s.address, nthreads=2, validate=True, **worker_kwargs)
    c = await Client(s.address, asynchronous=True)
    return s, w, c


async def close(s, w, c):
    await c.close()
    await w.close()
    await s.close()


def test_installed_with_the_compiled_state_and_reported():
    async def main():
        s, w, c = await cluster()
        try:
            status = (await c.run(fastworker.status))[w.address]
            assert status["fastworker"] and status["inline"]
            assert "inline" in w.executors
        finally:
            await close(s, w, c)

    run(main())


def test_measured_prefix_goes_inline_with_identical_results():
    async def main():
        s, w, c = await cluster()
        try:
            inline = w._fastworker_inline
            # First ones run in the pool and are measured; the rest run inline.
            futures = c.map(tiny, range(300), key=[f"tiny-{i}" for i in range(300)])
            assert await c.gather(futures) == list(range(1, 301))
            assert inline.admission.durations["tiny"] < 1e-3
            assert inline.inline_count > 0
            before = inline.inline_count
            futures = c.map(tiny, range(300, 600), key=[f"tiny-{i}" for i in range(300, 600)])
            assert await c.gather(futures) == list(range(301, 601))
            assert inline.inline_count - before == 300  # all of them
            assert inline.batch_count > 0 and not inline.admission.demoted

            # Dependencies: a fan-in tree of tiny tasks, all inline.
            leaves = [dask.delayed(tiny, name=f"tiny-leaf-{i}")(i) for i in range(64)]
            total = dask.delayed(sum, name="tiny-sum")(leaves)
            prime(w, "tiny-leaf")
            prime(w, "tiny-sum")
            assert await c.compute(total) == sum(range(1, 65))
            # The state machine saw what a thread pool run shows: startstops, threads.
            future = c.submit(tiny, 1, key="tiny-12345")
            assert await future == 2
            ts = w.state.tasks["tiny-12345"]
            (compute,) = [s for s in ts.startstops if s["action"] == "compute"]
            assert compute["stop"] >= compute["start"] > 0
            # Attributed to one of the pool's threads: no extra task stream row.
            pool_threads = {t.ident for t in w.executors["default"]._threads}
            assert w.threads["tiny-12345"] in pool_threads
            w.state.validate_state()
        finally:
            await close(s, w, c)

    run(main())


def boom(x):
    raise ValueError(f"boom {x}")


def where():
    return get_worker().address, VAR.get()


def active_here():
    """What a task sees of itself on its worker (Worker.active_keys, thread state)."""
    from distributed.utils import thread_state

    worker = get_worker()
    key = thread_state.key
    return key in worker.active_keys, worker.active_threads.get(threading.get_ident()) == key


def set_var():
    VAR.set("leaked?")
    return VAR.get()


def test_annotation_errors_tracebacks_and_get_worker():
    async def main():
        s, w, c = await cluster()
        try:
            inline = w._fastworker_inline
            with dask.annotate(executor="inline"):
                bad = c.compute(dask.delayed(boom)(3))
                addr = c.compute(dask.delayed(where)())
                setter = c.compute(dask.delayed(set_var)())
            with pytest.raises(ValueError, match="boom 3"):
                await bad
            tb = "".join(traceback.format_tb(await bad.traceback()))
            assert "in boom" in tb
            assert await addr == (w.address, "unset")
            with dask.annotate(executor="inline"):
                active = c.compute(dask.delayed(active_here)())
            assert await active == (True, True)  # as in a pool thread
            assert not w.active_keys
            assert await setter == "leaked?"
            with dask.annotate(executor="inline"):
                after = c.compute(dask.delayed(where)(dask_key_name="where-after"))
            # Each task ran in its own copy of the context: nothing leaked.
            assert await after == (w.address, "unset")
            assert inline.inline_count == 5
            assert w.state.tasks[bad.key].state == "error"
        finally:
            await close(s, w, c)

    run(main())


def test_get_client_and_secede_fall_back_to_a_thread():
    def uses_client(x):
        client = get_client()
        return client.submit(operator.add, x, 1, pure=False).result()

    def secedes(x):
        secede()
        time.sleep(0.01)
        rejoin()
        return x * 2

    async def main():
        s, w, c = await cluster()
        try:
            inline = w._fastworker_inline
            with dask.annotate(executor="inline"):
                a = c.compute(dask.delayed(uses_client)(41))
                b = c.compute(dask.delayed(secedes)(21))
            assert await a == 42
            assert await b == 42
            assert inline.fallback_count == 2
            assert {"uses_client", "secedes"} <= inline.admission.demoted
            # Their later tasks go straight to the pool.
            with dask.annotate(executor="inline"):
                again = c.compute(dask.delayed(uses_client)(1, dask_key_name="uses_client-2"))
            assert await again == 2
            assert inline.fallback_count == 2
        finally:
            await close(s, w, c)

    run(main())


def test_resources_and_cancellation_inline():
    async def main():
        s, w, c = await cluster(resources={"R": 1})
        try:
            inline = w._fastworker_inline
            prime(w)

            def tiny_checks_resources(x):
                worker = get_worker()
                return sum(1 for ts in worker.state.executing if ts.resource_restrictions)

            prime(w, "tiny_checks_resources")
            futures = c.map(
                tiny_checks_resources, range(50), resources={"R": 1}, pure=False,
                key=[f"tiny_checks_resources-{i}" for i in range(50)],
            )
            assert set(await c.gather(futures)) == {1}
            assert w.state.available_resources == {"R": 1}

            futures = c.map(tiny, range(500), key=[f"tiny-{i}" for i in range(500)])
            await asyncio.sleep(0.01)
            await c.cancel(futures)
            deadline = time.monotonic() + 30
            while w.state.tasks:
                assert time.monotonic() < deadline, w.state.tasks
                await asyncio.sleep(0.01)
            w.state.validate_state()
            assert inline.inline_count > 0
            assert await c.submit(tiny, 1, key="tiny-after") == 2
        finally:
            await close(s, w, c)

    run(main())


def test_slow_task_in_tiny_prefix_is_demoted_and_batches_stay_bounded():
    def tiny_or_slow(x):
        if x < 0:
            time.sleep(0.03)  # past the batch time, within the take-back bound
        return x

    async def main():
        s, w, c = await cluster()
        inline = w._fastworker_inline
        batches = []  # how long each batch held the event loop
        drain = inline._drain

        def timed_drain():
            t0 = time.perf_counter()
            drain()
            batches.append(time.perf_counter() - t0)

        inline._drain = timed_drain
        try:
            prime(w, "tiny_or_slow")
            xs = list(range(200)) + [-1] * 6 + list(range(200, 400))
            futures = c.map(tiny_or_slow, xs, key=[f"tiny_or_slow-{i}" for i in range(len(xs))])
            assert await c.gather(futures) == xs
            assert "tiny_or_slow" in inline.admission.demoted
        finally:
            await close(s, w, c)
        # A batch stops once its 10 ms are spent, so it holds the loop for at most
        # that plus the one task it was running (slack for this shared machine);
        # only the batches that ran a slow task come near that, and after two
        # strikes the prefix's tasks (queued ones too) go to the pool.
        # (A run preempted past the take-back bound is taken back instead, which
        # demotes the prefix at once.)
        assert batches and max(batches) < 0.05 + 0.01 + 0.1, (
            max(batches), inline.report(), sorted(batches)[-5:]
        )
        # (one more for a garbage collection or a preempted core on a shared machine)
        assert 1 <= sum(b > 0.025 for b in batches) <= 3, sorted(batches)[-5:]

    run(main())


def test_off_switch():
    async def main():
        s, w, c = await cluster()
        try:
            assert getattr(w, "_fastworker_inline", None) is None
            assert (await c.run(fastworker.status))[w.address]["inline"] is False
            with dask.annotate(executor="inline"):
                x = c.compute(dask.delayed(lambda: get_worker().address)())
            assert await x == w.address  # ran in the default pool
            futures = c.map(tiny, range(100), key=[f"tiny-{i}" for i in range(100)])
            assert await c.gather(futures) == list(range(1, 101))
        finally:
            await close(s, w, c)

    with dask.config.set({"fastworker.inline.enabled": False}):
        run(main())


def test_plugin_installs_inline_on_a_stock_worker():
    async def main():
        async with Scheduler(dashboard_address=":0") as s, distributed.Worker(
            s.address, nthreads=1
        ) as w, Client(s.address, asynchronous=True) as c:
            await c.register_plugin(fastworker.FastWorkerPlugin())
            inline = w._fastworker_inline
            prime(w)
            futures = c.map(tiny, range(100), key=[f"tiny-{i}" for i in range(100)])
            assert await c.gather(futures) == list(range(1, 101))
            assert inline.inline_count == 100

    run(main())


def test_automatic_selection_off_by_default(opted_in):
    # Without opting in, only annotated tasks go to the loop. (Workers inside this
    # process run their loop in another thread: a task blocked there is taken back
    # by an asynchronous exception, not a signal.)
    from distributed import LocalCluster

    with dask.config.set({"fastworker.inline.automatic": False}), LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
        worker_class=fastworker.Worker,
    ) as cluster, Client(cluster) as client:
        futures = client.map(tiny, range(50), key=[f"tiny-{i}" for i in range(50)])
        assert client.gather(futures) == list(range(1, 51))
        with dask.annotate(executor="inline"):
            x = client.compute(dask.delayed(tiny)(1, dask_key_name="tiny-1000"))
        assert x.result(60) == 2
        (report,) = [s["inline_executor"] for s in client.run(fastworker.status).values()]
        assert report["automatic"] is False
        assert report["take_back"] == "async-exception"
        assert report["inline_count"] == 1  # only the annotated task


def test_metered_runner_reports_what_the_pools_runner_reports():
    """fastworker.runner runs a task with the same metrics (labels, units, order,
    counts; seconds net of what the task meters itself) and the same message as
    ``with context_meter.meter("executor"): distributed.worker._run_task(...)``."""
    import threading as _threading

    from distributed.metrics import DelayedMetricsLedger, context_meter
    from distributed.worker import _run_task

    from fastworker.runner import digest_executor, run_task_metered

    def task(data):
        context_meter.digest_metric("user-seconds", 0.25, "seconds")
        context_meter.digest_metric("user-count", 3, "count")
        if data["x"] is None:
            raise ValueError("bad")
        return data["x"] * 2

    def stock(*args):
        with context_meter.meter("executor"):
            return _run_task(*args)

    from fastworker.takeback import Guard

    guard = Guard(_threading.get_ident(), 0)

    def ours(*args):
        started = time.perf_counter()
        msg, metered = run_task_metered(*args, guard)
        digest_executor(started, metered)
        return msg

    def run(runner, x):
        ledger = DelayedMetricsLedger()
        state = {"worker": object()}
        with ledger.record(key="async-instruction"):
            msg = contextvars.copy_context().run(
                runner, task, {"x": x}, state, "k-1", {}, _threading.Lock(), 0.5
            )
        return msg, ledger.metrics

    for x in (21, None):
        t0 = time.time()
        (want, want_metrics), (got, got_metrics) = run(stock, x), run(ours, x)
        t1 = time.time()
        assert [(label, unit) for label, _, unit in got_metrics] == [
            (label, unit) for label, _, unit in want_metrics
        ]
        for (label, value, unit), (_, stock_value, _) in zip(got_metrics, want_metrics):
            if unit != "seconds" or label == "user-seconds":
                assert value == stock_value
            else:
                # net of the task's own 0.25 s, as stock's nested meters compute it
                assert 0 <= value < 0.01 and 0 <= stock_value < 0.01, (label, value)
        assert set(got) == set(want)
        assert got["op"] == want["op"] and got["thread"] == want["thread"]
        # The scheduler delay (0.5 s here) is added to both, as stock adds it.
        assert t0 + 0.5 <= got["start"] <= got["stop"] <= t1 + 0.5
        if x is None:
            assert type(got["actual_exception"]) is ValueError
            assert got["exception_text"] == want["exception_text"]
        else:
            assert (got["result"], got["nbytes"], got["type"]) == (
                want["result"], want["nbytes"], want["type"]
            )

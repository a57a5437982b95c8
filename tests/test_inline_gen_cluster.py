"""fastworker's execution paths under distributed's own test harness
(``gen_cluster``: its config reset, and its checks for leaked threads, instances and
comms after each test), with fastworker installed by the preload on every worker, as
when distributed's own suites run with fastworker: the default (every task in the
pool, through the fast pool path) and the opt-in event-loop executor."""
from __future__ import annotations

import dask
from distributed import wait
from distributed.utils_test import gen_cluster, inc, slowinc

import fastworker

PRELOAD = {"distributed.worker.preload": ["fastworker"]}
OPTED_IN = {**PRELOAD, "fastworker.inline.automatic": True}


@gen_cluster(client=True, config=PRELOAD)
async def test_default_every_task_in_the_pool_and_nothing_leaks(c, s, a, b):
    futures = c.map(inc, range(500))
    await wait(futures)
    assert await c.gather(futures) == list(range(1, 501))
    status = await c.run(fastworker.status)
    assert all(v["fastworker"] for v in status.values())
    assert sum(v["tasks_by_path"]["pool"] for v in status.values()) == 500
    assert all(v["tasks_by_path"]["inline"] == 0 for v in status.values())
    assert all(v["inline_executor"]["inline_count"] == 0 for v in status.values())


@gen_cluster(client=True, config=OPTED_IN)
async def test_tiny_tasks_inline_and_nothing_leaks(c, s, a, b):
    futures = c.map(inc, range(500))
    await wait(futures)
    assert await c.gather(futures) == list(range(1, 501))
    status = await c.run(fastworker.status)
    assert all(v["fastworker"] for v in status.values())
    assert sum(v["inline_executor"]["inline_count"] for v in status.values()) > 0


@gen_cluster(client=True, config=OPTED_IN)
async def test_slow_tasks_stay_in_the_pool(c, s, a, b):
    futures = c.map(slowinc, range(20), delay=0.01)
    await wait(futures)
    assert await c.gather(futures) == list(range(1, 21))
    status = await c.run(fastworker.status)
    assert sum(v["inline_executor"]["inline_count"] for v in status.values()) == 0


@gen_cluster(client=True)
async def test_stock_reference(c, s, a, b):
    futures = c.map(inc, range(500))
    await wait(futures)
    assert await c.gather(futures) == list(range(1, 501))


class BadSize:
    """A result whose ``__sizeof__`` raises (distributed's own
    test_worker.py::test_dataframe_attribute_error)."""

    def __init__(self, data):
        self.data = data

    def __sizeof__(self):
        raise TypeError("no size")


async def _bad_size_outcome(c, s):
    from distributed.utils_test import captured_logger

    with captured_logger("distributed.sizeof") as log:
        future = c.submit(BadSize, 123, key="bad-size")
        result = await future
    return result.data, s.tasks["bad-size"].nbytes, "Sizeof calculation for object of type" in log.getvalue()


_bad_size_stock: list = []


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_result_whose_sizeof_raises_stock(c, s, a):
    _bad_size_stock[:] = [await _bad_size_outcome(c, s)]
    assert _bad_size_stock[0][0] == 123


@gen_cluster(client=True, nthreads=[("", 1)], config=PRELOAD)
async def test_result_whose_sizeof_raises_in_the_pool_as_stock(c, s, a):
    """The task finishes as in stock (the size estimate falls back to distributed's
    default and says so on its logger) instead of the worker never reporting it."""
    outcome = await _bad_size_outcome(c, s)
    assert (await c.run(fastworker.status))[a.address]["tasks_by_path"]["pool"] == 1
    assert outcome == (_bad_size_stock or [(123, 1_000_000, True)])[0]


@gen_cluster(client=True, nthreads=[("", 1)], config=PRELOAD)
async def test_result_whose_sizeof_raises_inline_as_stock(c, s, a):
    with dask.annotate(executor="inline"):
        outcome = await _bad_size_outcome(c, s)
    assert (await c.run(fastworker.status))[a.address]["tasks_by_path"]["inline"] == 1
    assert outcome == (_bad_size_stock or [(123, 1_000_000, True)])[0]

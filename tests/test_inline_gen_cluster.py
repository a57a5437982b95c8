"""The in-process executor under distributed's own test harness (``gen_cluster``:
its config reset, and its checks for leaked threads, instances and comms after each
test), with fastworker installed by the preload on every worker, as when
distributed's own suites run with fastworker."""
from __future__ import annotations

from distributed import wait
from distributed.utils_test import gen_cluster, inc, slowinc

import fastworker

PRELOAD = {"distributed.worker.preload": ["fastworker"]}


@gen_cluster(client=True, config=PRELOAD)
async def test_tiny_tasks_inline_and_nothing_leaks(c, s, a, b):
    futures = c.map(inc, range(500))
    await wait(futures)
    assert await c.gather(futures) == list(range(1, 501))
    status = await c.run(fastworker.status)
    assert all(v["fastworker"] for v in status.values())
    assert sum(v["inline_executor"]["inline_count"] for v in status.values()) > 0


@gen_cluster(client=True, config=PRELOAD)
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

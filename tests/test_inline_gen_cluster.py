"""fastworker's execution paths under distributed's own test harness
(``gen_cluster``: its config reset, and its checks for leaked threads, instances and
comms after each test), with fastworker installed by the preload on every worker, as
when distributed's own suites run with fastworker: the default (every task in the
pool, through the fast pool path) and the opt-in event-loop executor."""
from __future__ import annotations

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

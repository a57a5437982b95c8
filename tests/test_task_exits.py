"""A task that raises SystemExit or KeyboardInterrupt ends its worker's process as
in stock: the exception leaves the worker's event loop (stock's log line first), the
process dies, and its Nanny starts a new worker; the task fails with KilledWorker.

Found by distributed's own ``test_log_tasks_during_restart`` (slow suite): with the
exception raised straight from the pool path's loop callback, the worker's stream
task closed the worker gracefully first, the Nanny closed with it and no worker
came back, where stock's Nanny restarts one."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading

import pytest

import dask
from distributed import Client, KilledWorker, Nanny, Scheduler, wait

import fastworker


def _exit():
    sys.exit(0)


def _interrupt():
    raise KeyboardInterrupt()


async def _run(nanny_class, func, inline=False):
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        async with Scheduler(dashboard_address=":0") as s, nanny_class(
            s.address, nthreads=1
        ) as nanny, Client(s.address, asynchronous=True) as c:
            await c.wait_for_workers(1)
            (before,) = s.workers
            kinds = await c.run(lambda dask_worker: fastworker.status(dask_worker)["fastworker"])
            with dask.annotate(executor="inline") if inline else contextlib.nullcontext():
                fut = c.submit(func, pure=False)
            await wait(fut)
            exc = await fut.exception()
            await c.wait_for_workers(1, timeout=60)
            (after,) = s.workers
            # the new worker runs tasks
            assert await c.submit(sum, [1, 2], pure=False) == 3
            return {
                "fastworker": list(kinds.values()),
                "exception": type(exc),
                "restarted": after != before,
                "nanny": str(nanny.status),
            }


@pytest.mark.parametrize("func", [_exit, _interrupt])
def test_task_ending_its_worker_process_restarts_it_as_stock(func):
    stock = asyncio.run(asyncio.wait_for(_run(Nanny, func), 120))
    fast = asyncio.run(asyncio.wait_for(_run(fastworker.Nanny, func), 120))
    assert stock["fastworker"] == [False] and fast["fastworker"] == [True]
    assert stock["exception"] is KilledWorker
    assert {k: v for k, v in fast.items() if k != "fastworker"} == {
        k: v for k, v in stock.items() if k != "fastworker"
    }
    assert fast["restarted"] and fast["nanny"] == "Status.running"


@pytest.mark.parametrize("func", [_exit, _interrupt])
def test_task_run_inline_ending_its_worker_process_restarts_it_as_stock(func):
    """The same from the opt-in event-loop executor (``executor="inline"``)."""
    stock = asyncio.run(asyncio.wait_for(_run(Nanny, func), 120))
    fast = asyncio.run(asyncio.wait_for(_run(fastworker.Nanny, func, inline=True), 120))
    assert {k: v for k, v in fast.items() if k != "fastworker"} == {
        k: v for k, v in stock.items() if k != "fastworker"
    }


_RELEASE = threading.Event()


def _blocked():
    return _RELEASE.wait(30)


async def _close_with_a_task_running(worker_class):
    _RELEASE.clear()
    async with Scheduler(dashboard_address=":0") as s, worker_class(
        s.address, nthreads=1
    ) as w, Client(s.address, asynchronous=True) as c:
        fut = c.submit(_blocked, key="blocked", pure=False)
        while "blocked" not in w.state.tasks or w.state.tasks["blocked"].state != "executing":
            await asyncio.sleep(0.01)
        # Worker.close waits for the pool's threads: let the task end meanwhile
        asyncio.get_running_loop().call_later(0.5, _RELEASE.set)
        try:
            await w.close()
        finally:
            _RELEASE.set()
        del fut


def test_close_logs_the_cancelled_task_as_stock(caplog):
    """A worker closed with a task running logs, on stock's logger
    (``distributed.worker.state_machine``), the line stock logs for its asyncio task."""
    from distributed import Worker

    lines = {}
    for name, cls in (("stock", Worker), ("fastworker", fastworker.Worker)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="distributed.worker.state_machine"):
            asyncio.run(asyncio.wait_for(_close_with_a_task_running(cls), 60))
        lines[name] = [
            (r.name, r.levelname, r.getMessage())
            for r in caplog.records
            if "ended with CancelledError" in r.getMessage()
        ]
    assert lines["stock"] and lines["fastworker"] == lines["stock"], lines

"""The ways into a worker: FastWorkerPlugin, preload, fastworker.Worker, and the guards.

Every way in must install the compiled state machine when allowed, and keep the
stock one, with one clear log line, when ``fastworker.enabled`` is False or the
distributed release is not supported (faked here by patching what fastworker reads
as the installed version).
"""
from __future__ import annotations

import asyncio
import logging
import operator
import os
import subprocess
import sys
import textwrap

import pytest

import dask
import distributed
from distributed import Client, LocalCluster, Scheduler
from distributed.worker_state_machine import (
    ComputeTaskEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
)
from distributed.worker_state_machine import WorkerState as StockWorkerState

import fastworker
import fastworker.worker as fw_worker
from fastworker.workerstate import WorkerState as CompiledWorkerState

LOGGER = "distributed.fastworker"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture
def fake_unsupported(monkeypatch):
    """What fastworker reads as the installed distributed release becomes 2099.1.0."""
    monkeypatch.setattr(fastworker.compat, "distributed_version", lambda: "2099.1.0")
    return "2099.1.0"


def refusals(caplog, level=logging.WARNING):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == level and "keeps distributed's stock" in r.getMessage()
    ]


# --- switching an idle state -----------------------------------------------------------


def test_every_stock_attribute_has_a_switch_rule():
    """A new attribute in a distributed release must be classified before it is copied wrong."""
    rules = (
        fw_worker._PASSED_TO_CONSTRUCTOR
        + fw_worker._COPIED
        + fw_worker._EMPTY_WHEN_IDLE
        + fw_worker._FRESH
    )
    assert len(rules) == len(set(rules))
    assert set(rules) == set(StockWorkerState.__slots__)


def used_stock_state():
    ws = StockWorkerState(
        nthreads=3,
        address="tcp://127.0.0.1:1",
        resources={"GPU": 2},
        validate=True,
        transfer_incoming_count_limit=7,
        transition_counter_max=10_000,
        transfer_incoming_bytes_limit=1e9,
        transfer_message_bytes_limit=1e8,
    )
    for i in range(3):
        ws.handle_stimulus(ComputeTaskEvent.dummy(f"x-{i}", stimulus_id=f"c{i}"))
        ws.handle_stimulus(ExecuteSuccessEvent.dummy(f"x-{i}", stimulus_id=f"e{i}"))
        ws.handle_stimulus(FreeKeysEvent(keys=[f"x-{i}"], stimulus_id=f"f{i}"))
    ws.busy_workers.add("tcp://127.0.0.1:2")
    ws.rng.random()
    return ws


def test_compiled_copy_of_an_idle_state_is_equivalent():
    old = used_stock_state()
    new = fw_worker.compiled_copy(old)
    assert type(new) is CompiledWorkerState
    for shared in ("data", "threads", "plugins"):
        assert getattr(new, shared) is getattr(old, shared)
    a, b = old._to_dict(), new._to_dict()
    # Per-prefix task-seconds start afresh (current counts are all zero when idle).
    assert a.pop("task_cumulative_elapsed") and b.pop("task_cumulative_elapsed") == {}
    assert a == b
    assert list(new.log) == list(old.log) and len(new.log) > 0
    assert list(new.stimulus_log) == list(old.stimulus_log)
    assert new.story("x-1") == old.story("x-1")
    assert new.rng.random() == old.rng.random()
    # The copy is independent and works on.
    new.busy_workers.clear()
    assert old.busy_workers
    instr = new.handle_stimulus(ComputeTaskEvent.dummy("y", stimulus_id="c9"))
    assert [type(i).__name__ for i in instr] == ["Execute"]
    assert new.transition_counter > old.transition_counter


def test_compiled_copy_refuses_a_busy_state():
    ws = StockWorkerState(nthreads=1, address="tcp://127.0.0.1:1")
    ws.handle_stimulus(ComputeTaskEvent.dummy("x", stimulus_id="c"))
    with pytest.raises(ValueError, match=r"not idle \(tasks, executing not empty: 1 tasks\)"):
        fw_worker.compiled_copy(ws)
    assert ws.tasks["x"].state == "executing"  # untouched


def test_select_state_class_guards(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert fw_worker.select_state_class() is CompiledWorkerState
    with dask.config.set({"fastworker.enabled": False}):
        assert fw_worker.select_state_class("w") is StockWorkerState
    assert refusals(caplog, logging.INFO) == [
        "fastworker: w keeps distributed's stock state machine: "
        "fastworker.enabled is False in dask's config"
    ]
    monkeypatch.setattr(fastworker.compat, "distributed_version", lambda: "2099.1.0")
    assert fw_worker.select_state_class("w") is StockWorkerState
    (warning,) = refusals(caplog)
    assert (
        "supports distributed 2024.11.0 to 2026.8.0 only, but distributed 2099.1.0 is installed"
        in warning
    )


def test_config_key_has_a_default_and_reads_the_environment():
    assert dask.config.get("fastworker.enabled") is True
    code = "import fastworker, dask; print(dask.config.get('fastworker.enabled'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**_env(), "DASK_FASTWORKER__ENABLED": "False"},
    )
    assert out.stdout.strip() == "False"


def _env():
    return dict(os.environ)


# --- in-process clusters: plugin, worker class, preload hook -------------------------------


async def _status(client):
    return await client.run(fastworker.status)


def test_plugin_switches_idle_workers_and_later_ones_refuses_busy(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        async with Scheduler(dashboard_address=":0") as s, distributed.Worker(
            s.address, nthreads=1
        ) as idle, distributed.Worker(s.address, nthreads=1) as busy, Client(
            s.address, asynchronous=True
        ) as c:
            ev = distributed.Event()
            await ev.clear()  # created on the scheduler
            running = c.submit(lambda: ev.wait(30) and 1, workers=[busy.address], pure=False)
            while not busy.state.executing:
                await asyncio.sleep(0.01)

            await c.register_plugin(fastworker.FastWorkerPlugin())
            status = await _status(c)
            assert status[idle.address]["fastworker"] is True
            assert status[idle.address]["reason"] is None
            assert type(idle.state) is CompiledWorkerState
            assert status[busy.address]["fastworker"] is False
            assert "already holds 1 tasks" in status[busy.address]["reason"]
            assert type(busy.state) is StockWorkerState
            (warning,) = refusals(caplog)
            assert busy.address in warning and "FastWorkerPlugin" in warning

            # Nothing lost on the busy worker, new work runs everywhere.
            await ev.set()
            assert await running == 1
            futures = c.map(operator.mul, range(200), range(200))
            assert await c.gather(futures) == [i * i for i in range(200)]

            # A worker that joins later starts compiled.
            async with distributed.Worker(s.address, nthreads=1) as late:
                assert type(late.state) is CompiledWorkerState
                assert await c.submit(operator.add, 1, 2, workers=[late.address]) == 3
                # The scheduler sees which workers run fastworker (heartbeat metric).
                for w in (idle, busy, late):
                    await w.heartbeat()
                metrics = {
                    addr: ws.metrics.get("fastworker") for addr, ws in s.workers.items()
                }
                assert metrics == {idle.address: 1, busy.address: 0, late.address: 1}

    run(main())


def test_plugin_keeps_stock_when_disabled_by_config(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        async with Scheduler(dashboard_address=":0") as s, distributed.Worker(
            s.address, nthreads=1
        ) as w, Client(s.address, asynchronous=True) as c:
            await c.register_plugin(fastworker.FastWorkerPlugin())
            assert type(w.state) is StockWorkerState
            status = (await _status(c))[w.address]
            assert status["reason"] == "fastworker.enabled is False in dask's config"
            assert await c.submit(operator.add, 1, 2) == 3

    with dask.config.set({"fastworker.enabled": False}):
        run(main())
    assert len(refusals(caplog, logging.INFO)) == 1
    assert not refusals(caplog)  # switching off on purpose is not a warning


@pytest.mark.parametrize("way", ["plugin", "worker-class", "preload-hook"])
def test_unsupported_version_keeps_stock_with_one_warning(way, fake_unsupported, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        async with Scheduler(dashboard_address=":0") as s:
            worker_class = fastworker.Worker if way == "worker-class" else distributed.Worker
            async with worker_class(s.address, nthreads=1) as w, Client(
                s.address, asynchronous=True
            ) as c:
                if way == "plugin":
                    await c.register_plugin(fastworker.FastWorkerPlugin())
                elif way == "preload-hook":
                    fastworker.dask_setup(w)
                assert type(w.state) is StockWorkerState
                assert await c.submit(operator.add, 20, 22) == 42
                status = (await _status(c))[w.address]
                assert status["fastworker"] is False
                assert "2099.1.0 is installed" in status["reason"]

    run(main())
    (warning,) = refusals(caplog)
    assert "distributed 2099.1.0 is installed" in warning


def test_worker_class_in_process_and_explicit_state_class_wins():
    async def main():
        async with Scheduler(dashboard_address=":0") as s:
            async with fastworker.Worker(s.address, nthreads=2) as w, Client(
                s.address, asynchronous=True
            ) as c:
                assert type(w.state) is CompiledWorkerState
                assert w.state.nthreads == 2 and w.state.data is w.data
                assert await c.submit(sum, [1, 2, 3]) == 6
                assert (await _status(c))[w.address]["fastworker"] is True
            async with fastworker.Worker(
                s.address, WorkerStateClass=StockWorkerState
            ) as w:
                assert type(w.state) is StockWorkerState

    run(main())


def test_preload_hook_on_a_scheduler_adds_the_scheduler_plugin(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=LOGGER)
    # The rule is logged once per process: forget earlier tests' scheduler streams.
    monkeypatch.setattr(fastworker.dispatch, "_logged_rule", set())

    async def main():
        async with Scheduler(dashboard_address=":0", preload=["fastworker"]) as s:
            assert s.status.name == "running"
            assert isinstance(s.plugins["fastworker-dispatch"], fastworker.SchedulerPlugin)
            assert fastworker.status(dask_scheduler=s)["scheduler_plugin"] is True

    run(main())
    assert any("low-latency dispatch on the scheduler streams" in m for m in caplog.messages)


def test_preload_hook_leaves_other_servers_alone(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        async with Scheduler(dashboard_address=":0") as s:
            async with distributed.Nanny(s.address, nthreads=1) as n:
                fastworker.dask_setup(n)

    run(main())
    assert any("acts on workers and schedulers only; Nanny left unchanged" in m for m in caplog.messages)


def test_import_next_to_an_unsupported_release_exports_stock_classes():
    code = textwrap.dedent(
        """
        import importlib.metadata as md
        real = md.version
        md.version = lambda name: "2099.1.0" if name == "distributed" else real(name)
        import warnings
        warnings.simplefilter("ignore")
        import fastworker, distributed.worker_state_machine as wsm
        import fastworker.workerstate
        print(fastworker.WorkerState is wsm.WorkerState, fastworker.TaskState is wsm.TaskState)
        print(fastworker.workerstate.WorkerState.__module__)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["True True", "fastworker.workerstate"]


# --- LocalCluster(worker_class=...) ---------------------------------------------------------


def test_local_cluster_worker_class_runs_workers_in_this_process():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, worker_class=fastworker.Worker, dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        assert not cluster.processes
        status = client.run(fastworker.status)
        assert [s["state_class"] for s in status.values()] == [
            "fastworker.workerstate.WorkerState"
        ] * 2
        assert set(client.run(os.getpid).values()) == {os.getpid()}
        x = client.scatter(list(range(100)), broadcast=False)
        assert client.submit(sum, x).result() == 4950


def test_local_cluster_nanny_runs_worker_processes():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, worker_class=fastworker.Nanny, dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        assert cluster.processes
        status = client.run(fastworker.status)
        assert [s["state_class"] for s in status.values()] == [
            "fastworker.workerstate.WorkerState"
        ] * 2
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        x = client.scatter(list(range(100)), broadcast=False)
        assert client.submit(sum, x).result() == 4950
        # A restarted worker process comes back compiled.
        client.restart()
        status = client.run(fastworker.status)
        assert [s["fastworker"] for s in status.values()] == [True, True]

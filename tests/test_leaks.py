"""Tasks that went through their whole lifecycle leave nothing behind.

CI runs a bounded number of tasks; ``FASTWORKER_LEAK_TASKS=1000000`` runs the long
check (about a minute per implementation on this machine).
"""
from __future__ import annotations

import gc
import os
import tracemalloc

import dask
from dask.utils import key_split
from distributed.worker_state_machine import (
    ComputeTaskEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDepSuccessEvent,
    GatherDep,
)

TASKS = int(os.environ.get("FASTWORKER_LEAK_TASKS", 10_000))
BATCH = 1_000


def lifecycle(ws, start: int, n: int) -> None:
    """n tasks, each depending on one remote key: fetch, compute, release, forget."""
    for i in range(start, start + n):
        key, dep = f"x-{i:09d}", f"dep-{i:09d}"
        instructions = ws.handle_stimulus(
            ComputeTaskEvent.dummy(
                key, who_has={dep: [f"127.0.0.{2 + i % 5}:1"]}, stimulus_id=f"c{i}"
            )
        )
        for inst in instructions:
            if isinstance(inst, GatherDep):
                ws.handle_stimulus(
                    GatherDepSuccessEvent(
                        worker=inst.worker, data={k: 1 for k in inst.to_gather},
                        total_nbytes=inst.total_nbytes, stimulus_id=f"g{i}",
                    )
                )
        ws.handle_stimulus(ExecuteSuccessEvent.dummy(key, i, stimulus_id=f"e{i}"))
        ws.handle_stimulus(FreeKeysEvent(keys=[key, dep], stimulus_id=f"f{i}"))
    assert not ws.tasks and not ws.data


def test_lifecycle_leaves_memory_at_baseline(impl):
    gc.collect()
    live_before = len(impl.TaskState._instances)
    # Logs off: they are bounded (maxlen) but their entries vary in size.
    with dask.config.set({"distributed.admin.low-level-log-length": 0}):
        ws = impl.WorkerState(address="127.0.0.1:1", nthreads=1, validate=False)
    lifecycle(ws, 0, 2 * BATCH)  # warm up: logs fill to their maxlen, caches fill
    # dask's key_split keeps an LRU cache of up to 100,000 keys: not ours, emptied
    key_split.cache_clear()
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for start in range(2 * BATCH, 2 * BATCH + TASKS, BATCH):
            lifecycle(ws, start, BATCH)
        key_split.cache_clear()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    # A leak of even 10 bytes per task would show as TASKS * 10.
    assert grown < 50_000, f"{grown:,} bytes kept after {TASKS:,} tasks"
    assert len(impl.TaskState._instances) == live_before

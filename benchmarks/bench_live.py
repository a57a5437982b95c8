"""The state machine inside a live worker against the same stimuli replayed in isolation.

Why does a state machine cost more per task inside a live worker than in the
isolated lifecycle benchmarks? This runs one workload on a real cluster (worker
processes), records every stimulus that reaches each worker's state machine and
the CPU time of each ``handle_stimulus`` call (event-loop thread CPU time, as
bench_e2e's probe), and how much of that time the garbage collector ran (through
``gc.callbacks``). Then, in the same worker process, right after the run, it
replays the recorded stimuli, one call per recorded call, into a fresh state
machine of the same class:

- **replay**: back to back, as the isolated benchmarks drive it;
- **replay, cold caches**: the same, with 8 MB copied between two calls (more
  than this machine's caches hold), the worst case of what the rest of a
  worker's loop does to the caches between two stimuli;
- **replay, no GC**: back to back with the garbage collector off;
- **replay, worker's data**: back to back, storing values into the worker's own
  ``data`` (a SpillBuffer; the isolated benchmarks use a plain dict).

So "live / replay" is the whole live excess for exactly the live workload; GC and
cold caches are two candidate causes measured separately.

    .venv/bin/python benchmarks/bench_live.py [--tasks 5000] [--workload map]
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import time
from collections import defaultdict
from time import thread_time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import distributed  # noqa: E402
from distributed import Client, LocalCluster, wait  # noqa: E402

import fastworker  # noqa: E402

IMPLS = {"stock": distributed.Nanny, "fastworker": fastworker.Nanny}
#: replay modes run in the workers (--no-cold drops "cold"); they read this at run time
MODES = {"hot", "cold", "nogc"}


class _Recorder:
    """Shadows Worker.handle_stimulus; times and records the state machine's calls."""

    def __init__(self, worker):
        self.worker = worker
        self.inner = worker.handle_stimulus
        self.calls: list[tuple] = []  # (stims, cpu seconds, gc seconds)
        self.gc_seconds = 0.0
        self.gc_by_generation = [0.0, 0.0, 0.0]  # seconds inside our calls, per generation
        self.gc_count = [0, 0, 0]  # collections inside our calls, per generation
        self._gc_start = None
        self.inside = False
        self.recording = False
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase, info):
        if not self.inside:
            return
        if phase == "start":
            self._gc_start = thread_time()
        elif self._gc_start is not None:
            spent = thread_time() - self._gc_start
            self.gc_seconds += spent
            gen = info.get("generation", 0)
            self.gc_by_generation[gen] += spent
            self.gc_count[gen] += 1
            self._gc_start = None

    def handle_stimulus(self, *stims):
        if not self.recording or self.inside:
            return self.inner(*stims)
        worker = self.worker
        state = worker.state
        recorder = self

        class Timed:
            # stands in for worker.state during the Worker's call, as bench_e2e's probe
            def handle_stimulus(self, *s):
                recorder.inside = True
                gc0 = recorder.gc_seconds
                start = thread_time()
                try:
                    return state.handle_stimulus(*s)
                finally:
                    cpu = thread_time() - start
                    recorder.inside = False
                    recorder.calls.append((s, cpu, recorder.gc_seconds - gc0))

            def __getattr__(self, name):
                return getattr(state, name)

            def __setattr__(self, name, value):
                setattr(state, name, value)

        object.__setattr__(worker, "state", Timed())
        try:
            return self.inner(*stims)
        finally:
            object.__setattr__(worker, "state", state)


def _install(dask_worker):
    rec = _Recorder(dask_worker)
    dask_worker._live_recorder = rec
    dask_worker.handle_stimulus = rec.handle_stimulus
    return type(dask_worker.state).__name__


def _start(dask_worker):
    rec = dask_worker._live_recorder
    rec.calls.clear()
    rec.gc_seconds = 0.0
    rec.gc_by_generation = [0.0, 0.0, 0.0]
    rec.gc_count = [0, 0, 0]
    rec.recording = True


def _replay(calls, state_cls, address, nthreads, mode, data=None):
    ws = state_cls(address=address, nthreads=nthreads, validate=False, data=data)
    junk = bytearray(8 << 20) if mode == "cold" else None
    source = bytes(8 << 20) if mode == "cold" else None
    if mode == "nogc":
        gc.disable()
    total = 0.0
    try:
        for stims, _, _ in calls:
            if junk is not None:
                junk[:] = source  # 16 MB of memory traffic, more than the caches hold
            start = thread_time()
            ws.handle_stimulus(*stims)
            total += thread_time() - start
    finally:
        gc.enable()
    return total


def _stop_and_replay(dask_worker):
    rec = dask_worker._live_recorder
    rec.recording = False
    calls = list(rec.calls)
    executed = sum(
        1 for stims, _, _ in calls for s in stims if type(s).__name__ == "ExecuteSuccessEvent"
    )
    state = dask_worker.state
    live = sum(c for _, c, _ in calls)
    by_event = defaultdict(lambda: [0, 0.0])
    for stims, cpu, _ in calls:
        name = type(stims[0]).__name__ if len(stims) == 1 else "several"
        by_event[name][0] += 1
        by_event[name][1] += cpu
    out = {
        "class": type(state).__name__,
        "calls": len(calls),
        "executed": executed,
        "live_s": live,
        "live_gc_s": rec.gc_seconds,
        "live_gc_by_generation_s": list(rec.gc_by_generation),
        "live_gc_count": list(rec.gc_count),
        "gc_objects": len(gc.get_objects()),
        "by_event": {k: tuple(v) for k, v in by_event.items()},
    }
    for mode in ("hot", "cold", "nogc"):
        if mode not in MODES:
            continue
        out[f"replay_{mode}_s"] = min(
            _replay(calls, type(state), state.address, state.nthreads, mode) for _ in range(3)
        )
    # the worker's own data (a SpillBuffer), idle now: the replay frees what it stores
    assert not state.data
    out["replay_data_s"] = min(
        _replay(calls, type(state), state.address, state.nthreads, "hot", state.data)
        for _ in range(3)
    )
    rec.calls.clear()
    return out


def _held(dask_worker):
    return len(dask_worker.state.data)


def _noop(x):
    return x


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impl", action="append", choices=list(IMPLS))
    parser.add_argument("--no-cold", action="store_true",
                        help="skip the cold-cache replay (8 MB copied per call: slow on a "
                        "loaded machine)")
    args = parser.parse_args(argv)
    if args.no_cold:
        MODES.discard("cold")
    for impl, nanny in IMPLS.items():
        if args.impl and impl not in args.impl:
            continue
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, worker_class=nanny,
                          dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            print(impl, client.run(_install))
            wait(client.map(int, range(200), key=[f"warm-{i}" for i in range(200)]))
            results = []
            for r in range(args.repeats):
                client.run(_start)
                futs = client.map(int, range(args.tasks), key=[f"t{r}-{i}" for i in range(args.tasks)])
                wait(futs)
                del futs
                time.sleep(0.5)  # the frees arrive
                deadline = time.monotonic() + 30
                while any(client.run(_held).values()) and time.monotonic() < deadline:
                    time.sleep(0.2)
                (res,) = client.run(_stop_and_replay).values()
                results.append(res)
            for key in ("live_s", "live_gc_s", "replay_hot_s", "replay_data_s", "replay_cold_s", "replay_nogc_s"):
                if key not in results[0]:
                    continue
                per = [r[key] / r["executed"] * 1e6 for r in results]
                print(f"  {key:14s} {statistics.median(per):8.1f} us/task  {[round(p, 1) for p in per]}")
            r = results[-1]
            print(f"  calls {r['calls']}, executed {r['executed']}, gc objects {r['gc_objects']:,}")
            print("  collections inside the state machine, generation 0/1/2: "
                  f"{r['live_gc_count']}, us/task "
                  f"{[round(s / r['executed'] * 1e6, 1) for s in r['live_gc_by_generation_s']]}")
            for name, (n, cpu) in sorted(r["by_event"].items(), key=lambda kv: -kv[1][1]):
                print(f"    {name:28s} {n:6d} calls {cpu / n * 1e6:8.1f} us/call")


if __name__ == "__main__":
    main()

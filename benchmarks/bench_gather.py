"""The gather path through a WorkerState, stock against fastworker.

Three shapes of the fetch machinery, each on a fresh ``WorkerState(validate=False)``
driven with distributed's own events (only the time inside ``handle_stimulus`` is
counted, garbage collector on):

- **gather**: one ``AcquireReplicasEvent`` for N keys, each held by 1-3 of P peers,
  on a running worker: every key goes to fetch, into the ``data_needed`` queue of
  each holder, and ``_ensure_communicating`` schedules one ``GatherDep`` per peer
  (µs per task);
- **fill while paused**: the same event on a paused worker: the keys only queue up
  in ``data_needed`` (µs per task);
- **unpause, nothing to do**: every peer already has a transfer in flight and N
  more keys wait in ``data_needed``; then pause and unpause alternate, and no
  stimulus changes anything (µs per stimulus). Stock scans every peer on each
  unpause to find none it may gather from.

Each timed run repeats the measured part on several fresh states built beforehand,
so that a run of a small N is not a single clock reading.
"""
from __future__ import annotations

import random
import time

import distributed.worker_state_machine as stock_wsm
from distributed.worker_state_machine import (
    AcquireReplicasEvent,
    GatherDep,
    PauseEvent,
    UnpauseEvent,
)

import fastworker
from common import Row, measure

IMPLEMENTATIONS = {"stock": stock_wsm.WorkerState, "fastworker": fastworker.WorkerState}
#: (tasks, peers) of the gather and fill shapes; peers of the unpause shape
CASES = ((100, 5), (100, 250), (1_000, 50), (5_000, 5), (5_000, 50), (5_000, 250))
UNPAUSE_PEERS = (5, 50, 250)
UNPAUSE_WAITING = 5_000
#: at least this many timed tasks (or stimuli) per run
TARGET = 20_000


def peers(n: int) -> list[str]:
    return [f"tcp://10.1.{i // 250}.{i % 250}:8786" for i in range(n)]


def acquire(keys: list[str], addresses: list[str], seed: int, sid: str) -> AcquireReplicasEvent:
    """One AcquireReplicasEvent: each key held by 1-3 of the peers."""
    rng = random.Random(seed)
    who_has = {
        k: rng.sample(addresses, min(len(addresses), rng.randint(1, 3))) for k in keys
    }
    return AcquireReplicasEvent(who_has=who_has, nbytes={k: 16 for k in keys}, stimulus_id=sid)


def _state(cls):
    return cls(address="tcp://127.0.0.1:1", nthreads=2, validate=False)


def gather(cls, ntasks: int, npeers: int, paused: bool = False):
    addresses = peers(npeers)
    ev = acquire([f"rep-{i}" for i in range(ntasks)], addresses, seed=ntasks + npeers, sid="acquire")
    reps = max(1, TARGET // ntasks)

    def run():
        states = [_state(cls) for _ in range(reps)]
        if paused:
            for ws in states:
                ws.handle_stimulus(PauseEvent(stimulus_id="pause"))
        elapsed = 0.0
        for ws in states:
            start = time.perf_counter()
            instructions = ws.handle_stimulus(ev)
            elapsed += time.perf_counter() - start
            # running: every key leaves in some GatherDep; paused: none does
            gathered = sum(len(i.to_gather) for i in instructions if isinstance(i, GatherDep))
            assert gathered == (0 if paused else ntasks), gathered
        return elapsed  # seconds for reps x ntasks tasks

    return run, reps * ntasks


def unpause_nothing(cls, npeers: int, waiting: int = UNPAUSE_WAITING):
    """Every peer in flight, ``waiting`` keys in data_needed; pause/unpause change nothing."""
    addresses = peers(npeers)
    first = AcquireReplicasEvent(
        who_has={f"first-{i}": [a] for i, a in enumerate(addresses)},
        nbytes={f"first-{i}": 16 for i in range(npeers)}, stimulus_id="first",
    )
    more = acquire([f"wait-{i}" for i in range(waiting)], addresses, seed=npeers, sid="more")
    nstimuli = TARGET // 2 * 2
    stimuli = [
        PauseEvent(stimulus_id=f"pause-{i}") if i % 2 == 0 else UnpauseEvent(stimulus_id=f"unpause-{i}")
        for i in range(nstimuli)
    ]

    def run():
        ws = _state(cls)
        instructions = ws.handle_stimulus(first)
        assert sum(isinstance(i, GatherDep) for i in instructions) == npeers
        assert not any(isinstance(i, GatherDep) for i in ws.handle_stimulus(more))
        assert len(ws.in_flight_workers) == npeers
        elapsed = 0.0
        for stim in stimuli:
            start = time.perf_counter()
            instructions = ws.handle_stimulus(stim)
            elapsed += time.perf_counter() - start
            assert not instructions
        return elapsed

    return run, nstimuli


def run(repeats=5, progress=True, only=None) -> list[Row]:
    shapes = []
    for ntasks, npeers in CASES:
        shapes.append((f"gather ({npeers} peers)", ntasks, lambda c, t=ntasks, p=npeers: gather(c, t, p)))
    for ntasks, npeers in CASES:
        shapes.append((f"fill while paused ({npeers} peers)", ntasks,
                       lambda c, t=ntasks, p=npeers: gather(c, t, p, paused=True)))
    for npeers in UNPAUSE_PEERS:
        shapes.append((f"unpause, nothing to do ({npeers} peers, {UNPAUSE_WAITING:,} waiting)",
                       None, lambda c, p=npeers: unpause_nothing(c, p)))
    rows = []
    for name, ntasks, build in shapes:
        if only and only not in name:
            continue
        setups, counts = {}, {}
        for impl, cls in IMPLEMENTATIONS.items():
            setups[impl], counts[impl] = build(cls)
        # the row's n: tasks of one event (gather, fill) or stimuli of one run (unpause)
        n_shown = ntasks if ntasks is not None else counts["stock"]
        row = measure(
            "gather", name, counts["stock"],
            stock=lambda: setups["stock"], fast=lambda: setups["fastworker"],
            repeats=repeats, unit="us", progress=progress, gc_enabled=True,
        )
        row.n = n_shown
        rows.append(row)
    return rows

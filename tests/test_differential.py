"""Differential tests: the same plausible stimulus streams into stock and another
WorkerState, compared after every stimulus.

A stream is built on stock distributed's ``WorkerState`` by the hypothesis-driven
generator of ``stimuli.py`` (each stimulus chosen from what stock last asked for),
then replayed on the implementation under test. After every stimulus both must
have returned the same instructions, notified plugins of the same transitions,
written the same log and stimulus log (timestamps aside) and ``story()``, hold every
task with the same fields in the same order, and agree on counters, queues, heaps,
``data``, resources, the tie-breaking ``rng`` and the outcome of
``validate_state()`` (both run with ``validate=True``). A failure names the first
divergent step and field, and prints the stream prefix (configuration and events,
as Python) that reproduces it; hypothesis first shrinks the stream.

Implementations under test: a trivial Python subclass of stock's WorkerState (the
harness must find nothing there) and fastworker's compiled WorkerState.
``test_broken_*`` check that
deliberately broken subclasses are caught; ``test_generator_coverage`` that the
generator reaches every task state and every event class stock handles.

Budget (defaults: under a minute on two cores)::

    FASTWORKER_DIFF_EXAMPLES=150          hypothesis examples per implementation
    FASTWORKER_DIFF_STEPS=60              maximum stimuli per stream
    FASTWORKER_DIFF_MINIMISE_SECONDS=30   time to minimise a divergent stream (0: off)
    FASTWORKER_DIFF_SHRINK=1              also let hypothesis shrink (minutes; pass
                                          --timeout=0)

On a divergence the stream is cut after the divergent step, then minimised by
delta debugging (dropping events while stock still accepts the stream and the
implementation still diverges); hypothesis' own shrinking is off by default, as it
can take longer than the 300 s test timeout on these streams.

Long runs (>= 100,000 stimuli; seeded streams without hypothesis, faster per
stimulus; prints the count; re-executes itself with PYTHONHASHSEED=0 so that a seed
names the same stream every time)::

    .venv/bin/python tests/test_differential.py --stimuli 100000            # fastworker
    .venv/bin/python tests/test_differential.py --stimuli 100000 --impl subclass
    .venv/bin/python tests/test_differential.py --stimuli 100000 --keep-going  # list all

(about 500 stimuli/s, both runs and the comparison included: 100,000 in 3-4 min.)

or through pytest (``-s`` shows the count)::

    FASTWORKER_DIFF_LONG=100000 .venv/bin/python -m pytest tests/test_differential.py -k long -s --timeout=0

A seed reproduces a stream only under the same ``PYTHONHASHSEED``: stock iterates
sets of peer addresses, whose order follows string hashes, to choose whom to fetch
from. The printed stream prefix replays anywhere; a divergence that depends on string
hash order reproduces under the hash seed that the report names.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings

import distributed.worker_state_machine as stock_wsm
from distributed.worker_state_machine import GatherDep, ReleaseWorkerDataMsg

from helpers import FASTWORKER, STOCK
from stimuli import (
    ALL_STATES,
    HANDLED_EVENTS,
    RandomChooser,
    first_divergence,
    format_event,
    format_stream,
    generate,
    minimise,
    replay,
    stimulus_streams,
)

EXAMPLES = int(os.environ.get("FASTWORKER_DIFF_EXAMPLES", 150))
MAX_STEPS = int(os.environ.get("FASTWORKER_DIFF_STEPS", 60))
LONG_STIMULI = int(os.environ.get("FASTWORKER_DIFF_LONG", 0))
#: Time allowed to minimise a divergent stream (0: do not).
MINIMISE_SECONDS = float(os.environ.get("FASTWORKER_DIFF_MINIMISE_SECONDS", 30))
#: Let hypothesis shrink a failing example too (slow: it may take minutes).
HYPOTHESIS_SHRINK = bool(os.environ.get("FASTWORKER_DIFF_SHRINK"))
#: Seeds of the coverage count and of the broken-subclass hunt.
COVERAGE_SEEDS = 150
BROKEN_SEED_BUDGET = 150


class StockSubclass(STOCK.WorkerState):
    """A trivial Python subclass of stock's WorkerState: must never diverge."""


def _label(ws_cls: type) -> str:
    return f"{ws_cls.__module__}.{ws_cls.__qualname__}"


def _hash_seed_note() -> str:
    seed = os.environ.get("PYTHONHASHSEED")
    return f"PYTHONHASHSEED={seed}" if seed else "PYTHONHASHSEED unset (random per process)"


_minimised: dict = {}


def check_stream(stream, ws_cls: type, *, minimise_seconds: float | None = None) -> None:
    """Replay ``stream`` on ``ws_cls``; AssertionError with a report if it diverges.

    The report holds the first divergence, the stream prefix up to it and, unless
    ``minimise_seconds`` is 0, a minimised stream that still diverges.
    """
    records = replay(ws_cls, stream.config, stream.events, reference=stream.records)
    report = first_divergence(stream, records, ("stock", ws_cls.__qualname__))
    if report is None:
        return
    if minimise_seconds is None:
        minimise_seconds = MINIMISE_SECONDS
    if minimise_seconds:
        # hypothesis runs a failing example again to report it: minimise it once
        cache_key = (ws_cls, stream.config, tuple(map(format_event, stream.events)))
        if cache_key not in _minimised:
            events = minimise(stream, ws_cls, time_budget=minimise_seconds)
            _minimised[cache_key] = (
                f"\n\nminimised stream ({len(events)} stimuli) that still diverges:\n"
                + format_stream(stream.config, events)
            )
        report += _minimised[cache_key]
    raise AssertionError(f"{_label(ws_cls)} diverges from stock ({_hash_seed_note()})\n{report}")


IMPLEMENTATIONS = [
    pytest.param(StockSubclass, id="stock-subclass"),
    pytest.param(FASTWORKER.WorkerState, id="fastworker"),
]

_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate]
    + ([Phase.shrink] if HYPOTHESIS_SHRINK else []),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("ws_cls", IMPLEMENTATIONS)
@_SETTINGS
@given(stream=stimulus_streams(max_steps=MAX_STEPS))
def test_same_as_stock_after_every_stimulus(ws_cls, stream):
    check_stream(stream, ws_cls)


# ------------------------------------------------------------------------------
# The harness must catch deliberately broken implementations
# ------------------------------------------------------------------------------


class ReversedReadyOrder(STOCK.WorkerState):
    """Starts the lowest-priority ready task first."""

    def _next_ready_task(self):
        if len(self.ready) > 1 and not self.constrained:
            return self.ready.popright()
        return super()._next_ready_task()


class DropsReleaseWorkerData(STOCK.WorkerState):
    """Never tells the scheduler that it released data."""

    def handle_stimulus(self, *stims):
        return [
            inst
            for inst in super().handle_stimulus(*stims)
            if not isinstance(inst, ReleaseWorkerDataMsg)
        ]


class SilentFreeKeys(STOCK.WorkerState):
    """Behaves exactly like stock but does not log free-keys (only stories differ)."""

    def handle_stimulus(self, *stims):
        instructions = super().handle_stimulus(*stims)
        for entry in list(self.log):
            if entry[0] == "free-keys":
                self.log.remove(entry)
        return instructions


class MiscountsTransfers(STOCK.WorkerState):
    """Counts every gather twice in transfer_incoming_count_total (a counter only)."""

    def handle_stimulus(self, *stims):
        instructions = super().handle_stimulus(*stims)
        self.transfer_incoming_count_total += sum(isinstance(i, GatherDep) for i in instructions)
        return instructions


BROKEN = [ReversedReadyOrder, DropsReleaseWorkerData, SilentFreeKeys, MiscountsTransfers]


@pytest.mark.parametrize("broken", BROKEN, ids=lambda cls: cls.__name__)
def test_broken_subclass_is_caught(broken):
    for seed in range(BROKEN_SEED_BUDGET):
        stream = generate(RandomChooser(seed), max_steps=MAX_STEPS)
        try:
            check_stream(stream, broken)
        except AssertionError as e:
            report = str(e)
            break
    else:
        pytest.fail(f"{broken.__name__} not caught in {BROKEN_SEED_BUDGET} streams")
    assert "first divergence at step" in report
    assert "stream prefix that reproduces it" in report
    assert "events = [" in report and f"# seed={seed}" in report
    assert "minimised stream (" in report
    print(f"\n{broken.__name__}: caught by seed {seed}\n" + report.split("\n\n")[0])


def test_broken_subclass_is_caught_by_hypothesis():
    """The hypothesis path (the one the main test takes) finds a divergence too."""

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # shrinking works, but takes tens of seconds
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(stream=stimulus_streams(max_steps=MAX_STEPS))
    def check(stream):
        check_stream(stream, DropsReleaseWorkerData, minimise_seconds=0)

    with pytest.raises(AssertionError, match="first divergence at step") as info:
        check()
    report = str(info.value)
    assert "ReleaseWorkerDataMsg" in report and "events = [" in report


def test_replay_is_deterministic():
    """Two stock runs of one stream give identical records (hashing is pinned)."""
    for seed in range(10):
        stream = generate(RandomChooser(seed), max_steps=MAX_STEPS)
        assert replay(STOCK.WorkerState, stream.config, stream.events) == stream.records


# ------------------------------------------------------------------------------
# What the generator reaches
# ------------------------------------------------------------------------------


def collect_coverage(seeds) -> dict:
    states: collections.Counter = collections.Counter()
    resting: collections.Counter = collections.Counter()
    events: collections.Counter = collections.Counter()
    transitions: collections.Counter = collections.Counter()
    instructions: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    invalid_steps = 0
    stimuli_count = 0
    for seed in seeds:
        stream = generate(RandomChooser(seed), max_steps=MAX_STEPS)
        for ev, record in zip(stream.events, stream.records):
            stimuli_count += 1
            events[type(ev).__name__] += 1
            if record["error"] is not None:
                errors[record["error"][0]] += 1
                continue
            if record["validate_state"] is not None:
                invalid_steps += 1
            for entry in record["log"]:
                # transition entries: (key, start, finish, final, {recommendations}, sid)
                if len(entry) == 6 and isinstance(entry[4], dict):
                    _, start, finish, final = entry[:4]
                    states.update((start, finish, final))
                    transitions[start, finish] += 1
            resting.update(task[1] for task in record["tasks"])
            instructions.update(inst[0] for inst in record["instructions"])
    return {
        "stimuli": stimuli_count,
        "states": states,
        "resting": resting,
        "events": events,
        "transitions": transitions,
        "instructions": instructions,
        "errors": errors,
        "invalid_steps": invalid_steps,
    }


def test_generator_coverage():
    cov = collect_coverage(range(COVERAGE_SEEDS))
    table = set(stock_wsm.WorkerState._TRANSITIONS_TABLE)
    handled = {cls.__name__ for cls in HANDLED_EVENTS}
    print(f"\n{cov['stimuli']} stimuli over {COVERAGE_SEEDS} seeded streams")
    print("task states (as transition start/target/result):", dict(sorted(cov["states"].items())))
    print("task states held after a stimulus:", dict(sorted(cov["resting"].items())))
    print("events:", dict(sorted(cov["events"].items())))
    print("instructions:", dict(sorted(cov["instructions"].items())))
    covered = table & set(cov["transitions"])
    print(f"transition table entries taken: {len(covered)}/{len(table)}; not taken:",
          sorted(table - covered))
    print("stimuli that raised in stock:", dict(cov["errors"]))
    print("stimuli after which stock's validate_state() failed:", cov["invalid_steps"])

    assert ALL_STATES <= set(cov["states"]), ALL_STATES - set(cov["states"])
    # Every state but the transient ones is also held between stimuli.
    assert ALL_STATES - {"rescheduled", "forgotten"} <= set(cov["resting"])
    assert handled <= set(cov["events"]), handled - set(cov["events"])
    # (cancelled, missing) and (missing, error) need stimuli no scheduler or Worker sends.
    assert len(covered) >= 47
    # Plausibility: stock only raises where a stream asks for it (a low
    # transition_counter_max), and its state is valid after nearly every stimulus
    # (the exception: a dependency erred by GatherDepFailureEvent while a dependent
    # waits for it, until the scheduler frees the dependent).
    assert set(cov["errors"]) <= {"TransitionCounterMaxExceeded"}
    assert cov["invalid_steps"] < 0.05 * cov["stimuli"]


# ------------------------------------------------------------------------------
# Long runs
# ------------------------------------------------------------------------------


def run_long(ws_cls: type, target: int, *, first_seed: int = 0, max_steps: int = MAX_STEPS,
             progress=None, on_divergence=None) -> tuple[int, int, list[int]]:
    """Seeded streams into stock and ``ws_cls`` until ``target`` stimuli were compared.

    Returns (stimuli, streams, seeds of divergent streams). A divergence raises
    AssertionError with its report, unless ``on_divergence(seed, report)`` is given:
    then the run goes on.
    """
    compared = streams = 0
    divergent: list[int] = []
    seed = first_seed
    started = last = time.monotonic()
    while compared < target:
        stream = generate(RandomChooser(seed), max_steps=max_steps)
        try:
            check_stream(stream, ws_cls)
        except AssertionError as e:
            if on_divergence is None:
                raise
            divergent.append(seed)
            on_divergence(seed, str(e))
        compared += len(stream.events)
        streams += 1
        seed += 1
        now = time.monotonic()
        if progress is not None and now - last > 10:
            last = now
            progress(f"{compared:,} stimuli, {streams:,} streams, {now - started:.0f} s")
    return compared, streams, divergent


@pytest.mark.skipif(not LONG_STIMULI, reason="set FASTWORKER_DIFF_LONG=<stimuli>, e.g. 100000")
@pytest.mark.parametrize("ws_cls", IMPLEMENTATIONS)
def test_long_random_streams(ws_cls):
    started = time.monotonic()
    compared, streams, _ = run_long(ws_cls, LONG_STIMULI)
    print(f"\n{_label(ws_cls)}: {compared:,} stimuli compared over {streams:,} streams "
          f"in {time.monotonic() - started:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stimuli", type=int, default=100_000)
    parser.add_argument("--impl", choices=("fastworker", "subclass", "both"), default="fastworker")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS)
    parser.add_argument("--keep-going", action="store_true",
                        help="report every divergent stream instead of stopping at the first")
    args = parser.parse_args(argv)
    if "PYTHONHASHSEED" not in os.environ:  # make seeds name streams for good
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])

    # validate_task() logs every InvalidTaskState it raises; the run reports its own.
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.CRITICAL)
    targets = []
    if args.impl in ("fastworker", "both"):
        targets.append(FASTWORKER.WorkerState)
    if args.impl in ("subclass", "both"):
        targets.append(StockSubclass)
    status = 0
    for ws_cls in targets:
        started = time.monotonic()

        def on_divergence(seed: int, report: str) -> None:
            print(report, flush=True)
            if not args.keep_going:
                raise AssertionError(f"seed {seed}")

        try:
            compared, streams, divergent = run_long(
                ws_cls, args.stimuli, first_seed=args.first_seed, max_steps=args.max_steps,
                progress=lambda msg: print(f"  {msg}", flush=True),
                on_divergence=on_divergence,
            )
        except AssertionError:
            status = 1
            continue
        outcome = f"{len(divergent)} divergent streams (seeds {divergent})" if divergent else "no divergence"
        print(f"{_label(ws_cls)}: {compared:,} stimuli compared over {streams:,} streams "
              f"(seeds {args.first_seed}..{args.first_seed + streams - 1}, {_hash_seed_note()}) "
              f"in {time.monotonic() - started:.0f} s: {outcome}", flush=True)
        status = status or int(bool(divergent))
    return status


if __name__ == "__main__":
    sys.exit(main())

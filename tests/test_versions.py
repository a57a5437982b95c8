"""Where distributed's releases differ, fastworker does what the installed release's
stock state machine does.

Every supported release runs this file (`make test-versions`, each in its own virtual
environment); each test drives stock and fastworker through the same stimuli and
compares them, so a release whose difference fastworker missed fails here. The
differences are the flags of fastworker.compat.Features.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import pickle
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

import distributed.worker_state_machine as stock_wsm
from distributed.worker_state_machine import (
    ComputeTaskEvent,
    ExecuteSuccessEvent,
    LongRunningMsg,
    SecedeEvent,
)

import fastworker
from fastworker.compat import RELEASE_FEATURES, features

from helpers import FASTWORKER, STOCK

RELEASE = version("distributed")
FEATURES = features()
STOCK_FIELDS = [f.name for f in dataclasses.fields(stock_wsm.TaskState)]


def make_pair(**kwargs):
    kwargs.setdefault("address", "127.0.0.1:1")
    return [impl.WorkerState(**kwargs) for impl in (STOCK, FASTWORKER)]


def compute(key, sid, **kwargs):
    return ComputeTaskEvent.dummy(key, stimulus_id=sid, **kwargs)


def test_installed_release_has_a_row():
    assert RELEASE in RELEASE_FEATURES
    assert FEATURES == RELEASE_FEATURES[RELEASE]


def test_feature_table_agrees_with_stock():
    """The table's flags, read off the installed stock module itself."""
    assert FEATURES.taskstate_duration == ("duration" in STOCK_FIELDS)
    assert FEATURES.long_running_run_id == ("run_id" in LongRunningMsg.__slots__)
    source = textwrap.dedent(inspect.getsource(stock_wsm.WorkerState._get_task_finished_msg))
    (line,) = [ln for ln in source.splitlines() if "assert ts.nbytes is not None" in ln]
    (validate,) = [ln for ln in source.splitlines() if "if self.validate" in ln]
    indent = len(line) - len(line.lstrip())
    assert FEATURES.finished_msg_asserts_nbytes == (
        indent == len(validate) - len(validate.lstrip())
    )


def test_taskstate_fields_and_class():
    ts = fastworker.TaskState("x")
    assert fastworker.TaskState.__match_args__ == stock_wsm.TaskState.__match_args__
    assert hasattr(ts, "duration") == ("duration" in STOCK_FIELDS)
    stock_ts = stock_wsm.TaskState("x")
    assert {n for n in dir(ts) if not n.startswith("_")} == {
        n for n in dir(stock_ts) if not n.startswith("_")
    }


def test_taskstate_positional_constructor():
    """Every field passed positionally lands in the same field on both."""
    names = list(stock_wsm.TaskState.__match_args__)
    values = [f"v-{name}" for name in names]
    for name, special in {
        "run_id": 3,
        "state": "memory",
        "previous": "flight",
        "next": "fetch",
        "dependencies": set(),
        "dependents": set(),
        "waiting_for_data": set(),
        "waiters": set(),
        "who_has": set(),
        "startstops": [],
        "suspicious_count": 2,
        "done": True,
    }.items():
        values[names.index(name)] = special
    stock_ts = stock_wsm.TaskState(*values)
    fast_ts = fastworker.TaskState(*values)
    for name in names:
        assert getattr(fast_ts, name) == getattr(stock_ts, name), name
    assert fast_ts._to_dict_no_nest() == stock_ts._to_dict_no_nest()
    copy = pickle.loads(pickle.dumps(fast_ts))
    for name in names:
        if name not in ("dependencies", "dependents", "waiting_for_data", "waiters"):
            assert getattr(copy, name) == getattr(stock_ts, name), name


def test_compute_task_sets_the_same_fields():
    kwargs = {"duration": 2.5} if "duration" in ComputeTaskEvent.__dataclass_fields__ else {}
    states = make_pair()
    for ws in states:
        ws.handle_stimulus(compute("x", "s1", **kwargs))
    stock_ts, fast_ts = (ws.tasks["x"] for ws in states)
    assert type(fast_ts) is fastworker.TaskState
    for name in STOCK_FIELDS:
        if name.startswith("_") or name in (
            "dependencies", "dependents", "waiting_for_data", "waiters", "run_spec"
        ):
            continue
        assert getattr(fast_ts, name) == getattr(stock_ts, name), name
    assert fast_ts._to_dict_no_nest(exclude=("run_spec",)) == stock_ts._to_dict_no_nest(
        exclude=("run_spec",)
    )


def run_both(states, *events):
    out = []
    for ws in states:
        instructions = []
        for ev in events:
            instructions += ws.handle_stimulus(ev)
        out.append(instructions)
    return out


def test_secede_sends_the_same_long_running_msg():
    states = make_pair()
    stock_out, fast_out = run_both(
        states,
        compute("x", "s1"),
        SecedeEvent(key="x", compute_duration=1.5, stimulus_id="s2"),
    )
    assert fast_out == stock_out
    (msg,) = [i for i in fast_out if isinstance(i, LongRunningMsg)]
    assert hasattr(msg, "run_id") == FEATURES.long_running_run_id


def test_task_finished_without_nbytes_when_not_validating():
    """A task in memory whose nbytes is unknown, asked for again: from 2026.6.0 stock
    asserts even when not validating; before, it sends the message."""
    outcomes = []
    for ws in make_pair(validate=False):
        ws.handle_stimulus(compute("x", "s1"))
        ws.handle_stimulus(ExecuteSuccessEvent.dummy("x", 1, stimulus_id="s2"))
        ws.tasks["x"].nbytes = None
        try:
            outcomes.append(("ok", ws.handle_stimulus(compute("x", "s3"))))
        except AssertionError:
            outcomes.append(("assert", None))
    assert outcomes[1] == outcomes[0]
    assert outcomes[0][0] == ("assert" if FEATURES.finished_msg_asserts_nbytes else "ok")


@pytest.mark.parametrize("release", sorted(RELEASE_FEATURES))
def test_every_release_has_features(release):
    assert isinstance(features(release).taskstate_duration, bool)


@pytest.mark.skipif(not os.environ.get("FASTWORKER_TEST_INSTALLED"),
                    reason="make test-versions only: fastworker installed from its wheel")
def test_fastworker_is_the_installed_wheel():
    """Under make test-versions, the compiled modules come from the installed wheel,
    not from the checkout (whose in-place build is for another release or Python)."""
    checkout = Path(__file__).resolve().parent.parent / "fastworker"
    assert Path(fastworker.__file__).resolve().parent != checkout
    assert fastworker.DISTRIBUTED_SUPPORTED

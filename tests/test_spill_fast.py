"""The worker's data in distributed's SpillBuffer, stored, read and dropped by the
compiled core's own functions (``fastworker/wsm/spill.pxi``): the same state as
stock's methods leave, operation by operation, spilling to disk included."""
from __future__ import annotations

import random
import threading
import time

import pytest
from distributed.metrics import context_meter
from distributed.spill import SpillBuffer

from helpers import FASTWORKER, STOCK

def workerstate_module():
    import fastworker.workerstate as module

    return module


def state(sb: SpillBuffer) -> dict:
    """Everything the buffer's methods update, in comparable form (insertion orders
    kept; metric values whose unit is seconds left out, as they are timings)."""
    lru = sb.fast
    slow = sb._slow_uncached
    return {
        "fast": list(lru.d.items()),
        "order": list(lru.order),
        "heavy": list(lru.heavy),
        "weights": list(lru.weights.items()),
        "total_weight": (type(lru.total_weight), lru.total_weight),
        "offset": lru.offset,
        "cancel_evict": dict(lru._cancel_evict),
        "cancel_restore": dict(sb._cancel_restore),
        "slow": sorted(map(str, sb.slow)),
        "slow_weights": sorted((str(k), v) for k, v in slow.weight_by_key.items()),
        "slow_total": slow.total_weight,
        "logged_pickle_errors": set(sb.logged_pickle_errors),
        "cumulative_metrics": {
            k: (v if k[1] != "seconds" else None) for k, v in sb.cumulative_metrics.items()
        },
    }


class Ops:
    """``store``, ``read`` and ``drop`` on one SpillBuffer, with stock's methods or
    the compiled functions; every metric the context's callbacks receive is recorded."""

    def __init__(self, sb: SpillBuffer, fast: bool):
        self.sb = sb
        self.fast = fast
        self.digested: list = []

    def _record(self, label, value, unit):
        self.digested.append((label, unit, value if unit != "seconds" else None))

    def store(self, key, value):
        with context_meter.add_callback(self._record):
            if self.fast:
                workerstate_module().data_set(self.sb, key, value)
            else:
                self.sb[key] = value

    def read(self, key):
        with context_meter.add_callback(self._record):
            try:
                if self.fast:
                    return workerstate_module().data_get(self.sb, key)
                return self.sb[key]
            except KeyError as e:
                return ("KeyError", e.args)

    def drop(self, key):
        with context_meter.add_callback(self._record):
            if self.fast:
                workerstate_module().data_discard(self.sb, key)
            elif key in self.sb:
                del self.sb[key]


def run_both(tmp_path, seed: int, target: int, steps: int = 600):
    rng = random.Random(seed)
    stock = Ops(SpillBuffer(str(tmp_path / "stock"), target=target), fast=False)
    fast = Ops(SpillBuffer(str(tmp_path / "fast"), target=target), fast=True)
    keys = [f"x-{i}" for i in range(40)] + [("y", i) for i in range(40)]
    heavy = 0  # values stored that weigh more than the whole target
    for step in range(steps):
        op = rng.random()
        key = rng.choice(keys)
        if op < 0.45:
            # Mostly small values; now and then one larger than the whole target
            # (when the target is small enough to make one).
            size = rng.choice((10, 100, 1_000, 5_000, min(target * 2, 40_000)))
            heavy += size > target
            value = bytes([step % 256]) * size
            stock.store(key, value)
            fast.store(key, value)
        elif op < 0.75:
            assert fast.read(key) == stock.read(key), (step, key)
        elif op < 0.97:
            stock.drop(key)
            fast.drop(key)
        else:
            offset = rng.choice((0, 0, target // 4))
            stock.sb.fast.offset = fast.sb.fast.offset = offset
        assert state(fast.sb) == state(stock.sb), (step, key)
        assert fast.digested == stock.digested, step
    stock.heavy = heavy
    return stock, fast


@pytest.mark.parametrize("seed", range(4))
def test_same_state_as_stock_without_spilling(tmp_path, seed):
    stock, _ = run_both(tmp_path, seed, target=10**9)
    assert not stock.sb.slow
    assert stock.digested  # reads were metered


@pytest.mark.parametrize("seed", range(4))
def test_same_state_as_stock_while_spilling(tmp_path, seed):
    stock, _ = run_both(tmp_path, seed, target=20_000)
    # The sequence took the paths it is meant to check: values spilled, read back
    # from disk, and values heavier than the target.
    labels = {label for label, _, _ in stock.digested}
    assert {"disk-write", "disk-read", "memory-read"} <= labels, labels
    assert stock.heavy > 0


def test_the_compiled_functions_skip_stock_methods_when_nothing_spills(tmp_path, monkeypatch):
    """The comparison above would pass trivially if the functions always called the
    SpillBuffer's own methods: count those calls."""
    calls = []
    for name in ("__setitem__", "__getitem__", "__delitem__"):
        original = getattr(SpillBuffer, name)

        def counted(self, *args, _original=original, _name=name):
            calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(SpillBuffer, name, counted)
    ws = workerstate_module()
    sb = SpillBuffer(str(tmp_path), target=10_000)
    ws.data_set(sb, "a", b"1" * 100)
    assert ws.data_get(sb, "a") == b"1" * 100
    ws.data_discard(sb, "a")
    ws.data_discard(sb, "missing")
    assert calls == []
    # A value that would make the LRU evict, a key already stored and a key on disk
    # go through the buffer's own methods.
    ws.data_set(sb, "b", b"2" * 100)
    ws.data_set(sb, "b", b"3" * 100)
    ws.data_set(sb, "c", b"4" * 20_000)
    assert calls == ["__setitem__", "__setitem__"]
    assert "c" in sb.slow
    assert ws.data_get(sb, "c") == b"4" * 20_000
    ws.data_discard(sb, "c")
    assert calls == ["__setitem__", "__setitem__", "__getitem__", "__delitem__"]


def test_other_mappings_use_their_own_methods(tmp_path):
    ws = workerstate_module()

    class MySpillBuffer(SpillBuffer):
        calls: list = []

        def __setitem__(self, key, value):
            self.calls.append(("set", key))
            super().__setitem__(key, value)

        def __getitem__(self, key):
            self.calls.append(("get", key))
            return super().__getitem__(key)

        def __delitem__(self, key):
            self.calls.append(("del", key))
            super().__delitem__(key)

    sb = MySpillBuffer(str(tmp_path), target=10_000)
    ws.data_set(sb, "a", 1)
    assert ws.data_get(sb, "a") == 1
    ws.data_discard(sb, "a")
    assert MySpillBuffer.calls == [("set", "a"), ("get", "a"), ("del", "a")]

    d: dict = {}
    ws.data_set(d, "a", 1)
    assert ws.data_get(d, "a") == 1
    ws.data_discard(d, "a")
    ws.data_discard(d, "a")
    assert d == {}
    with pytest.raises(KeyError):
        ws.data_get(d, "a")


def test_worker_state_leaves_the_same_spill_buffer_as_stock(tmp_path):
    """Both state machines, the same stimuli, each with a SpillBuffer small enough to
    spill: the buffers end up alike."""
    from distributed.worker_state_machine import (
        ComputeTaskEvent,
        ExecuteSuccessEvent,
        FreeKeysEvent,
    )

    buffers = {}
    for impl in (STOCK, FASTWORKER):
        sb = SpillBuffer(str(tmp_path / impl.name), target=3_000)
        ws = impl.WorkerState(address="127.0.0.1:1", data=sb, nthreads=1)
        for i in range(12):
            key = f"t-{i}"
            ws.handle_stimulus(ComputeTaskEvent.dummy(key, stimulus_id=f"c{i}"))
            ws.handle_stimulus(
                ExecuteSuccessEvent.dummy(
                    key, value=b"v" * (100 * (i + 1)), nbytes=100 * (i + 1), stimulus_id=f"s{i}"
                )
            )
            if i % 3 == 2:
                ws.handle_stimulus(FreeKeysEvent(keys=[f"t-{i - 1}"], stimulus_id=f"f{i}"))
        buffers[impl.name] = state(sb)
        assert sb.slow  # something spilled
    assert buffers[FASTWORKER.name] == buffers[STOCK.name]


def _spill_summary(dask_worker):
    import fastworker
    from fastworker.workerstate import spill_fast_path

    sb = dask_worker.data
    metrics = {k: v for k, v in sb.cumulative_metrics.items() if k[1] != "seconds"}
    reported = fastworker.status(dask_worker)["data_fast_path"]
    return type(sb).__name__, spill_fast_path(sb), sorted(map(str, sb)), metrics, reported


def _run_tree(worker_class):
    import dask
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        dashboard_address=":0",
        worker_class=worker_class,
    ) as cluster, Client(cluster) as client:
        leaves = [dask.delayed(lambda i: b"x" * (i + 1), pure=True)(i, dask_key_name=f"leaf-{i}") for i in range(40)]
        mids = [
            dask.delayed(lambda *xs: sum(map(len, xs)), pure=True)(*leaves[i : i + 8], dask_key_name=f"mid-{i}")
            for i in range(0, 40, 8)
        ]
        total = dask.delayed(sum, pure=True)(mids, dask_key_name="total")
        kept = client.compute(mids[0])
        result = client.compute(total)
        assert result.result(timeout=60) == sum(range(1, 41))
        assert kept.result(timeout=60) == sum(range(1, 9))
        # The other keys are released by messages that may still be on their way.
        deadline = time.monotonic() + 30
        while True:
            (summary,) = client.run(_spill_summary).values()
            if summary[2] == ["mid-0", "total"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        del kept, result
    return summary


def test_a_live_worker_takes_the_fast_path_and_ends_as_stock():
    """A worker process with distributed's default memory limit: its data is a
    SpillBuffer that the compiled core stores to, reads from and drops from; after
    a tree of tasks it holds the same keys and the same memory-read counts and bytes
    as a stock worker's."""
    from distributed import Nanny

    import fastworker

    stock = _run_tree(Nanny)
    fast = _run_tree(fastworker.Nanny)
    assert stock[:2] == ("SpillBuffer", True) == fast[:2]  # stock's buffer qualifies too
    assert fast[2] == stock[2] == ["mid-0", "total"]
    assert fast[3] == stock[3]
    # 40 leaves read by the mids, 5 mids by the total, 2 results sent to the client
    assert fast[3][("memory-read", "count")] == 47
    # fastworker.status() reports the path the compiled core takes: none on stock
    assert (stock[4], fast[4]) == (False, True)


# --- another thread in the middle of an eviction or a restore ---------------------------
# zict lets go of its locks while it writes a value to disk (an eviction) or reads one
# back (a restore), and marks the key pending meanwhile (the LRU's ``_cancel_evict``,
# the buffer's ``_cancel_restore``); a store, read or drop from another thread then
# cancels or works around it. The random sequences above run in one thread, so they
# never see those marks set. Here a second thread is held inside the disk write or
# read of one key (after the I/O, before zict takes its locks back) while this thread
# stores, reads and drops, with stock's methods on one buffer and the compiled
# functions on another; then the held thread finishes. Every state, mid-way and at
# the end, and every outcome must be stock's.


class _Gate:
    """Holds the first ``Slow.<method>`` call on ``key`` (after it has done its
    work) until :meth:`open`."""

    def __init__(self, monkeypatch):
        from distributed.spill import Slow

        self.key = None
        self.method = None
        self.entered = threading.Event()
        self.opened = threading.Event()
        for method in ("__setitem__", "__getitem__"):
            original = getattr(Slow, method)

            def gated(slow, key, *args, _original=original, _method=method):
                result = _original(slow, key, *args)
                if _method == self.method and key == self.key and not self.entered.is_set():
                    self.entered.set()
                    assert self.opened.wait(30), "the gate was never opened"
                return result

            monkeypatch.setattr(Slow, method, gated)

    def arm(self, method, key):
        self.method, self.key = method, key
        self.entered.clear()
        self.opened.clear()

    def open(self):
        self.opened.set()


class _Held:
    """A stock operation on the buffer in a second thread, held at the gate."""

    def __init__(self, gate, sb, method, key, operation):
        self.outcome = None
        gate.arm(method, key)

        def run():
            try:
                self.outcome = ("ok", operation(sb))
            except Exception as e:  # a restore cancelled by this thread: KeyError
                self.outcome = (type(e).__name__, e.args)

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert gate.entered.wait(30), "the held operation never reached the gate"
        self.gate = gate

    def finish(self):
        self.gate.open()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.outcome


V = b"v" * 600  # two of them weigh more than the target: the older one is evicted
SMALL = b"s" * 10
TARGET = 1_000


def _evicting(gate, sb):
    """``b`` stored in a second thread evicts ``a``, held in its disk write."""
    return _Held(gate, sb, "__setitem__", "a", lambda sb: sb.__setitem__("b", V))


def _restoring(gate, sb):
    """``a`` (on disk) read in a second thread, held in its disk read."""
    return _Held(gate, sb, "__getitem__", "a", lambda sb: sb["a"])


#: name -> (where the second thread is held, what this thread does meanwhile)
SCENARIOS = {
    "evicting a: read a": (_evicting, [("read", "a")]),
    "evicting a: drop a": (_evicting, [("drop", "a")]),
    "evicting a: drop a, store a": (_evicting, [("drop", "a"), ("store", "a", SMALL)]),
    "evicting a: store a again": (_evicting, [("store", "a", SMALL)]),
    "evicting a: drop b, store c": (_evicting, [("drop", "b"), ("store", "c", SMALL)]),
    "restoring a: store a": (_restoring, [("store", "a", SMALL)]),
    "restoring a: drop a, store a": (_restoring, [("drop", "a"), ("store", "a", SMALL)]),
    "restoring a: drop a, store a, drop a": (
        _restoring, [("drop", "a"), ("store", "a", SMALL), ("drop", "a")]
    ),
    "restoring a: drop a, store a, read a": (
        _restoring, [("drop", "a"), ("store", "a", SMALL), ("read", "a")]
    ),
    "restoring a: store c, read b, drop b": (
        _restoring, [("store", "c", SMALL), ("read", "b"), ("drop", "b")]
    ),
}


def _run_scenario(tmp_path, gate, name, fast):
    held_at, steps = SCENARIOS[name]
    ops = Ops(SpillBuffer(str(tmp_path / ("fast" if fast else "stock")), target=TARGET), fast)
    sb = ops.sb
    if held_at is _restoring:
        sb["a"] = V
        sb["b"] = V  # evicts a: on disk, b in memory
        assert "a" in sb.slow and "b" in sb.fast
    else:
        sb["a"] = V
    held = held_at(gate, sb)
    seen = []
    for op, key, *value in steps:
        seen.append((op, key, getattr(ops, op)(key, *value)))
        seen.append(state(sb))  # with the second thread still held
    seen.append(("held", held.finish()))
    seen.append(state(sb))
    seen.append(ops.digested)
    return seen


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_state_as_stock_beside_a_pending_eviction_or_restore(tmp_path, monkeypatch, name):
    gate = _Gate(monkeypatch)
    stock = _run_scenario(tmp_path, gate, name, fast=False)
    fast = _run_scenario(tmp_path, gate, name, fast=True)
    assert fast == stock
    # The marks were set while this thread worked (the scenario is what it says)
    held_at = SCENARIOS[name][0]
    mark = "cancel_evict" if held_at is _evicting else "cancel_restore"
    assert any(isinstance(s, dict) and "a" in s[mark] for s in stock)

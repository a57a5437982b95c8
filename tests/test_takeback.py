"""fastworker.takeback: a watchdog takes a running call back, with an async exception
on any thread or a signal on the main thread, and never raises outside the call."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from fastworker import takeback
from fastworker.takeback import Guard, TakenBack
from fastworker.watchdog import signal_number

SIGNUM = signal_number("SIGRTMIN+4")


def checker(guard, bound, stop, period=0.002):
    """A watchdog: check ``guard`` every ``period`` until ``stop`` is set."""
    def run():
        while not stop.is_set():
            guard.check(bound)
            time.sleep(period)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def sleep_loop(_):
    while True:
        time.sleep(0.001)


def blocked_forever(_):
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # never returns by itself


def test_async_exception_takes_back_a_loop_of_waits_on_another_thread():
    outcome = {}

    def target():
        guard = outcome["guard"] = Guard(threading.get_ident(), 0)
        outcome["ready"].set()
        try:
            guard.call(sleep_loop, None, "k")
        except TakenBack as exc:
            outcome["exc"] = exc
        outcome["held"] = guard.last_held

    outcome["ready"] = threading.Event()
    thread = threading.Thread(target=target)
    thread.start()
    outcome["ready"].wait(5)
    stop = threading.Event()
    watch = checker(outcome["guard"], 0.05, stop)
    thread.join(10)
    stop.set()
    watch.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome.get("exc"), TakenBack)
    assert 0.05 <= outcome["held"] < 1.0


@pytest.mark.skipif(not SIGNUM or not hasattr(signal, "pthread_kill"), reason="POSIX signals")
def test_signal_takes_back_a_blocked_wait_on_the_main_thread():
    assert threading.current_thread() is threading.main_thread()
    assert takeback.install_signal_handler(SIGNUM)
    guard = Guard(threading.get_ident(), SIGNUM)
    stop = threading.Event()
    watch = checker(guard, 0.05, stop)
    try:
        start = time.monotonic()
        with pytest.raises(TakenBack, match="held the event loop"):
            guard.call(blocked_forever, None, "k")
        assert time.monotonic() - start < 5
        # Sleeps are interrupted too.
        with pytest.raises(TakenBack):
            guard.call(lambda _: time.sleep(30), None, "k2")
    finally:
        stop.set()
        watch.join(5)
    assert not guard.running


@pytest.mark.skipif(not SIGNUM or not hasattr(signal, "pthread_kill"), reason="POSIX signals")
def test_signal_in_a_gc_callback_or_finalizer_waits_for_the_task(monkeypatch):
    """A take-back signal that lands in a garbage-collection callback (distributed's GC
    diagnostics) or a ``__del__`` run inside the task raises nothing there (up to
    twice per call); the next one, in the task's own code, takes it back."""
    import gc
    import sys

    assert takeback.install_signal_handler(SIGNUM)
    guard = Guard(threading.get_ident(), SIGNUM)
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    done = []

    def fire():
        # What the watchdog does when the bound is reached: the signal is delivered
        # to this (the main) thread and its handler runs at the next bytecode.
        guard.check(0.0)
        for _ in range(100):
            pass

    def gc_callback(phase, info):
        if phase == "stop" and info["generation"] == 2 and "gc" not in done:
            fire()
            done.append("gc")

    class Cleanup:
        def __del__(self):
            fire()
            done.append("del")

    def task(_):
        gc.collect()
        Cleanup()  # dropped at once: __del__ runs here
        done.append("task")
        fire()  # in the task's own code: taken back
        done.append("not reached")

    gc.callbacks.append(gc_callback)
    try:
        with pytest.raises(TakenBack):
            guard.call(task, None, "k")
    finally:
        gc.callbacks.remove(gc_callback)
    assert done == ["gc", "del", "task"]  # neither cleanup was cut short
    assert not unraisable
    assert guard.deferred == 2 and guard.fired == 3

    # Past two deferrals in one call, a signal raises even in a finalizer (a task
    # that spends all its time in finalizers must still be taken back).
    def three(_):
        for _ in range(3):
            Cleanup()
    done.clear()
    guard.call(three, None, "k2")
    assert done == ["del", "del"]
    assert len(unraisable) == 1 and unraisable[0].exc_type is TakenBack
    assert guard.deferred == 4


def test_a_deferred_take_back_is_not_taken_for_a_stuck_task():
    from fastworker.watchdog import STUCK_AFTER_BOUNDS

    assert takeback.MAX_DEFERRALS_PER_CALL + 1 < STUCK_AFTER_BOUNDS


def _hammer(guard, calls):
    """``calls`` short guarded calls while a checker fires at every one of them:
    TakenBack may end a call, never anything outside it. Returns (calls taken back,
    calls returned, calls the checker fired at)."""
    def short(x):
        total = 0
        for i in range(50):
            total += i
        return total

    taken = returned = fired = 0
    for _ in range(calls):
        try:
            guard.call(short, None, "k")
            returned += 1
        except TakenBack:
            taken += 1
        fired += guard.fired > 0
        # Plain Python code outside the call: a stray exception would surface here.
        for _ in range(20):
            pass
    return taken, returned, fired


def test_no_stray_async_exception_outside_the_call():
    result = {}
    errors = []

    def target():
        guard = result["guard"] = Guard(threading.get_ident(), 0)
        result["ready"].set()
        try:
            result["counts"] = _hammer(guard, 20_000)
        except BaseException as exc:  # a stray TakenBack would land here
            errors.append(exc)

    result["ready"] = threading.Event()
    thread = threading.Thread(target=target)
    thread.start()
    result["ready"].wait(5)
    stop = threading.Event()
    watch = checker(result["guard"], 0.0, stop, period=0)
    thread.join(120)
    stop.set()
    watch.join(5)
    assert not errors, errors
    taken, returned, fired = result["counts"]
    assert taken + returned == 20_000
    assert taken > 0  # the checker did fire during calls
    assert fired >= taken


@pytest.mark.skipif(not SIGNUM or not hasattr(signal, "pthread_kill"), reason="POSIX signals")
def test_no_stray_signal_outside_the_call():
    assert takeback.install_signal_handler(SIGNUM)
    guard = Guard(threading.get_ident(), SIGNUM)
    stop = threading.Event()
    watch = checker(guard, 0.0, stop, period=0)
    try:
        taken, returned, fired = _hammer(guard, 20_000)
    finally:
        stop.set()
        watch.join(5)
    assert taken + returned == 20_000
    assert fired > 0  # signals were sent at running calls
    assert taken > 0  # and some landed inside a call, which ended it


def test_guard_call_and_gc_clock():
    guard = Guard(threading.get_ident(), 0)
    assert guard.call(lambda data: data["x"] + 1, {"x": 1}, "key-1") == 2
    assert guard.key == "key-1" and not guard.running and guard.serial == 1
    assert guard.check(0.0) is None  # nothing runs: nothing to take back
    takeback.install_gc_clock()
    before = takeback.gc_seconds()
    import gc

    gc.collect()
    assert takeback.gc_seconds() > before  # the collection was timed
    start = takeback.monotonic()
    time.sleep(0.01)
    assert takeback.monotonic() - start >= 0.009

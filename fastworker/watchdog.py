"""The opt-in event-loop executor's watchdog: no inline task holds the loop for long.

One :class:`Watchdog` per event-loop thread holds the :class:`~fastworker.takeback.Guard`
of the inline task running there; a thread, alive only while batches run, polls it
and takes back a task that holds the loop longer than the bound (through a signal on
the main thread, an asynchronous exception elsewhere), and warns about one that
cannot be taken back. Only :mod:`fastworker.inline` uses it, and only for tasks a
user sent there (``dask.annotate(executor="inline")`` or
``fastworker.inline.automatic: true``).
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time as timemod
import weakref

from fastworker.takeback import Guard

logger = logging.getLogger("distributed.fastworker")

#: Polls of the guard per take-back bound.
POLLS_PER_BOUND = 4
#: A task fired at and still running after this many bounds is stuck (blocked where
#: no exception reaches it): logged at WARNING.
STUCK_AFTER_BOUNDS = 4
#: A stuck task is warned about again once it has held the loop this much longer
#: (seconds) or twice as long as at the last warning, whichever is later.
STUCK_WARN_AGAIN = 10.0


def signal_number(name: str) -> int:
    """``"SIGRTMIN+4"``, ``"SIGUSR2"`` or a number, as a signal number (0: none)."""
    name = str(name).strip()
    if not name or name.lower() in ("none", "false", "0"):
        return 0
    if name.isdigit():
        return int(name)
    base, _, offset = name.partition("+")
    number = getattr(signal, base.strip(), None)
    if number is None:
        return 0
    return int(number) + (int(offset) if offset else 0)


class Watchdog:
    """One per event loop thread: the :class:`~fastworker.takeback.Guard` of the inline
    task running there, and a thread that takes it back when it holds the loop for
    too long and warns when it cannot.

    The thread runs only while batches do: :meth:`arm` (at each batch) starts it if
    needed, and it ends a quarter of a second after the last batch, so that an idle
    or closed worker leaves no thread behind.
    """

    #: Seconds without a batch after which the watchdog thread ends.
    IDLE_EXIT = 0.25

    def __init__(self, thread_id: int, signum: int, bound: float, native_id: int | None = None):
        self.guard = Guard(thread_id, signum)
        #: Linux: where the kernel says how long the loop's thread waited for a CPU.
        self._schedstat = (
            f"/proc/self/task/{native_id}/schedstat" if native_id is not None else None
        )
        self._seen: tuple[int, int] = (-1, 0)  # (task serial, its first wait reading)
        self.signum = signum
        self.bound = bound
        self.mode = "signal" if signum else "async-exception"
        #: True while a batch runs on the loop.
        self.busy = False
        #: Batches started so far (the thread watches it move).
        self.batches = 0
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Longest time one inline task held the loop (seconds, GC left out).
        self.longest_hold = 0.0
        #: The task that holds the loop and could not be taken back (key, seconds), or
        #: None; the most recent such case is kept in ``last_stuck``.
        self.stuck: dict | None = None
        self.last_stuck: dict | None = None
        self._warned: tuple[int, float] = (0, 0.0)

    def arm(self) -> None:
        """A batch starts: make sure the watchdog thread runs."""
        self.busy = True
        self.batches += 1  # before the lock: an exiting thread sees it and stays
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(
                    target=_watch, args=(weakref.ref(self),),
                    name="fastworker-inline-watchdog", daemon=True,
                )
                self.thread.start()

    def _cpu_wait_ns(self) -> int | None:
        """Nanoseconds the loop's thread has spent runnable but waiting for a CPU."""
        path = self._schedstat
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            self._schedstat = None
            return None

    def check(self) -> None:
        guard = self.guard
        serial = guard.serial
        discount = 0.0
        if guard.running:
            # A machine so busy that the loop's thread waits for a CPU does not make
            # a task block the loop: that wait is not counted (from the first poll
            # that saw the task on; Linux).
            waited = self._cpu_wait_ns()
            if waited is not None:
                seen_serial, seen_wait = self._seen
                if seen_serial != serial:
                    self._seen = (serial, waited)
                else:
                    discount = (waited - seen_wait) * 1e-9
        state = guard.check(self.bound, discount, serial)
        if state is None:
            self.stuck = None
            return
        serial, key, held, fired = state
        if fired and held >= STUCK_AFTER_BOUNDS * self.bound:
            # Fired at, and still running: it is blocked where no exception reaches it.
            last_serial, last_held = self._warned
            if serial != last_serial or held >= max(2 * last_held, last_held + STUCK_WARN_AGAIN):
                self._warned = (serial, held)
                self.stuck = self.last_stuck = {"key": key, "held": held}
                logger.warning(
                    "fastworker: inline task %r has held the event loop for %.2f s and "
                    "could not be taken back (it is blocked inside C code that neither "
                    "returns nor handles signals); fastworker.inline.take-back-after is "
                    "%.3f s. Annotate such tasks with another executor or set "
                    "fastworker.inline.automatic: false",
                    key, held, self.bound,
                )


def _watch(ref) -> None:
    """The watchdog thread: polls POLLS_PER_BOUND times per bound while batches run; ends after
    :attr:`Watchdog.IDLE_EXIT` seconds without one."""
    try:
        _watch_loop(ref)
    finally:
        watchdog = ref()
        if watchdog is not None:
            with watchdog._lock:
                if watchdog.thread is threading.current_thread():
                    watchdog.thread = None


def _watch_loop(ref) -> None:
    idle_since, idle_batches = None, -1
    while True:
        watchdog = ref()
        if watchdog is None:
            return
        period = watchdog.bound / POLLS_PER_BOUND
        del watchdog
        timemod.sleep(period)
        watchdog = ref()
        if watchdog is None:
            return
        try:
            watchdog.check()
        except Exception:  # pragma: no cover - never expected; keep watching
            logger.exception("fastworker: inline watchdog failed")
        if watchdog.busy or watchdog.guard.running:
            idle_since = None
        else:
            batches = watchdog.batches
            if idle_since is None or batches != idle_batches:
                idle_since, idle_batches = timemod.monotonic(), batches
            elif timemod.monotonic() - idle_since > watchdog.IDLE_EXIT:
                with watchdog._lock:
                    if watchdog.batches == batches and not watchdog.busy:
                        watchdog.thread = None  # the next batch starts another
                        return
        del watchdog


#: The watchdog of each event loop thread (thread id -> Watchdog).
_WATCHDOGS: dict[int, Watchdog] = {}
_WATCHDOGS_LOCK = threading.Lock()


def watchdog_for(thread_id: int, signum: int, bound: float) -> Watchdog:
    """The watchdog of the calling thread (an event loop's)."""
    with _WATCHDOGS_LOCK:
        watchdog = _WATCHDOGS.get(thread_id)
        if watchdog is None:
            native_id = threading.get_native_id() if sys.platform == "linux" else None
            watchdog = _WATCHDOGS[thread_id] = Watchdog(thread_id, signum, bound, native_id)
        return watchdog


def inline_task_here() -> bool:
    """Whether an inline task's own code is running on the calling thread."""
    watchdog = _WATCHDOGS.get(threading.get_ident())
    return watchdog is not None and watchdog.guard.running


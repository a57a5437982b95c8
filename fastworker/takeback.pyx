# cython: language_level=3
"""Taking an inline task back from the event loop's thread.

The in-process executor (:mod:`fastworker.inline`) runs tiny tasks on the worker's
event loop. A task that turns out to wait for something only the loop brings about
(a spill, a transfer, a message, a ``sync()`` against the worker's own loop, a lock
held by a pool thread that itself waits on the loop) would hold the loop forever. A
watchdog thread therefore *takes back* any inline task that has held the loop for
longer than a bound: it raises :class:`TakenBack` inside the task, and the executor
runs the task again, from the start, in the thread pool.

How the exception gets into the task:

- **signal** (the loop runs in the process's main thread, the case of ``dask worker``
  and of Nanny worker processes): the watchdog sends a signal to the loop's thread;
  its Python handler raises :class:`TakenBack`. Blocking waits on locks, events,
  queues, ``time.sleep`` and sockets are interrupted by a signal, so a task blocked
  in one is taken back too.
- **async-exception** (any other thread): ``PyThreadState_SetAsyncExc``. The task
  sees the exception at its next Python bytecode: a loop of short waits is taken
  back, a single wait that never returns (a lock acquired without a timeout) is not.

Either way, a task blocked inside C code that neither returns nor checks for
signals cannot be taken back; the watchdog then warns (see ``fastworker.inline``).

Race-freedom: :meth:`Guard.call` marks the task as running right before calling it
and clears the mark right after it returns, in C, with no Python bytecode between
the task's last instruction and the clearing (the loop's thread holds the GIL
throughout). :meth:`Guard.check` decides and fires in C too. A pending async
exception that arrives too late is withdrawn; a signal that arrives too late finds
no running task and its handler does nothing. So :class:`TakenBack` is only ever
raised inside the task's own code.
"""
from cpython.object cimport PyObject
from libc.time cimport timespec

import gc
import signal as _signal
import threading
import weakref

cdef extern from "Python.h":
    int PyThreadState_SetAsyncExc(unsigned long id, PyObject *exc)

cdef extern from "<time.h>" nogil:
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC


cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def monotonic():
    """Seconds on the clock the guard uses (CLOCK_MONOTONIC, as ``time.perf_counter``)."""
    return _now()


class TakenBack(BaseException):
    """Raised inside an inline task that held the event loop for too long: the
    in-process executor runs it again in the thread pool.

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception``
    in user code does not swallow it.
    """


# --- time spent in the garbage collector ---------------------------------------------

cdef double _gc_total = 0.0
cdef double _gc_started = 0.0
cdef bint _gc_clock_installed = False


def _gc_callback(phase, info):
    global _gc_total, _gc_started
    if phase == "start":
        _gc_started = _now()
    else:
        _gc_total += _now() - _gc_started


def install_gc_clock():
    """Start counting seconds spent in the garbage collector (idempotent)."""
    global _gc_clock_installed
    if not _gc_clock_installed:
        gc.callbacks.append(_gc_callback)
        _gc_clock_installed = True


def gc_seconds():
    """Seconds spent in the garbage collector since :func:`install_gc_clock`."""
    return _gc_total


# --- the guard -------------------------------------------------------------------------

#: Guards that take back through a signal, for the signal handler to ask.
_SIGNAL_GUARDS = weakref.WeakSet()
#: The signal number whose handler is ours (0: none installed).
cdef int _handler_signum = 0


#: Signals per call that may land in a GC callback or a finalizer without raising.
#: The one after them comes at bound x (MAX_DEFERRALS + 1), which must stay below the
#: watchdog's STUCK_AFTER_BOUNDS: a deferred task is not a stuck one.
cdef enum:
    MAX_DEFERRALS = 2
MAX_DEFERRALS_PER_CALL = MAX_DEFERRALS


def _in_cleanup(frame):
    """Is ``frame`` (or a frame it was called from) a garbage-collection callback
    (``gc.callbacks``, e.g. distributed's GC diagnostics) or a ``__del__``? Those run
    inside whatever Python code allocated or dropped the last reference, the task
    included; an exception raised there is printed as "Exception ignored" and cuts
    that cleanup short (distributed's GC timer then asserts on the next collection)."""
    codes = set()
    for cb in gc.callbacks:
        func = getattr(cb, "__func__", cb)
        code = getattr(func, "__code__", None)
        if code is not None:
            codes.add(code)
    while frame is not None:
        code = frame.f_code
        if code in codes or code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _on_signal(signum, frame):
    """Handler of the take-back signal: raise in the task the watchdog fired at,
    if it is still running on this thread; otherwise (it returned in the meantime)
    do nothing. A signal that lands in a garbage-collection callback or a
    finalizer the task triggered raises nothing, up to ``MAX_DEFERRALS`` times per
    call: the watchdog fires again after another ``bound`` (see
    :meth:`Guard.check`), by when a short cleanup has finished; a task that spends
    nearly all its time in finalizers is still taken back, inside one."""
    cdef Guard guard
    cdef unsigned long me = threading.get_ident()
    for guard in list(_SIGNAL_GUARDS):
        if guard.running and guard.fired and guard.thread_id == me:
            if guard.deferrals < MAX_DEFERRALS and _in_cleanup(frame):
                guard.deferrals += 1
                guard.deferred += 1
                return
            raise TakenBack(
                f"held the event loop for {guard.held():.3f} s"
            )


def install_signal_handler(int signum):
    """Install the take-back handler for ``signum`` in this (the main) thread.

    Returns True if the handler is ours now; False if another handler owns the
    signal (it is left alone) or this is not the main thread.
    """
    global _handler_signum
    if _handler_signum == signum:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        current = _signal.getsignal(signum)
    except (ValueError, OSError):
        return False
    if current is not _signal.SIG_DFL and current is not None:
        return False
    _signal.signal(signum, _on_signal)
    try:
        # No SA_RESTART: with it, a wait on a lock (a futex) is restarted by the
        # kernel and the handler never runs. Blocking system calls in the task are
        # interrupted (EINTR); Python's own retry them after the handler ran.
        _signal.siginterrupt(signum, True)
    except (AttributeError, OSError):  # pragma: no cover - not on POSIX
        pass
    _handler_signum = signum
    return True


cdef class Guard:
    """The inline task running now on one event loop's thread, for its watchdog.

    ``Guard(thread_id, signum)``: ``signum`` 0 takes tasks back with an async
    exception, otherwise with that signal (its handler installed with
    :func:`install_signal_handler`).
    """

    cdef readonly unsigned long thread_id
    cdef readonly int signum
    cdef readonly bint running
    cdef readonly int fired
    cdef readonly unsigned long long serial
    cdef readonly double started
    cdef readonly double last_held
    cdef double gc_at_start
    cdef readonly object key
    #: Signals that landed in a GC callback or a finalizer and raised nothing.
    cdef readonly unsigned long long deferred
    cdef int deferrals  # of the running call
    cdef object __weakref__

    def __cinit__(self, unsigned long thread_id, int signum=0):
        self.thread_id = thread_id
        self.signum = signum
        if signum:
            _SIGNAL_GUARDS.add(self)

    def call(self, func, arg, key):
        """``func(arg)``, marked as the running inline task ``key`` while it runs."""
        self.key = key
        self.fired = 0
        self.deferrals = 0
        self.serial += 1
        self.gc_at_start = _gc_total
        self.started = _now()
        self.running = True
        try:
            return func(arg)
        finally:
            # From here on, in C: nothing can raise TakenBack any more.
            self.running = False
            self.last_held = _now() - self.started - (_gc_total - self.gc_at_start)
            if self.fired and not self.signum:
                PyThreadState_SetAsyncExc(self.thread_id, NULL)  # withdraw a late one

    cpdef double held(self):
        """Seconds the running task has held the loop, garbage collections left out
        (0 when none runs)."""
        if not self.running:
            return 0.0
        return _now() - self.started - (_gc_total - self.gc_at_start)

    def check(self, double bound, double discount=0.0, serial=None):
        """Called by the watchdog: take the running task back if it has held the loop
        for ``bound`` seconds (again after each further ``bound``).

        ``discount``: seconds of that time that do not count (the loop's thread was
        runnable but not running: the machine was busy), applied only if the running
        task is still number ``serial``.

        Returns ``(serial, key, held seconds, times fired)`` of the running task, or
        None when no task runs.
        """
        if not self.running:
            return None
        cdef double held = self.held()
        if serial is not None and serial == self.serial:
            held -= discount
        if held >= bound * (self.fired + 1):
            self.fired += 1
            if self.signum:
                # Through the interpreter's own pthread_kill (the signal module, no
                # bytecode runs): a direct call from here would bind this extension to
                # glibc 2.34's pthread_kill and its wheels to manylinux_2_34.
                try:
                    _signal.pthread_kill(self.thread_id, self.signum)
                except OSError:  # the thread is gone: there is nothing to take back
                    pass
            else:
                PyThreadState_SetAsyncExc(self.thread_id, <PyObject *>TakenBack)
        return (self.serial, self.key, held, self.fired)

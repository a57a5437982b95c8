"""Low-latency dispatch: when distributed's batched streams send their messages.

distributed sends the scheduler's messages to a worker, and a worker's messages to
the scheduler, through a ``BatchedSend``: after each write the stream waits a fixed
interval (5 ms scheduler -> worker, 2 ms worker -> scheduler, hard-coded) before the
next one, and whatever is sent meanwhile leaves together at the end of the window.
Under load that saves writes; on a cluster where only about 1.1 x nthreads tasks
sit on a worker (root-task queuing), nearly every task's round trip lands inside a
window and waits for it.

A :class:`Pacer` takes over the timing of one running ``BatchedSend`` on the
instance (its ``interval`` and, through an instance attribute, its ``send``), never
its buffer: the same messages leave in the same order, only *when* changes.

The rule, per stream:

- **quiet** (fewer than ``fastworker.dispatch.busy-rate`` messages per second over
  the last window of ``fastworker.dispatch.window``): interval 0. A message sent to
  an idle stream leaves on the next loop iteration, and whatever is sent while a
  write is in flight leaves together right after it.
- **busy** (that rate or more): the stream's stock interval, i.e. distributed's own
  batching, so that a loaded scheduler writes no more often than stock does.

The rate is re-evaluated when a message is sent and the window has elapsed, so a
stream that goes quiet is back to interval 0 with its next message.
"""
from __future__ import annotations

import logging
from typing import Any

import dask
from dask.utils import parse_timedelta
from distributed.batched import BatchedSend
from distributed.metrics import time

logger = logging.getLogger("distributed.fastworker")

_logged_rule: set[str] = set()


def settings() -> dict:
    """The ``fastworker.dispatch.*`` keys, parsed (read on every call)."""
    return {
        "enabled": bool(dask.config.get("fastworker.dispatch.enabled", True)),
        "busy_rate": float(dask.config.get("fastworker.dispatch.busy-rate", 4000)),
        "window": parse_timedelta(dask.config.get("fastworker.dispatch.window", "50ms"), default="ms"),
    }


def enabled() -> bool:
    """The current value of ``fastworker.dispatch.enabled``."""
    return settings()["enabled"]


def describe_rule(side: str, busy_rate: float, window: float) -> str:
    return (
        f"fastworker: low-latency dispatch on the {side} streams: a message to an idle "
        f"stream leaves at once, messages sent during a write leave right after it, and a "
        f"stream carrying {busy_rate:g} messages/s or more (over {window * 1000:g} ms) "
        "batches at distributed's own interval"
    )


def log_rule_once(side: str, busy_rate: float, window: float) -> None:
    """Log the rule at INFO, once per process and side."""
    if side not in _logged_rule:
        _logged_rule.add(side)
        logger.info(describe_rule(side, busy_rate, window))


class Pacer:
    """Decides when one ``BatchedSend`` writes; see the module docstring.

    Installed with :meth:`adopt` (idempotent), removed with :meth:`release`, which
    gives the stream back its stock interval and its class's ``send``.
    """

    __slots__ = (
        "stream",
        "stock_interval",
        "busy_rate",
        "window",
        "busy",
        "window_start",
        "window_count",
        "switches",
    )

    def __init__(self, stream: BatchedSend, busy_rate: float, window: float):
        self.stream = stream
        self.stock_interval = stream.interval
        self.busy_rate = busy_rate
        self.window = window
        self.busy = False
        self.window_start = time()
        self.window_count = 0
        self.switches = 0

    @classmethod
    def adopt(cls, stream: BatchedSend, busy_rate: float, window: float) -> Pacer:
        pacer = getattr(stream, "_fastworker_pacer", None)
        if isinstance(pacer, Pacer):
            pacer.busy_rate = busy_rate
            pacer.window = window
            return pacer
        pacer = cls(stream, busy_rate, window)
        stream._fastworker_pacer = pacer
        stream.send = pacer.send  # shadows BatchedSend.send on this instance only
        pacer._quiet(time())
        return pacer

    @staticmethod
    def of(stream: Any) -> Pacer | None:
        pacer = getattr(stream, "_fastworker_pacer", None)
        return pacer if isinstance(pacer, Pacer) else None

    def release(self) -> None:
        stream = self.stream
        if stream.__dict__.get("send") == self.send:
            del stream.send
        if stream.__dict__.get("_fastworker_pacer") is self:
            del stream._fastworker_pacer
        stream.interval = self.stock_interval

    def _quiet(self, now: float) -> None:
        stream = self.stream
        stream.interval = 0.0
        deadline = stream.next_deadline
        if deadline is not None and deadline > now:
            # A stock-length window is pending: end it now, so that the buffer
            # leaves on the next loop iteration instead of at its end.
            stream.next_deadline = now
            stream.waker.set()

    def send(self, *msgs: Any) -> None:
        now = time()
        self.window_count += len(msgs)
        elapsed = now - self.window_start
        if elapsed >= self.window:
            busy = self.window_count >= self.busy_rate * elapsed
            if busy != self.busy:
                self.busy = busy
                self.switches += 1
                if busy:
                    self.stream.interval = self.stock_interval
                else:
                    self._quiet(now)
            self.window_start = now
            self.window_count = 0
        BatchedSend.send(self.stream, *msgs)

    def state(self) -> dict:
        return {
            "mode": "busy" if self.busy else "quiet",
            "interval": self.stream.interval,
            "stock_interval": self.stock_interval,
            "switches": self.switches,
        }

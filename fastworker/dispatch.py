"""Low-latency dispatch: when distributed's batched streams send their messages.

distributed sends the scheduler's messages to a worker, and a worker's messages to
the scheduler, through a ``BatchedSend``: after each write the stream waits a fixed
interval (5 ms scheduler -> worker, 2 ms worker -> scheduler, hard-coded) before the
next one, and whatever is sent meanwhile leaves together at the end of the window.
Under load that saves writes; on a cluster where only about 1.1 x nthreads tasks
sit on a worker (root-task queuing), nearly every task's round trip lands inside a
window and waits for it.

A :class:`Pacer` takes over the timing of one ``BatchedSend`` on the instance (its
``interval`` and, through an instance attribute, its ``send``), never its buffer:
the same messages leave in the same order, only *when* changes. A stream adopted
before it starts (a worker joining the scheduler, a fastworker worker's own stream)
also gets the Pacer's sending loop in place of distributed's (through the instance's
``_background_send``): the same writes, without the timer and exception that
distributed's loop goes through after every write (about 25 µs of CPU per write
measured here). A stream that already runs keeps distributed's loop, at interval 0.

The rule, per stream:

- **quiet** (fewer than ``fastworker.dispatch.busy-rate`` messages per second over
  the last window of ``fastworker.dispatch.window``): the interval
  ``fastworker.dispatch.interval``, default 0. A message sent to an idle stream
  leaves on the next loop iteration, and whatever is sent while a write is in flight
  leaves together right after it.
- **busy** (that rate or more): the stream's stock interval, i.e. distributed's own
  batching, so that a loaded scheduler writes no more often than stock does.

The rate is re-evaluated on the first message sent after each window, so a stream
that goes quiet is back to the quiet interval once a window has seen few messages.
Measurements behind the defaults: docs/design.md, "Low-latency dispatch".
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from dask.utils import parse_timedelta
from distributed.batched import BatchedSend
from distributed.comm.tcp import TCP as _TCP
from distributed.core import CommClosedError
from distributed.metrics import time

from fastworker import config, wire

logger = logging.getLogger("distributed.fastworker")

#: fastworker.dispatch.* defaults: the Rule's own defaults are these (config.py).
_DEFAULTS = config.DEFAULTS["fastworker"]["dispatch"]

_logged_rule: set[str] = set()


@dataclass(frozen=True)
class Rule:
    """When a paced stream writes (the ``fastworker.dispatch.*`` keys)."""

    #: Messages per second on one stream from which it batches at its stock interval.
    busy_rate: float = float(_DEFAULTS["busy-rate"])
    #: How long the rate is measured over before the mode is reconsidered (seconds).
    window: float = parse_timedelta(_DEFAULTS["window"], default="ms")
    #: The interval of a quiet stream (seconds; 0: write as soon as the loop runs).
    interval: float = parse_timedelta(_DEFAULTS["interval"], default="ms")
    #: Small plain messages framed and decoded by :mod:`fastworker.wire`.
    wire: bool = bool(_DEFAULTS["wire"])

    @classmethod
    def from_config(cls) -> Rule:
        get = config.get
        return cls(
            busy_rate=float(get("fastworker.dispatch.busy-rate")),
            window=parse_timedelta(get("fastworker.dispatch.window"), default="ms"),
            interval=parse_timedelta(get("fastworker.dispatch.interval"), default="ms"),
            wire=bool(get("fastworker.dispatch.wire")),
        )

    def describe(self, side: str) -> str:
        return (
            f"fastworker: low-latency dispatch on the {side} streams: a message to an idle "
            f"stream leaves {'at once' if not self.interval else f'within {self.interval * 1e3:g} ms'}, "
            f"messages sent during a write leave right after it, and a stream carrying "
            f"{self.busy_rate:g} messages/s or more (over {self.window * 1e3:g} ms) batches at "
            "distributed's own interval"
        )


def enabled() -> bool:
    """The current value of ``fastworker.dispatch.enabled``."""
    return bool(config.get("fastworker.dispatch.enabled"))


def log_rule_once(side: str, rule: Rule) -> None:
    """Log the rule at INFO, once per process and side."""
    if side not in _logged_rule:
        _logged_rule.add(side)
        logger.info(rule.describe(side))


class Pacer:
    """Decides when one ``BatchedSend`` writes; see the module docstring.

    Installed with :meth:`adopt` (idempotent), removed with :meth:`release`, which
    gives the stream back its stock interval and its class's ``send``.
    """

    __slots__ = (
        "stream",
        "stock_interval",
        "rule",
        "busy",
        "window_start",
        "window_count",
        "switches",
    )

    def __init__(self, stream: BatchedSend, rule: Rule):
        self.stream = stream
        self.stock_interval = stream.interval
        self.rule = rule
        self.busy = False
        self.window_start = time()
        self.window_count = 0
        self.switches = 0

    @classmethod
    def adopt(cls, stream: BatchedSend, rule: Rule) -> Pacer:
        pacer = getattr(stream, "_fastworker_pacer", None)
        if isinstance(pacer, Pacer):
            pacer.rule = rule
            if not pacer.busy:
                pacer._quiet(time())
            return pacer
        pacer = cls(stream, rule)
        stream._fastworker_pacer = pacer
        stream.send = pacer.send  # shadows BatchedSend.send on this instance only
        if stream.comm is None and "_background_send" not in vars(stream):
            # not started yet: start() will schedule this instead of distributed's loop
            stream._background_send = pacer._start_sender
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
        stream.interval = self.rule.interval
        deadline = stream.next_deadline
        if deadline is not None and deadline > now + self.rule.interval:
            # A stock-length window is pending: end it now, so that the buffer
            # leaves on the next loop iteration instead of at its end.
            stream.next_deadline = now
            stream.waker.set()

    def send(self, *msgs: Any) -> None:
        now = time()
        self.window_count += len(msgs)
        elapsed = now - self.window_start
        rule = self.rule
        if elapsed >= rule.window:
            busy = self.window_count >= rule.busy_rate * elapsed
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

    def _start_sender(self) -> None:
        # kept on the stream: the loop outlives a Pacer that is released (it then
        # keeps the stock interval's window) and serves the next one
        stream = self.stream
        fast = self.rule.wire and wire.eligible(stream.comm)
        if fast:
            # the comm this stream writes to is the one its peer's messages are read
            # from (Scheduler.handle_worker, Worker.handle_scheduler)
            wire.install_read(stream.comm)
        stream._fastworker_sender = asyncio.ensure_future(_send_loop(stream, fast))

    @property
    def sender(self) -> asyncio.Task | None:
        """The task of the Pacer's sending loop, if the stream was adopted unstarted."""
        return getattr(self.stream, "_fastworker_sender", None)

    def state(self) -> dict:
        return {
            "mode": "busy" if self.busy else "quiet",
            "loop": "fastworker" if self.sender is not None else "distributed",
            "interval": self.stream.interval,
            "stock_interval": self.stock_interval,
            "switches": self.switches,
            # cumulative, over the stream's life: how much the writes coalesce
            "messages": self.stream.message_count,
            "writes": self.stream.batch_count,
            "wire": "fastworker" if wire.installed(self.stream.comm) else "distributed",
        }


async def _send_loop(stream: BatchedSend, fast: bool = False) -> None:
    """Write ``stream``'s buffer to its comm for as long as the stream runs.

    What distributed's ``BatchedSend._background_send`` does, with the same
    contract towards ``send``, ``close`` and ``abort`` (``please_stop``, ``waker``,
    ``stopped``, the counters and the recent-message log), but waiting on the waker
    alone when the interval is 0. With ``fast``, a payload of small plain messages is
    written by :func:`fastworker.wire.write` (the same bytes; anything else by the
    comm's ``write``). With an interval (a busy stream, or one released
    back to stock timing) it keeps the window after each write, as distributed does:
    ``next_deadline`` is set meanwhile, so that ``send`` does not wake it, and the
    buffer waits for the end of the window.
    """
    failed = False
    try:
        while not stream.please_stop:
            if not stream.buffer:
                stream.waker.clear()
                await stream.waker.wait()
                continue
            payload, stream.buffer = stream.buffer, []
            stream.batch_count += 1
            interval = stream.interval
            if interval:
                stream.next_deadline = time() + interval
            try:
                comm = stream.comm
                # The comm written to now, not the one the loop started with: a comm
                # put in its place (distributed's own test helpers wrap it in a TCP
                # subclass that holds writes back) or a write set on the instance
                # (a test's, another extension's) is honoured: then the comm's write
                # it is.
                nbytes = (
                    wire.write(comm, payload)
                    if fast and type(comm) is _TCP and "write" not in comm.__dict__
                    else None
                )
                if nbytes is None:
                    nbytes = await comm.write(
                        payload, serializers=stream.serializers, on_error="raise"
                    )
                stream.recent_message_log.append(payload if nbytes < 1e6 else "large-message")
                stream.byte_count += nbytes
            except CommClosedError:
                logger.info("Batched Comm Closed %r", stream.comm, exc_info=True)
                failed = True
                break
            except Exception:
                # Nothing is known of how much of the payload went out: the stream
                # cannot be trusted any more (distributed aborts it too).
                logger.exception("Error in batched write")
                failed = True
                break
            finally:
                payload = None
            if interval:
                # The window: send() does not wake us while next_deadline is set;
                # close()/abort() and a Pacer turning quiet (which moves the deadline
                # to now) do.
                while not stream.please_stop:
                    remaining = (stream.next_deadline or 0) - time()
                    if remaining <= 0:
                        break
                    stream.waker.clear()
                    try:
                        await asyncio.wait_for(stream.waker.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
                stream.next_deadline = None
    finally:
        stream.stopped.set()
    if failed:
        stream.abort()

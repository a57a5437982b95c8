"""Low-latency dispatch (fastworker.SchedulerPlugin, fastworker.dispatch) on real clusters.

Behavioural tests run on each dispatch configuration (the ``dispatch`` fixture):
stock workers and a stock scheduler, stock workers with the scheduler plugin, and
fastworker workers (which pace their own stream) with the plugin. Messages are
recorded where they arrive: every entry of the receiving server's
``stream_handlers`` (looked up per message by distributed's ``handle_stream``) is
wrapped by a recorder, on the scheduler and on each worker.
"""
from __future__ import annotations

import asyncio
import logging
import operator
import os
import signal
import time
from dataclasses import dataclass
from inspect import iscoroutinefunction

import pytest

import dask
import distributed
from distributed import Client, LocalCluster, Scheduler
from distributed.batched import BatchedSend

import fastworker
from fastworker import dispatch

LOGGER = "distributed.fastworker"


def run(coro, timeout=90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass(frozen=True)
class Dispatch:
    name: str
    worker_class: type
    plugin: bool

    def __repr__(self) -> str:
        return self.name


STOCK = Dispatch("stock", distributed.Worker, False)
STOCK_PLUGIN = Dispatch("stock+plugin", distributed.Worker, True)
FAST_PLUGIN = Dispatch("fastworker+plugin", fastworker.Worker, True)


@pytest.fixture(params=[STOCK, STOCK_PLUGIN, FAST_PLUGIN], ids=repr)
def dispatch_config(request) -> Dispatch:
    return request.param


def _paced(stream) -> bool:
    return dispatch.Pacer.of(stream) is not None


# --- recording what arrives ------------------------------------------------------------


def record_stream(server, log: list, tag=None) -> None:
    """Wrap every stream handler of ``server`` to append (tag, op, message) to log."""
    for op, handler in list(server.stream_handlers.items()):
        if iscoroutinefunction(handler):

            async def wrapper(*args, __op=op, __h=handler, **kwargs):
                log.append((tag, __op, dict(kwargs)))
                return await __h(*args, **kwargs)

        else:

            def wrapper(*args, __op=op, __h=handler, **kwargs):
                log.append((tag, __op, dict(kwargs)))
                return __h(*args, **kwargs)

        server.stream_handlers[op] = wrapper


#: What the scheduler reports to a client about its keys.
CLIENT_OPS = {"key-in-memory", "lost-data", "cancelled-keys", "task-erred", "task-retried"}


def client_reports(log) -> dict:
    """Per key, what the client ends up knowing from the reports it received: the op
    of the last one, and the last type any of them carried (a report without a type
    leaves a future's type as it was). How often a key is reported, and whether the
    last report carries the type, depends on when the client's own messages reach the
    scheduler, in stock too: a key finished before the client's next ``update-graph``
    that names it is reported again then, without its type (``report_on_key``)."""
    out: dict = {}
    for _, op, items in log:
        fields = dict(items)
        if op in CLIENT_OPS and "key" in fields:
            key = fields["key"]
            kind = fields.get("type")
            if kind is None and key in out:
                kind = out[key][1]
            out[key] = (op, kind)
    return out


def record_client(client, log: list) -> None:
    """Wrap the client's report handlers likewise (distributed's Client looks them up
    per message in ``_stream_handlers``)."""
    for op, handler in list(client._stream_handlers.items()):

        def wrapper(*args, __op=op, __h=handler, **kwargs):
            log.append(("client", __op, dict(kwargs)))
            return __h(*args, **kwargs)

        client._stream_handlers[op] = wrapper


# Fields that carry times, thread ids or per-run counters, not the content compared
# ("duration": the scheduler's measured estimate that compute-task carries up to
# distributed 2025.1.0).
_VOLATILE = {
    "stimulus_id", "startstops", "thread", "run_id", "worker", "metadata", "now", "span_id",
    "duration",
}


def normalize(entry, addresses=()):
    tag, op, msg = entry
    items = []
    for k, v in sorted(msg.items()):
        if k not in _VOLATILE:
            text = repr(v)
            for i, address in enumerate(addresses):  # fresh ports in every run
                text = text.replace(address, f"<worker {i}>")
            items.append((k, text))
    return (tag, op, tuple(items))


def task_messages(log, addresses=()):
    """The task traffic of a recording, without periodic/bookkeeping ops."""
    keep = {"compute-task", "free-keys", "task-finished", "task-erred", "release-worker-data",
            "add-keys", "remove-replicas", "acquire-replicas", "cancel-compute", "steal-request",
            "steal-response", "reschedule", "long-running"}
    return [normalize(e, addresses) for e in log if e[1] in keep]


async def record_run(config: Dispatch, graph, *, nthreads=1, dispatch_on=True, plugin_first=False):
    """Run ``graph(client)`` on a fresh Scheduler + one worker (TCP, this process);
    return what the scheduler received, what the worker received, and the result.
    With ``plugin_first`` the plugin is on the scheduler before the worker joins."""
    received_by_scheduler: list = []
    received_by_worker: list = []
    received_by_client: list = []
    with dask.config.set({"fastworker.dispatch.enabled": dispatch_on}):
        async with Scheduler(dashboard_address=":0", host="127.0.0.1") as s:
            record_stream(s, received_by_scheduler)
            if config.plugin and plugin_first:
                plugin = fastworker.SchedulerPlugin()
                await plugin.start(s)
                s.add_plugin(plugin)
            async with config.worker_class(s.address, nthreads=nthreads) as w, Client(
                s.address, asynchronous=True
            ) as c:
                record_stream(w, received_by_worker)
                record_client(c, received_by_client)
                if config.plugin and not plugin_first:
                    await c.register_plugin(fastworker.SchedulerPlugin())
                if config.plugin:
                    pacer = dispatch.Pacer.of(s.stream_comms[w.address])
                    assert pacer is not None
                    assert (pacer.sender is not None) is plugin_first
                else:
                    assert not _paced(s.stream_comms[w.address])
                result = await graph(c)
                while s.tasks or w.state.tasks:
                    await asyncio.sleep(0.01)
                addresses = [w.address]
    return (
        task_messages(received_by_scheduler, addresses),
        task_messages(received_by_worker, addresses),
        result,
        client_reports([normalize(e, addresses) for e in received_by_client]),
    )


async def _map_then_tree(c):
    futures = c.map(operator.mul, range(60), range(60))
    # The scheduler starts a new priority generation when a graph comes more than
    # fifo_timeout after the last one: timing, not content. One generation for both.
    total = c.submit(sum, futures, key="total", fifo_timeout="1h")
    result = await total
    del futures, total
    return result


@pytest.mark.parametrize("plugin_first", [False, True], ids=["plugin-on-running", "plugin-first"])
@pytest.mark.parametrize("workers", ["stock", "fastworker"])
def test_same_messages_in_the_same_order_as_stock(workers, plugin_first):
    """Same graph, same worker class: the scheduler plugin (on a running stream, or
    with its own sending loop on a worker that joins after it) and fastworker's own
    pacing on the worker side change neither what crosses the streams nor its order."""
    worker_class = STOCK.worker_class if workers == "stock" else FAST_PLUGIN.worker_class
    stock = Dispatch("stock", worker_class, False)
    paced = Dispatch("paced", worker_class, True)
    s_sched, s_worker, s_result, s_client = run(
        record_run(stock, _map_then_tree, dispatch_on=False)
    )
    p_sched, p_worker, p_result, p_client = run(
        record_run(paced, _map_then_tree, dispatch_on=True, plugin_first=plugin_first)
    )
    assert s_result == p_result == sum(i * i for i in range(60))
    assert len([m for m in s_worker if m[1] == "compute-task"]) == 61
    assert len([m for m in s_sched if m[1] == "task-finished"]) == 61
    assert len(s_client) == 61 and {op for op, _ in s_client.values()} == {"key-in-memory"}
    assert p_worker == s_worker
    assert p_sched == s_sched
    assert p_client == s_client


def test_recording_tells_a_reordered_stream_apart():
    """The comparison above can fail: a stream that swaps two messages is caught."""

    class Swapping(BatchedSend):
        """Delivers the first compute-task one message late."""

        _held = None
        _swapped = False

        def send(self, *msgs):
            msgs = list(msgs)
            if not self._swapped:
                if self._held is not None:
                    msgs.insert(1, self._held)
                    self._held, self._swapped = None, True
                else:
                    for i, msg in enumerate(msgs):
                        if msg.get("op") == "compute-task":
                            if i + 1 < len(msgs):
                                msgs[i], msgs[i + 1] = msgs[i + 1], msgs[i]
                                self._swapped = True
                            else:
                                self._held = msgs.pop(i)
                            break
            super().send(*msgs)

    class SwapPlugin(distributed.diagnostics.plugin.SchedulerPlugin):
        name = "swap"

        def add_worker(self, scheduler, worker):
            scheduler.stream_comms[worker].__class__ = Swapping

    async def swapped(config, graph):
        received: list = []
        async with Scheduler(dashboard_address=":0", host="127.0.0.1") as s:
            s.add_plugin(SwapPlugin())
            async with config.worker_class(s.address, nthreads=1) as w, Client(
                s.address, asynchronous=True
            ) as c:
                record_stream(w, received)
                await graph(c)
                addresses = [w.address]
        return task_messages(received, addresses)

    _, s_worker, _, _ = run(record_run(STOCK, _map_then_tree, dispatch_on=False))
    assert run(swapped(STOCK, _map_then_tree)) != s_worker


# --- the plugin on a running cluster ------------------------------------------------------


def test_plugin_paces_present_and_joining_workers_and_status_says_so(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        async with Scheduler(dashboard_address=":0") as s, distributed.Worker(
            s.address, nthreads=1
        ) as a, Client(s.address, asynchronous=True) as c:
            before = await c.run_on_scheduler(fastworker.status)
            assert before["scheduler_plugin"] is False
            assert "not registered" in before["reason"]
            assert not _paced(s.stream_comms[a.address])

            await c.register_plugin(fastworker.SchedulerPlugin())
            stream = s.stream_comms[a.address]
            assert _paced(stream) and stream.interval == 0
            assert type(stream) is BatchedSend  # the instance is paced, not the class
            assert "send" in vars(stream)

            async with distributed.Worker(s.address, nthreads=1) as b:
                assert _paced(s.stream_comms[b.address])
                status = await c.run_on_scheduler(fastworker.status)
                assert status["scheduler_plugin"] is True and status["reason"] is None
                assert status["streams"] == status["paced_streams"] == 2
                assert status["modes"] == {"quiet": 2}
                # a, running when the plugin came, keeps distributed's sending loop;
                # b, adopted before its stream started, runs the Pacer's
                assert status["loops"] == {"distributed": 1, "fastworker": 1}
                assert dispatch.Pacer.of(s.stream_comms[b.address]).sender is not None
                # the comm of a stream adopted while running keeps its own framing
                assert status["wires"] == {"distributed": 1, "fastworker": 1}
                assert status["rule"] == {
                    "busy_rate": 5000.0, "window": 0.05, "interval": 0.0, "wire": True,
                }
                futures = c.map(operator.add, range(100), range(100))
                assert await c.gather(futures) == [2 * i for i in range(100)]
                # the client present when the plugin came, and one that connects
                # after it: their streams' writes and reads go through the wire, on
                # distributed's own sending loop and at its interval
                async with Client(s.address, asynchronous=True) as c2:
                    await asyncio.sleep(0)  # (the hook's callback: one loop iteration)
                    status = await c2.run_on_scheduler(fastworker.status)
                    assert status["client_wires"] == {"fastworker": 2}
                    for bcomm in s.client_comms.values():
                        assert bcomm.interval == 0.002 and not _paced(bcomm)
                        assert "write" in vars(bcomm.comm) and "read" in vars(bcomm.comm)
                    assert await c2.submit(operator.mul, 6, 7) == 42
                    with pytest.raises(ZeroDivisionError):  # a report the wire leaves
                        await c2.submit(operator.truediv, 1, 0)  # to the comm
                # stock workers keep their own stream stock
                worker_status = (await c.run(fastworker.status))[b.address]
                assert worker_status["dispatch"] is None
                assert b.batched_stream.interval == 0.002

            # pause: every stream is stock again; resume paces them again
            plugin = s.plugins["fastworker-dispatch"]
            plugin.pause()
            assert not _paced(stream) and stream.interval == 0.005
            assert "send" not in vars(stream)
            (bcomm,) = s.client_comms.values()
            assert "write" not in vars(bcomm.comm) and "read" not in vars(bcomm.comm)
            assert plugin.state()["client_wires"] == {"distributed": 1}
            assert await c.submit(operator.add, 2, 3) == 5
            plugin.resume()
            assert _paced(stream)
            assert plugin.state()["client_wires"] == {"fastworker": 1}
            assert await c.submit(operator.add, 3, 4) == 7

    run(main())
    rules = [m for m in caplog.messages if "low-latency dispatch on the scheduler streams" in m]
    assert len(rules) <= 1  # once per process (an earlier test may have logged it)


def test_fastworker_worker_paces_its_stream_and_reports_it():
    async def main():
        async with Scheduler(dashboard_address=":0") as s, fastworker.Worker(
            s.address, nthreads=1
        ) as w, Client(s.address, asynchronous=True) as c:
            status = (await c.run(fastworker.status))[w.address]
            assert status["dispatch"]["mode"] == "quiet"
            assert status["dispatch"]["stock_interval"] == 0.002
            assert w.batched_stream.interval == 0
            assert await c.submit(operator.add, 1, 2) == 3
        with dask.config.set({"fastworker.dispatch.enabled": False}):
            async with Scheduler(dashboard_address=":0") as s, fastworker.Worker(
                s.address, nthreads=1
            ) as w:
                assert w.batched_stream.interval == 0.002 and not _paced(w.batched_stream)

    run(main())


@pytest.mark.parametrize(
    "setting, reason",
    [
        ({"fastworker.dispatch.enabled": False}, "fastworker.dispatch.enabled is False"),
        ({"fastworker.enabled": False}, "fastworker.enabled is False"),
    ],
)
def test_off_switches_keep_the_scheduler_stock(setting, reason, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def main():
        async with Scheduler(dashboard_address=":0") as s, distributed.Worker(
            s.address, nthreads=1
        ) as a, Client(s.address, asynchronous=True) as c:
            await c.register_plugin(fastworker.SchedulerPlugin())
            assert not _paced(s.stream_comms[a.address])
            status = await c.run_on_scheduler(fastworker.status)
            assert status["scheduler_plugin"] is False and reason in status["reason"]
            assert status["client_wires"] == {"distributed": 1}
            assert await c.submit(operator.add, 1, 2) == 3

    with dask.config.set(setting):
        run(main())
    (info,) = [r for r in caplog.records if "keeps distributed's stock dispatch" in r.getMessage()]
    assert info.levelno == logging.INFO and reason in info.getMessage()


def test_unsupported_release_keeps_the_scheduler_stock_with_a_warning(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setattr(fastworker.compat, "distributed_version", lambda: "2099.1.0")

    async def main():
        async with Scheduler(dashboard_address=":0", preload=["fastworker"]) as s:
            async with distributed.Worker(s.address, nthreads=1) as a:
                assert not _paced(s.stream_comms[a.address])
                status = fastworker.status(dask_scheduler=s)
                assert status["scheduler_plugin"] is False
                assert "2099.1.0 is installed" in status["reason"]

    run(main())
    (warning,) = [r for r in caplog.records if "keeps distributed's stock dispatch" in r.getMessage()]
    assert warning.levelno == logging.WARNING


# --- the rule -------------------------------------------------------------------------------


class _FakeComm:
    """Records each write (appended when the write starts); a write takes ``delay``."""

    def __init__(self):
        self.writes: list = []
        self.delay = 0.0
        self._closed = False

    def closed(self):
        return self._closed

    async def write(self, msgs, serializers=None, on_error=None):
        self.writes.append(list(msgs))
        await asyncio.sleep(self.delay)
        return 10

    async def close(self):
        self._closed = True

    def abort(self):
        self._closed = True

    def flat(self):
        return [m for w in self.writes for m in w]


async def _until(condition, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("adopted", ["running", "unstarted"])
def test_pacer_sends_an_idle_stream_at_once_and_batches_a_busy_one(adopted):
    """On a running stream (distributed's sending loop at interval 0) and on one
    adopted before it starts (the Pacer's sending loop), the same timing."""

    async def main():
        # a long stock window, so that stock's wait and the paced stream's are far apart
        stream = BatchedSend(interval="300ms")
        comm = _FakeComm()
        rule = dispatch.Rule(busy_rate=2000, window=0.02)
        if adopted == "running":
            stream.start(comm)
            pacer = dispatch.Pacer.adopt(stream, rule)
        else:
            pacer = dispatch.Pacer.adopt(stream, rule)
            stream.start(comm)
            await asyncio.sleep(0)
        assert dispatch.Pacer.adopt(stream, pacer.rule) is pacer  # idempotent
        assert stream.interval == 0
        assert (pacer.sender is not None) is (adopted == "unstarted")

        # quiet: each message leaves within a few loop iterations, not 300 ms later
        start = time.perf_counter()
        for i in range(5):
            stream.send({"i": i})
            await _until(lambda: len(comm.writes) > i)
            await asyncio.sleep(0.001)
        assert time.perf_counter() - start < 0.25  # stock: 4 x 300 ms
        assert comm.writes == [[{"i": i}] for i in range(5)]
        assert not pacer.busy

        # what is sent while a write is in flight leaves together right after it
        comm.writes.clear()
        comm.delay = 0.05
        stream.send({"j": 0})
        await _until(lambda: comm.writes)  # the write has started and takes 50 ms
        for j in range(1, 10):
            stream.send({"j": j})
        await _until(lambda: len(comm.flat()) == 10)
        assert comm.writes == [[{"j": 0}], [{"j": j} for j in range(1, 10)]]
        await asyncio.sleep(0.06)

        # busy: above busy-rate over a window, the stream batches at its stock interval
        comm.writes.clear()
        comm.delay = 0.0
        t0 = time.perf_counter()
        n = 0
        writes_when_busy = None
        # Send for 100 ms of uninterrupted busy mode (a pause of the machine long
        # enough to make a window look quiet starts the 100 ms over; 5 s at most).
        while time.perf_counter() - t0 < 5:
            stream.send({"n": n})
            n += 1
            if pacer.busy and writes_when_busy is None:
                writes_when_busy, n_when_busy = len(comm.writes), n
                busy_since = time.perf_counter()
            elif not pacer.busy:
                writes_when_busy = None
            if writes_when_busy is not None and time.perf_counter() - busy_since >= 0.1:
                break
            await asyncio.sleep(0)
        assert pacer.busy and stream.interval == 0.3
        assert pacer.state()["mode"] == "busy"
        await _until(lambda: len(comm.flat()) == n)
        assert comm.flat() == [{"n": i} for i in range(n)]
        # from the switch on, at most one write per 300 ms window (and the one in
        # flight at the switch)
        assert n - n_when_busy > 100
        assert len(comm.writes) - writes_when_busy <= 3

        # the stream falls quiet again: back to interval 0 once a window has seen
        # few messages (the first window after the burst still counts its tail)
        comm.writes.clear()
        await asyncio.sleep(0.03)
        stream.send({"late": 1})
        await asyncio.sleep(0.03)
        stream.send({"late": 2})
        assert not pacer.busy and stream.interval == 0
        await _until(lambda: comm.flat() == [{"late": 1}, {"late": 2}], timeout=0.2)

        pacer.release()
        assert stream.interval == 0.3 and "send" not in vars(stream)
        assert dispatch.Pacer.of(stream) is None
        # released, the stream keeps stock timing; adopted again, quiet timing,
        # through the same sending loop if it had the Pacer's
        comm.writes.clear()
        stream.send({"stock": 1})
        stream.send({"stock": 2})
        await _until(lambda: comm.flat() == [{"stock": 1}, {"stock": 2}], timeout=1.0)
        again = dispatch.Pacer.adopt(stream, rule)
        assert again is not pacer and stream.interval == 0
        assert (again.sender is not None) is (adopted == "unstarted")
        again.release()
        await stream.close()

    run(main())


def test_pacer_loop_aborts_the_stream_when_a_write_fails(caplog):
    """As distributed's loop does: a failed write aborts the stream (nothing is
    known of what went out), later sends raise CommClosedError, close returns."""
    from distributed.core import CommClosedError

    class Failing(_FakeComm):
        async def write(self, msgs, serializers=None, on_error=None):
            self.writes.append(list(msgs))
            raise CommClosedError("gone")

    async def main():
        stream = BatchedSend(interval="5ms")
        comm = Failing()
        pacer = dispatch.Pacer.adopt(stream, dispatch.Rule())
        stream.start(comm)
        stream.send({"a": 1})
        await asyncio.wait_for(stream.stopped.wait(), 2)
        assert pacer.sender.done() and comm.closed()
        with pytest.raises(CommClosedError):
            stream.send({"b": 2})
        await asyncio.wait_for(stream.close(), 2)
        assert comm.writes == [[{"a": 1}]]

    caplog.set_level(logging.INFO, logger="distributed.fastworker")
    run(main())
    assert any("Batched Comm Closed" in m for m in caplog.messages)


def test_pacer_cuts_short_a_pending_stock_window():
    async def main():
        stream = BatchedSend(interval="200ms")
        comm = _FakeComm()
        stream.start(comm)
        stream.send({"first": 1})
        while not comm.writes:
            await asyncio.sleep(0)
        stream.send({"second": 2})  # waits for the stock window, about 200 ms
        await asyncio.sleep(0.01)
        assert len(comm.writes) == 1
        dispatch.Pacer.adopt(stream, dispatch.Rule())
        await asyncio.sleep(0.02)
        assert comm.writes == [[{"first": 1}], [{"second": 2}]]
        await stream.close()

    run(main())


# --- clusters under change ------------------------------------------------------------------


@pytest.mark.parametrize("plugin_first", [False, True], ids=["worker-first", "plugin-first"])
def test_scheduler_close_with_messages_buffered(dispatch_config, plugin_first):
    """Messages sitting in the buffer when the scheduler closes still reach the
    worker, in order, before the close. The plugin on a running stream keeps
    distributed's sending loop; on a worker that joins after it, the Pacer's."""
    if plugin_first and not dispatch_config.plugin:
        pytest.skip("no plugin")

    async def main():
        received: list = []
        s = Scheduler(dashboard_address=":0", host="127.0.0.1")
        await s
        if dispatch_config.plugin and plugin_first:
            plugin = fastworker.SchedulerPlugin()
            await plugin.start(s)
            s.add_plugin(plugin)
        w = await dispatch_config.worker_class(s.address, nthreads=1)
        try:
            record_stream(w, received)
            if dispatch_config.plugin and not plugin_first:
                plugin = fastworker.SchedulerPlugin()
                await plugin.start(s)
                s.add_plugin(plugin)
            stream = s.stream_comms[w.address]
            assert _paced(stream) is dispatch_config.plugin
            if dispatch_config.plugin:
                loop = dispatch.Pacer.of(stream).state()["loop"]
                assert loop == ("fastworker" if plugin_first else "distributed")
            # each write takes 200 ms: the first message's write is in flight while
            # the others and the scheduler's own close messages pile up
            real_write = stream.comm.write

            async def slow_write(*args, **kwargs):
                await asyncio.sleep(0.2)
                return await real_write(*args, **kwargs)

            stream.comm.write = slow_write
            for i in range(4):
                s.stream_comms[w.address].send(
                    {"op": "free-keys", "keys": [], "stimulus_id": f"buffered-{i}"}
                )
                await asyncio.sleep(0)
            await asyncio.sleep(0.05)
            assert stream.buffer  # some are still buffered
            start = time.perf_counter()
            await asyncio.wait_for(s.close(), 10)
            assert time.perf_counter() - start < 5
            deadline = time.monotonic() + 10
            while w.status.name not in ("closed", "closing", "closing_gracefully"):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
        finally:
            await w.close()
            await s.close()
        ops = [(op, m.get("stimulus_id")) for _, op, m in received]
        assert ops[:5] == [("free-keys", f"buffered-{i}") for i in range(4)] + [("close", None)]

    run(main())


def _sleep_then(x, delay=0.005):
    time.sleep(delay)
    return x


def test_stealing_moves_work_and_results_are_right(dispatch_config):
    async def main():
        async with Scheduler(dashboard_address=":0") as s, dispatch_config.worker_class(
            s.address, nthreads=1
        ) as a, dispatch_config.worker_class(s.address, nthreads=1) as b, Client(
            s.address, asynchronous=True
        ) as c:
            if dispatch_config.plugin:
                await c.register_plugin(fastworker.SchedulerPlugin())
            assert all(_paced(x) is dispatch_config.plugin for x in s.stream_comms.values())
            futures = c.map(
                _sleep_then, range(60), delay=0.05, workers=[a.address],
                allow_other_workers=True, pure=False,
            )
            assert await c.gather(futures) == list(range(60))
            # b only gets tasks restricted to a by stealing them
            assert b.state.executed_count > 0, "nothing was stolen from the loaded worker"
            assert a.state.executed_count + b.state.executed_count >= 60

    with dask.config.set({"distributed.scheduler.work-stealing-interval": "20ms"}):
        run(main())


_attempts: dict = {}


def _flaky(key):
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] < 3:
        raise ValueError(f"attempt {_attempts[key]}")
    return key


def test_retries_rerun_failed_tasks(dispatch_config):
    async def main():
        _attempts.clear()
        async with Scheduler(dashboard_address=":0") as s, dispatch_config.worker_class(
            s.address, nthreads=2
        ) as w, Client(s.address, asynchronous=True) as c:
            if dispatch_config.plugin:
                await c.register_plugin(fastworker.SchedulerPlugin())
            assert _paced(s.stream_comms[w.address]) is dispatch_config.plugin
            futures = c.map(_flaky, range(20), retries=2, pure=False)
            assert await c.gather(futures) == list(range(20))
            assert _attempts == {k: 3 for k in range(20)}
            # and without enough retries the error reaches the client
            _attempts.clear()
            with pytest.raises(ValueError, match="attempt 2"):
                await c.submit(_flaky, "x", retries=1, pure=False)

    run(main())


async def _remove(dask_scheduler, address):
    await dask_scheduler.remove_worker(address, stimulus_id="test-remove", close=True)


@pytest.mark.parametrize("plugin", ["registered", "preloaded"])
@pytest.mark.parametrize("how", ["killed", "removed"])
def test_worker_removal_and_reconnect_mid_stream(how, plugin):
    """Worker processes (Nannies) with the plugin: one worker leaves while tasks
    stream to it (its process killed, and its Nanny starts a new one; or removed by
    the scheduler, and the cluster scaled back up), the new worker joins paced, and
    nothing is lost. Registered on the running cluster, the plugin paces streams that
    keep distributed's sending loop and comm; preloaded, every stream has the Pacer's
    loop and fastworker.wire's writes and reads on both ends."""
    preload = {"preload": ["fastworker"]} if plugin == "preloaded" else {}
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        worker_class=fastworker.Nanny, silence_logs=logging.ERROR, scheduler_kwargs=preload,
    ) as cluster, Client(cluster) as c:
        if plugin == "registered":
            c.register_plugin(fastworker.SchedulerPlugin())
        else:
            assert c.run_on_scheduler(fastworker.status)["wires"] == {"fastworker": 2}
        first = sorted(c.scheduler_info()["workers"])
        victim = first[0]
        futures = c.map(_sleep_then, range(400), delay=0.01, pure=False)
        while sum(f.done() for f in futures) < 50:
            time.sleep(0.01)
        if how == "killed":
            (pid,) = c.run(os.getpid, workers=[victim]).values()
            os.kill(pid, signal.SIGKILL)
        else:
            c.run_on_scheduler(_remove, address=victim)
        assert c.gather(futures) == list(range(400))
        if how == "removed":
            cluster.scale(3)  # the removed worker's spec entry stays, closed
        deadline = time.monotonic() + 60
        while True:
            workers = sorted(c.scheduler_info()["workers"])
            if len(workers) == 2 and victim not in workers:
                break
            assert time.monotonic() < deadline, workers
            time.sleep(0.1)
        status = c.run_on_scheduler(fastworker.status)
        assert status["scheduler_plugin"] is True
        assert status["streams"] == status["paced_streams"] == 2
        if plugin == "preloaded":
            assert status["wires"] == {"fastworker": 2}
        assert sum(c.gather(c.map(operator.neg, range(100)))) == -sum(range(100))


def test_client_gone_with_messages_buffered():
    """A client whose connection dies while the scheduler streams tasks for it to
    the workers (and reports to it are buffered): its tasks are released on every
    worker, the cluster keeps serving another client, and the paced streams and
    their wire carry on."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        worker_class=fastworker.Nanny, silence_logs=logging.ERROR,
        scheduler_kwargs={"preload": ["fastworker"]},
    ) as cluster, Client(cluster) as other:
        assert other.run_on_scheduler(fastworker.status)["wires"] == {"fastworker": 2}
        doomed = Client(cluster)
        futures = doomed.map(_sleep_then, range(2_000), delay=0.002, pure=False)
        while sum(f.done() for f in futures) < 50:
            time.sleep(0.01)
        keys = {f.key for f in futures}
        # the connection dies under the client: no goodbye, reports still buffered
        doomed.loop.add_callback(doomed.scheduler_comm.comm.abort)
        deadline = time.monotonic() + 60
        while True:
            held = other.run(_held_keys, keys=keys)
            on_scheduler = other.run_on_scheduler(_known_keys, keys=keys)
            if not on_scheduler and not any(held.values()):
                break
            assert time.monotonic() < deadline, (on_scheduler, held)
            time.sleep(0.1)
        status = other.run_on_scheduler(fastworker.status)
        assert status["streams"] == status["paced_streams"] == 2
        assert status["wires"] == {"fastworker": 2}
        assert other.gather(other.map(operator.neg, range(300))) == [-i for i in range(300)]
        doomed.close(timeout=5)


def _held_keys(dask_worker, keys):
    return len(keys & set(dask_worker.state.tasks))


def _known_keys(dask_scheduler, keys):
    return len(keys & set(dask_scheduler.tasks))


def test_a_comm_put_in_place_of_the_streams_holds_its_writes(dispatch_config):
    """distributed's own tests hold a batched stream back by putting a comm of their
    own in place of the stream's (``utils_test.freeze_batched_send``: a TCP subclass
    whose ``write`` waits for an event). What the stream sends meanwhile waits for it
    and arrives once it is released, as in stock: on the scheduler's stream to a
    worker and on the worker's own stream, both run by the Pacer's loop here (the
    plugin is on the scheduler before the worker joins)."""
    from distributed.utils_test import freeze_batched_send

    async def main():
        s = await Scheduler(dashboard_address=":0", host="127.0.0.1")
        try:
            if dispatch_config.plugin:
                plugin = fastworker.SchedulerPlugin()
                await plugin.start(s)
                s.add_plugin(plugin)
            async with dispatch_config.worker_class(s.address, nthreads=1) as w, Client(
                s.address, asynchronous=True
            ) as c:
                to_worker = s.stream_comms[w.address]
                if dispatch_config.plugin:
                    assert dispatch.Pacer.of(to_worker).state()["loop"] == "fastworker"
                assert await c.submit(operator.add, 1, 1, key="warm") == 2

                # scheduler -> worker: compute-task is held
                with freeze_batched_send(to_worker) as locked:
                    held = c.submit(operator.add, 1, 2, key="held")
                    _, msgs = await asyncio.wait_for(locked.write_queue.get(), 10)
                    assert any(m.get("key") == "held" for m in msgs)
                    await asyncio.sleep(0.3)
                    assert "held" not in w.state.tasks
                assert await asyncio.wait_for(held, 10) == 3

                # worker -> scheduler: task-finished is held
                with freeze_batched_send(w.batched_stream) as locked:
                    held2 = c.submit(operator.add, 2, 2, key="held-2")
                    deadline = time.monotonic() + 10
                    while "held-2" not in w.data:
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.3)
                    assert s.tasks["held-2"].state == "processing"
                    assert not locked.write_queue.empty()
                assert await asyncio.wait_for(held2, 10) == 4
        finally:
            await s.close()

    run(main())


def test_wire_off_keeps_the_client_streams_stock():
    """``fastworker.dispatch.wire: false``: the workers' streams are paced, the
    clients' keep the comm's own write and read, present or joining."""

    async def main():
        async with Scheduler(dashboard_address=":0") as s, distributed.Worker(
            s.address, nthreads=1
        ) as a, Client(s.address, asynchronous=True) as c:
            await c.register_plugin(fastworker.SchedulerPlugin())
            assert _paced(s.stream_comms[a.address])
            async with Client(s.address, asynchronous=True) as c2:
                await asyncio.sleep(0)
                status = await c2.run_on_scheduler(fastworker.status)
                assert status["scheduler_plugin"] is True
                assert status["client_wires"] == {"distributed": 2}
                for bcomm in s.client_comms.values():
                    assert "write" not in vars(bcomm.comm) and "read" not in vars(bcomm.comm)
                assert await c2.submit(operator.add, 1, 2) == 3

    with dask.config.set({"fastworker.dispatch.wire": False}):
        run(main())

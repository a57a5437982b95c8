"""fastworker.wire against distributed's own TCP comm, on real TCP connections.

Every payload is written once through :func:`fastworker.wire.write` and once through
the comm's own ``write``; the raw bytes that arrive are compared byte for byte, and
what :func:`fastworker.wire.read` decodes is compared with what the comm's ``read``
decodes of the same bytes. Payloads the wire must leave to the comm are checked to
write nothing. Faults (peer gone, connection cut mid-message, a release that frames
differently) end as distributed's comm ends them.
"""
from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
import threading

import numpy as np
import pytest

from distributed.comm import connect, listen
from distributed.comm.core import CommClosedError
from distributed.comm.tcp import TCP
from distributed.core import Status  # an enum the decoder may import
from distributed.protocol.serialize import Pickled, Serialize, ToPickle

from fastworker import dispatch, wire

LOGGER = "distributed.fastworker"
STOCK_READ = TCP.__dict__["read"]


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _task(x, y=1):
    return x + y


PLAIN = {
    "free-keys": [{"op": "free-keys", "keys": ["a", ("b", 0), ("c", 1, 2)], "stimulus_id": "s"}],
    "task-finished": [
        {"op": "task-finished", "key": "inc-0", "nbytes": 28, "type": pickle.dumps(int),
         "typename": "int", "metadata": {}, "thread": 139, "startstops": (
             {"action": "compute", "start": 1.25, "stop": 1.5},), "stimulus_id": "s-1"},
        {"op": "task-finished", "key": ("x", 3), "nbytes": 0, "metadata": {"m": [1.5, None]}},
    ],
    "scalars": [{"op": "x", "i": 2**63 - 1, "n": -(2**63), "f": float("inf"), "t": True,
                 "none": None, "b": b"\x00\xff", "u": "ünïcode ✓", "e": "", "l": [], "d": {}}],
    "int keys": [{"op": "x", "nbytes": {1: 2, "a": 3}, "who_has": {"k": ["tcp://a:1"]}}],
    "set and enum": [{"op": "x", "keys": {"a", "b"}, "c": Status.running}],
    "a dunder that is no mark": [{"op": "x", "key": "a__b", "__c__": 1}],
    "many": [{"op": "free-keys", "keys": [f"k-{i}" for i in range(50)], "stimulus_id": str(i)}
             for i in range(200)],
    "close-stream": [{"op": "close-stream"}],
    "not a list": {"op": "x", "k": 1},
}
PICKLED = {
    "compute-task": [{"op": "compute-task", "key": "f-1", "priority": (0, 1, -2),
                      "run_spec": ToPickle((_task, 1)), "who_has": {}, "nbytes": {},
                      "resource_restrictions": {}, "actor": False, "annotations": {}}],
    "two ToPickle": [{"op": "x", "a": ToPickle([1, 2]), "b": ToPickle({"c": (3,)})}],
    "out-of-band buffers": [{"op": "x", "data": ToPickle(np.arange(50_000)),
                             "small": ToPickle(np.ones(3))}],
    "compressible buffer": [{"op": "x", "data": ToPickle(np.zeros(200_000))}],
}
UNUSUAL = {
    "Serialize": [{"op": "x", "data": Serialize([1, 2, 3])}],
    "Pickled": [{"op": "x", "data": Pickled({"pickled-obj": pickle.dumps(1)}, [])}],
    "not msgpack": [{"op": "x", "data": object()}],
    "a ToPickle subclass": [{"op": "x", "data": type("Sub", (ToPickle,), {})(1)}],
    # distributed's pickle.dumps goes on to cloudpickle for these, or fails and logs
    "a lambda": [{"op": "x", "run_spec": ToPickle(lambda: 1)}],
    "unpicklable": [{"op": "x", "run_spec": ToPickle(threading.Lock())}],
}


async def _listener():
    """A TCP listener that queues each comm it accepts and keeps it until ``done``."""
    accepted: asyncio.Queue = asyncio.Queue()
    done = asyncio.Event()

    async def handle(comm):
        await accepted.put(comm)
        await done.wait()

    listener = listen("tcp://127.0.0.1:0", handle)
    await listener.start()
    return listener, done, accepted


async def _pairs(n):
    """n connected (sending client comm, receiving server comm) TCP pairs."""
    listener, done, accepted = await _listener()
    pairs = []
    for _ in range(n):
        client = await connect(listener.contact_address)
        pairs.append((client, await accepted.get()))
    return listener, done, pairs


async def _close(listener, done, pairs):
    done.set()
    for a, b in pairs:
        await a.close()
        await b.close()
    listener.stop()


async def _raw(comm, nbytes):
    return await comm.stream.read_bytes(nbytes)


async def _write_both(payload, compression=None):
    """(bytes written by the wire, bytes written by the comm, wire's count, comm's)."""
    listener, done, pairs = await _pairs(2)
    try:
        (fast, fast_peer), (stock, stock_peer) = pairs
        assert type(fast) is TCP and wire.eligible(fast)
        if compression:
            # what two hosts that agree on it would have settled on in the handshake
            # (peers on one host never compress)
            fast.handshake_options["compression"] = compression
            stock.handshake_options["compression"] = compression
        ours = wire.write(fast, payload)
        theirs = await stock.write(payload, on_error="raise")
        assert ours is not None, "the wire left a payload it serves to the comm"
        return await _raw(fast_peer, ours), await _raw(stock_peer, theirs), ours, theirs
    finally:
        await _close(listener, done, pairs)


@pytest.mark.parametrize("name", list(PLAIN) + list(PICKLED))
def test_write_sends_the_comms_bytes(name):
    payload = {**PLAIN, **PICKLED}[name]
    ours, theirs, n_ours, n_theirs = run(_write_both(payload))
    assert n_ours == n_theirs == len(theirs)
    assert ours == theirs


def test_write_sends_the_comms_bytes_with_compression():
    """The comms agreed on zlib in their handshake: buffers are compressed alike."""
    ours, theirs, _, _ = run(_write_both(PICKLED["compressible buffer"], "zlib"))
    assert ours == theirs
    assert len(ours) < 200_000 * 8 // 10  # it was compressed


def test_the_byte_comparison_can_fail():
    """A payload that differs in one message gives other bytes: the comparison above
    would catch a wire that dropped, reordered or re-encoded anything."""

    async def main():
        listener, done, pairs = await _pairs(2)
        try:
            (a, pa), (b, pb) = pairs
            payload = PLAIN["task-finished"]
            n1 = wire.write(a, payload)
            n2 = await b.write(payload[::-1], on_error="raise")
            return await _raw(pa, n1), await _raw(pb, n2)
        finally:
            await _close(listener, done, pairs)

    ours, theirs = run(main())
    assert len(ours) == len(theirs) and ours != theirs


@pytest.mark.parametrize("name", list(UNUSUAL) + ["large"])
def test_unusual_payloads_are_left_to_the_comm(name, caplog):
    """Nothing is written and nothing logged: the caller sends these through the
    comm's own write, which logs what it logs once."""
    payload = UNUSUAL.get(name) or [{"op": "x", "data": b"x" * (wire.LIMIT + 1)}]

    async def main():
        listener, done, pairs = await _pairs(1)
        try:
            ((comm, _),) = pairs
            before = comm.stream._total_write_index
            with caplog.at_level(logging.DEBUG):
                assert wire.write(comm, payload) is None
            assert not caplog.records
            assert comm.stream._total_write_index == before
            # and the packer is left clean for the next payload
            return wire.write(comm, PLAIN["free-keys"])
        finally:
            await _close(listener, done, pairs)

    assert run(main()) > 0


def _same(a, b):
    """Equal, with the same container types all the way down."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and (a == b).all() and a.flags.writeable == b.flags.writeable
    else:
        assert a == b


@pytest.mark.parametrize("name", list(PLAIN) + list(PICKLED) + list(UNUSUAL)[:1])
def test_read_decodes_what_the_comm_decodes(name):
    payload = {**PLAIN, **PICKLED, **UNUSUAL}[name]

    async def main():
        listener, done, pairs = await _pairs(2)
        try:
            (a, pa), (b, pb) = pairs
            await a.write(payload, on_error="raise")
            await b.write(payload, on_error="raise")
            return await wire.read(pa), await pb.read()
        finally:
            await _close(listener, done, pairs)

    ours, theirs = run(main())
    _same(ours, theirs)
    if name in PICKLED:
        assert "__Pickled__" not in repr(ours)


def test_install_read_serves_the_comms_read_on_that_instance_only():
    async def main():
        listener, done, pairs = await _pairs(2)
        try:
            (a, pa), (b, pb) = pairs
            assert wire.install_read(pa) and wire.installed(pa)
            assert wire.install_read(pa)  # idempotent
            assert not wire.installed(pb) and "read" not in vars(pb)
            assert TCP.__dict__["read"] is STOCK_READ  # the class is untouched
            for payload in (PLAIN["free-keys"], PICKLED["compute-task"]):
                await a.write(payload, on_error="raise")
                await b.write(payload, on_error="raise")
                _same(await pa.read(), await pb.read())
        finally:
            await _close(listener, done, pairs)

    run(main())


def test_writing_to_a_closed_peer_ends_as_the_comms_write_does():
    """The peer goes away: both the wire and the comm raise CommClosedError within a
    few writes and leave the comm closed."""

    async def main():
        listener, done, pairs = await _pairs(2)
        (a, pa), (b, pb) = pairs
        pa.abort()
        pb.abort()
        outcomes = []
        for comm, write in ((a, lambda p: wire.write(a, p)), (b, None)):
            for _ in range(200):
                try:
                    if write is None:
                        await comm.write(PLAIN["free-keys"], on_error="raise")
                    else:
                        write(PLAIN["free-keys"])
                except CommClosedError:
                    outcomes.append(comm.closed())
                    break
                await asyncio.sleep(0.01)
            else:
                outcomes.append("never raised")
        await _close(listener, done, pairs)
        return outcomes

    assert run(main()) == [True, True]


def test_a_message_cut_short_ends_the_read_as_the_comms_read():
    """The sender dies after half a message: both reads raise CommClosedError."""

    async def main():
        listener, done, accepted = await _listener()
        results = []
        try:
            for reader in (wire.read, lambda comm: comm.read()):
                sender = await connect(listener.contact_address)
                receiver = await accepted.get()
                # a prelude promising 100 bytes, then 10 of them, then the socket dies
                sock = sender.stream.socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sender.stream.write(struct.pack("QQQ", 116, 1, 100) + b"\x91" * 10)
                await asyncio.sleep(0.05)
                sender.abort()
                try:
                    await reader(receiver)
                    results.append("returned")
                except CommClosedError:
                    results.append(receiver.closed())
        finally:
            done.set()
            listener.stop()
        return results

    assert run(main()) == [True, True]


def test_a_release_that_frames_otherwise_keeps_the_comm(monkeypatch, caplog):
    """If this release's dumps and framing disagree with the wire on the sample
    messages, no comm is eligible, once logged, and a paced stream writes through the
    comm."""
    import distributed.protocol

    real = distributed.protocol.dumps
    monkeypatch.setattr(distributed.protocol, "dumps", lambda msg, **kw: real(msg, **kw) + [b""])
    monkeypatch.setattr(wire, "_selfcheck", [])

    async def main():
        listener, done, pairs = await _pairs(1)
        try:
            ((comm, peer),) = pairs
            with caplog.at_level(logging.INFO, logger=LOGGER):
                assert not wire.eligible(comm)
                assert not wire.eligible(comm)
            assert not wire.install_read(peer)
        finally:
            await _close(listener, done, pairs)

    run(main())
    assert wire.selfcheck() == "this release frames messages differently"
    messages = [r.getMessage() for r in caplog.records if "distributed's comm" in r.getMessage()]
    assert len(messages) == 1


def test_this_release_passes_the_selfcheck():
    assert wire.selfcheck() is None


def test_pacer_loop_writes_through_the_wire_and_the_stream_counts_match(monkeypatch):
    """A stream adopted before it starts: its payloads leave through the wire, the
    byte count is the comm's, and the peer's comm reads them back in order."""
    from distributed.batched import BatchedSend

    written = []
    real_write = wire.write

    def spy(comm, payload):
        written.append(real_write(comm, payload))
        return written[-1]

    monkeypatch.setattr(wire, "write", spy)

    async def main():
        listener, done, pairs = await _pairs(1)
        try:
            ((comm, peer),) = pairs
            stream = BatchedSend(interval="5ms")
            pacer = dispatch.Pacer.adopt(stream, dispatch.Rule())
            stream.start(comm)
            await asyncio.sleep(0)  # start() schedules the sending loop
            assert pacer.state()["wire"] == "fastworker"
            expected = 0
            for i in range(20):
                msg = {"op": "free-keys", "keys": [f"k{i}"], "stimulus_id": f"s{i}"}
                stream.send(msg)
                expected += 1
                if i % 3 == 0:
                    await asyncio.sleep(0)
            got = []
            while len(got) < expected:
                got.extend(await peer.read())
            assert [m["stimulus_id"] for m in got] == [f"s{i}" for i in range(20)]
            assert stream.message_count == 20
            assert written and None not in written and stream.byte_count == sum(written)
            await stream.close()
        finally:
            await _close(listener, done, pairs)

    run(main())


def test_pickled_messages_are_decoded_by_the_wire_itself(monkeypatch):
    """A compute-task (a ``__Pickled__`` mark, no other) is decoded without
    ``from_frames``; one with a set in it still goes through it."""
    calls = []
    real = wire.from_frames

    async def counting(frames, **kw):
        calls.append(len(frames))
        return await real(frames, **kw)

    monkeypatch.setattr(wire, "from_frames", counting)
    with_set = [{**PICKLED["compute-task"][0], "annotations": {"k": {1, 2}}}]

    async def main():
        listener, done, pairs = await _pairs(2)
        try:
            (a, pa), (b, pb) = pairs
            out = []
            for payload in (PICKLED["compute-task"], with_set):
                await a.write(payload, on_error="raise")
                await b.write(payload, on_error="raise")
                out.append((await wire.read(pa), await pb.read()))
            return out
        finally:
            await _close(listener, done, pairs)

    (plain_ours, plain_theirs), (set_ours, set_theirs) = run(main())
    _same(plain_ours, plain_theirs)
    _same(set_ours, set_theirs)
    assert calls == [2]  # only the message with a set went through from_frames


@pytest.mark.parametrize("name", list(PICKLED))
def test_pickled_reads_report_the_same_metrics(name):
    """Under an active ``context_meter`` callback, the wire's read reports what the
    comm's read reports (``decompress`` for every ``ToPickle``), with or without
    sub-frames; without a callback there is nothing to report."""
    from distributed.metrics import context_meter

    payload = PICKLED[name]

    async def main():
        listener, done, pairs = await _pairs(2)
        try:
            (a, pa), (b, pb) = pairs
            seen = {"ours": [], "theirs": []}
            for comm, peer, who in ((a, pa, "ours"), (b, pb, "theirs")):
                await comm.write(payload, on_error="raise")
                record = seen[who]
                with context_meter.add_callback(lambda label, value, unit: record.append((label, unit))):
                    if who == "ours":
                        await wire.read(peer)
                    else:
                        await peer.read()
            return seen
        finally:
            await _close(listener, done, pairs)

    seen = run(main())
    assert seen["ours"] == seen["theirs"]
    assert ("decompress", "seconds") in seen["ours"]


class _FailsToUnpickle:
    def __init__(self, exc):
        self.exc = exc

    def __reduce__(self):
        return (_raise, (self.exc,))


def _raise(exc):
    raise exc


@pytest.mark.parametrize("exc", [ValueError("no"), EOFError("cut")], ids=["ValueError", "EOFError"])
def test_a_run_spec_that_fails_to_unpickle_ends_as_the_comms_read(exc, caplog):
    """The same exception (EOFError: CommClosedError, the comm aborted) and the same
    log records as the comm's read."""
    payload = [{"op": "compute-task", "key": "f", "run_spec": ToPickle(_FailsToUnpickle(exc))}]

    async def main():
        listener, done, pairs = await _pairs(2)
        try:
            (a, pa), (b, pb) = pairs
            out = []
            for comm, peer, reader in ((a, pa, wire.read), (b, pb, lambda c: c.read())):
                await comm.write(payload, on_error="raise")
                caplog.clear()
                with caplog.at_level(logging.DEBUG, logger="distributed"):
                    try:
                        await reader(peer)
                        raised = None
                    except Exception as e:
                        raised = (type(e), str(e))
                records = [(r.name, r.levelname, r.getMessage()[:23]) for r in caplog.records
                           if r.name != "distributed.comm.tcp"]
                out.append((raised, records, peer.closed()))
            return out
        finally:
            await _close(listener, done, pairs)

    ours, theirs = run(main())
    assert ours == theirs
    assert ours[0] is not None and ours[1]


def test_a_release_that_decodes_otherwise_keeps_the_comm(monkeypatch):
    """If this release's loads gives something else for a sample message that read
    would decode itself, no comm is eligible."""
    import distributed.protocol

    real = distributed.protocol.loads
    monkeypatch.setattr(
        distributed.protocol, "loads", lambda frames, **kw: [dict(m, extra=1) for m in real(frames, **kw)]
    )
    monkeypatch.setattr(wire, "_selfcheck", [])
    assert wire.selfcheck() == "this release decodes pickled messages differently"


#: What the scheduler sends a client on its stream (distributed's loop, 2 ms window).
CLIENT = {
    "stream-start": [{"op": "stream-start"}],
    "key-in-memory": [{"op": "key-in-memory", "key": "mul-1", "type": pickle.dumps(int)},
                      {"op": "key-in-memory", "key": ("sum", 1, 0)}],
    "cancelled-keys": [{"op": "cancelled-keys", "keys": ["x"], "reason": "already forgotten"}],
    "task-erred, serialized": [{"op": "task-erred", "key": "f-1",
                                "exception": Serialize(("ValueError", "boom")),
                                "traceback": Serialize(None)}],
}


@pytest.mark.parametrize("name", list(CLIENT))
def test_install_write_sends_the_comms_bytes_and_leaves_the_rest_to_it(name, monkeypatch):
    """A comm given the wire's ``write`` on its instance (the scheduler's stream to a
    client, which distributed's own loop writes) sends what the comm's write sends;
    what the wire does not serve goes through the comm's write, called once."""
    payload = CLIENT[name]
    calls = []
    stock_write = TCP.write

    async def counting_write(self, *args, **kwargs):
        calls.append(self)
        return await stock_write(self, *args, **kwargs)

    monkeypatch.setattr(TCP, "write", counting_write)

    async def main():
        listener, done, pairs = await _pairs(2)
        try:
            (fast, fast_peer), (stock, stock_peer) = pairs
            calls.clear()  # (the handshakes)
            assert wire.install_write(fast) and wire.installed_write(fast)
            assert wire.install_write(fast)  # idempotent
            assert not wire.installed_write(stock) and "write" not in vars(stock)
            n_ours = await fast.write(payload, serializers=None, on_error="raise")
            n_theirs = await stock.write(payload, serializers=None, on_error="raise")
            return (await _raw(fast_peer, n_ours), await _raw(stock_peer, n_theirs),
                    [c is fast for c in calls])
        finally:
            await _close(listener, done, pairs)

    ours, theirs, callers = run(main())
    assert ours == theirs
    served = "serialized" not in name
    assert callers == ([False] if served else [True, False])


def test_uninstall_gives_the_comm_its_own_methods_back():
    async def main():
        listener, done, pairs = await _pairs(1)
        try:
            ((comm, peer),) = pairs
            assert wire.install_write(comm) and wire.install_read(comm)
            theirs = lambda *a, **k: None  # noqa: E731  another extension's write
            wire.uninstall(comm)
            assert "write" not in vars(comm) and "read" not in vars(comm)
            comm.write = theirs
            assert wire.install_write(comm) and comm.write is theirs  # left alone
            wire.uninstall(comm)
            assert comm.write is theirs
            del comm.write
            assert await comm.write(CLIENT["key-in-memory"]) > 0
            _same(await peer.read(), tuple(CLIENT["key-in-memory"]))
        finally:
            await _close(listener, done, pairs)

    run(main())


def test_read_ahead_is_on_for_this_tornado():
    import tornado

    assert wire._READ_AHEAD_OK is (tornado.version_info >= (6, 3))
    # the check tells the two layouts apart by what __init__ sets: a read position
    # (Tornado 6.2) means header and body are read apart
    class New:
        def __init__(self):
            self._read_buffer = bytearray()
            self._read_buffer_size = 0

        def _consume(self, loc):
            pass

    class Old(New):
        def __init__(self):
            self._read_buffer = bytearray()
            self._read_buffer_pos = 0
            self._read_buffer_size = 0

    assert wire._reads_ahead(New)
    assert not wire._reads_ahead(Old)


def test_bytes_read_ahead_go_back_in_front_of_what_followed():
    class Stream:
        _read_buffer = bytearray(b"later")
        _read_buffer_size = 5

    stream = Stream()
    wire._unread(stream, b"headerNEXT", 6)
    assert stream._read_buffer == b"NEXTlater" and stream._read_buffer_size == 9


@pytest.mark.parametrize("split", [None, 3, 1000])
def test_reads_of_coalesced_and_split_messages_take_the_comms_bytes(split):
    """Several messages (small, large, pickled) arrive together, or in pieces of
    ``split`` bytes: the wire's reads decode what the comm's reads decode, one message
    each, and leave nothing behind in Tornado's buffer."""
    payloads = [PLAIN["free-keys"], [{"op": "x", "data": b"x" * (wire.SMALL_BODY + 10)}],
                PICKLED["compute-task"], PLAIN["many"], PICKLED["out-of-band buffers"],
                PLAIN["close-stream"]]

    async def main():
        listener, done, pairs = await _pairs(2)
        try:
            (a, pa), (b, pb) = pairs
            if split is None:  # written before anything is read: they arrive together
                for payload in payloads:
                    await a.write(payload, on_error="raise")
            else:  # the comm's bytes, handed to the socket a few at a time
                sizes = [await b.write(payload, on_error="raise") for payload in payloads]
                raw = await pb.stream.read_bytes(sum(sizes))
                for i in range(0, len(raw), split):
                    a.stream.write(raw[i:i + split])
                    await asyncio.sleep(0)
            for payload in payloads:
                await b.write(payload, on_error="raise")
            ours = [await wire.read(pa) for _ in payloads]
            theirs = [await pb.read() for _ in payloads]
            return ours, theirs, pa.stream._read_buffer_size
        finally:
            await _close(listener, done, pairs)

    ours, theirs, left = run(main())
    assert len(ours) == len(theirs) == 6
    for x, y in zip(ours, theirs):
        _same(x, y)
    assert left == 0


@pytest.mark.skipif(not wire._READ_AHEAD_OK, reason="Tornado 6.2 reads header and body apart")
def test_a_read_keeps_listening_on_the_socket():
    """The comm's read of a message stops and restarts Tornado's listening on the
    socket (header and body read apart); the wire's, with the message taken at once,
    leaves the registration alone."""

    async def main():
        listener, done, pairs = await _pairs(2)
        try:
            (a, pa), (b, pb) = pairs
            loop = pa.stream.io_loop
            calls = []
            update_handler = loop.update_handler

            def counting(fd, events):
                calls.append(fd)
                return update_handler(fd, events)

            loop.update_handler = counting
            counts = []
            for reader, writer in ((wire.read, a), (None, b)):
                comm = pa if reader else pb
                for _ in range(2):  # the first read registers the socket
                    # the read waits for the message, as a stream's reader does
                    pending = asyncio.ensure_future(reader(comm) if reader else comm.read())
                    await asyncio.sleep(0.01)
                    calls.clear()
                    await writer.write(PLAIN["task-finished"], on_error="raise")
                    await pending
                counts.append(calls.count(comm.stream.fileno()))
            del loop.update_handler
            return counts
        finally:
            await _close(listener, done, pairs)

    ours, theirs = run(main())
    assert ours == 0 and theirs >= 1

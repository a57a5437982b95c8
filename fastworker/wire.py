"""Small messages on a batched stream's TCP comm: the same bytes as distributed's comm, less work.

A batched stream (``BatchedSend``) carries lists of small msgpack dicts: ``compute-task``,
``task-finished``, ``free-keys`` and the like. For each write distributed's TCP comm
estimates the payload's size with ``sizeof`` (to decide whether to serialize it in a
thread), runs ``protocol.dumps`` with a Python ``default`` hook, builds the frame header
through several helper functions and appends the joined bytes to the Tornado stream's
buffer. For each read it awaits the header, allocates a host array for the body, unpacks
the frame lengths and awaits ``from_frames``, whose msgpack decoding calls a Python
``object_hook`` on every dict of every message.

:func:`write` and :func:`read` do the same on a plain TCP comm for the messages where
the result is known to be identical:

- **write**: the payload packs with msgpack alone (``use_bin_type=True``; a ``set`` or
  an ``Enum`` is encoded as ``msgpack_encode_default`` encodes it), into one frame
  smaller than ``distributed.comm.offload``. The bytes on the wire are distributed's:
  the prelude ``Q`` (bytes up to the end of the frame), ``Q`` (one frame), ``Q`` (its
  length), then the msgpack frame, appended to the stream's buffer as the comm does. A
  payload holding anything serialized out of band (``Serialize``, ``ToPickle``, …), one
  msgpack cannot pack, or a large one returns ``None`` before anything is written, and
  the caller sends it through the comm's own ``write``.
- **read**: the bytes of a message are the comm's, taken from Tornado's buffer with one
  partial read of what has arrived (so that Tornado keeps listening on the socket
  between messages; anything read ahead goes back in front of its buffer); a body of one frame
  whose bytes hold no ``"__"`` (so no dict of it can carry the ``__Serialized__``,
  ``__Pickled__``, ``__Set__`` or ``__Enum__`` marks that distributed's hook looks for:
  the hook would return each dict unchanged) is decoded by msgpack without the hook.
  A small body whose only mark is ``__Pickled__`` (every ``compute-task``: its
  ``run_spec``) is decoded with a hook that does only what distributed's does for that
  mark, calling distributed's own ``pickle.loads`` (and ``decompress`` unless it would
  do nothing: no sub-frames and no metric callback listening). Anything else — other
  marks, a large body — goes through distributed's ``from_frames`` on the frames read,
  exactly as the comm would.

Only ``distributed.comm.tcp.TCP`` itself qualifies (not TLS, not a subclass, not another
backend): :func:`eligible`. ``read`` is set on the comm instance by :func:`install_read`;
nothing is set on distributed's classes.
"""
from __future__ import annotations

import functools
import inspect
import logging
import pickle
import struct
from ssl import SSLError
from enum import Enum
from typing import Any

import cloudpickle
import msgpack
from distributed.comm import tcp as _tcp
from distributed.comm import utils as _comm_utils
from distributed.comm.core import CommClosedError
from distributed.comm.utils import OFFLOAD_THRESHOLD, from_frames
from distributed.metrics import context_meter
from distributed.protocol import pickle as _dpickle
from distributed.protocol.compression import decompress, maybe_compress
from distributed.protocol.serialize import ToPickle, msgpack_encode_default
from distributed.protocol.utils import msgpack_opts, unpack_frames
from distributed.utils import ensure_memoryview, nbytes
from tornado.iostream import BaseIOStream, StreamClosedError

logger = logging.getLogger("distributed.fastworker")
#: The loggers distributed's ``protocol.loads`` and ``from_frames`` report failures on.
_loads_logger = logging.getLogger("distributed.protocol.core")
_frames_logger = logging.getLogger("distributed.comm.utils")

#: The prelude of a one-frame message: bytes that follow the first word, frame count,
#: frame length ("Q" each, native order, as distributed packs them).
_PRELUDE = struct.Struct("QQQ")
_WORD = struct.Struct("Q")
#: A body up to this size is read in one ``read_bytes``; larger ones as the comm does.
SMALL_BODY = 1 << 16
#: Larger payloads go through the comm's own write (which may serialize them in a thread).
LIMIT = OFFLOAD_THRESHOLD or (10 << 20)
#: How much one read takes of what the socket has delivered (Tornado's read chunk).
READ_AHEAD = 1 << 16


def _reads_ahead(stream_class: type = BaseIOStream) -> bool:
    """Whether this Tornado keeps its read buffer as a ``bytearray`` whose start is
    the next unread byte (``_read_buffer``, ``_read_buffer_size``; no
    ``_read_buffer_pos``), so that bytes read ahead can be handed back in front."""
    code = getattr(stream_class.__init__, "__code__", None)
    names = code.co_names if code is not None else ()
    return (
        "_read_buffer" in names and "_read_buffer_size" in names
        and "_read_buffer_pos" not in names and hasattr(stream_class, "_consume")
    )


#: Read a message with one partial read of what has arrived (see :func:`read`).
_READ_AHEAD_OK = _reads_ahead()
#: The metric callbacks active in this context (a dict), or None on a release that
#: keeps them elsewhere (then ``decompress`` is always called).
_meter_callbacks = getattr(getattr(context_meter, "_callbacks", None), "get", None)


class _Unusual(Exception):
    """Raised from the msgpack hook: the payload needs distributed's own dumps."""


def _plain_pickle(data: Any, sub_frames: list) -> bytes:
    """``distributed.protocol.pickle.dumps(data, buffer_callback=...)`` where its first
    attempt decides: the standard pickler at the highest protocol, buffers out of
    band, and neither ``__main__`` in the result nor a module registered for
    pickling by value. Anything else (the Dask pickler, cloudpickle, a failure, which
    distributed logs) is left to distributed's dumps, so that it runs and logs once."""
    buffers: list = []
    try:
        result = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=buffers.append)
    except Exception:
        raise _Unusual from None
    if b"__main__" in result or (
        getattr(inspect.getmodule(data), "__name__", None)
        in cloudpickle.list_registry_pickle_by_value()
    ):
        raise _Unusual
    for buffer in buffers:
        sub_frames.append(ensure_memoryview(buffer))
    return result


class _Packing:
    """One payload being packed: its frames (frame 0 is the msgpack frame, filled
    last) and the comm's compression setting for out-of-band buffers."""

    __slots__ = ("frames", "options", "packer")

    def __init__(self) -> None:
        self.frames: list = [None]
        self.options: dict = {}
        self.packer = msgpack.Packer(default=self.default, use_bin_type=True)

    def default(self, obj: Any) -> Any:
        # msgpack calls this for what it cannot pack natively: what distributed's
        # dumps hook does for ToPickle (pickled out of band, into sub-frames after a
        # sub-header) and, through msgpack_encode_default, for sets and enums.
        # Anything else (Serialize, Serialized, Pickled, subclasses, objects for the
        # pickle fallback) is left to distributed.
        cls = type(obj)
        if cls is ToPickle:
            frames = self.frames
            offset = len(frames)
            sub_frames: list = []
            pickled = _plain_pickle(obj.data, sub_frames)
            compression = []
            if sub_frames:
                # dumps' compression option: the comm's handshake setting, if any
                options = self.options
                opts = {"compression": options["compression"]} if "compression" in options else {}
                for i, frame in enumerate(sub_frames):
                    compression_i, sub_frames[i] = maybe_compress(frame, **opts)
                    compression.append(compression_i)
            sub_header = {
                "pickled-obj": pickled,
                "compression": tuple(compression),
                "num-sub-frames": len(sub_frames),
            }
            frames.append(msgpack.dumps(sub_header))
            frames.extend(sub_frames)
            return {"__Pickled__": offset}
        if cls is set or isinstance(obj, Enum):
            return msgpack_encode_default(obj)
        raise _Unusual

    def pack(self, payload: Any, options: dict) -> list | None:
        self.frames = frames = [None]
        self.options = options
        try:
            frames[0] = self.packer.pack(payload)
        except Exception:
            # _Unusual, or TypeError/ValueError/OverflowError: distributed's dumps has
            # its own fallbacks and errors for these; leave the payload to it.
            self.packer.reset()
            return None
        finally:
            self.frames = None
        return frames


_packing = _Packing()
_NO_OPTIONS: dict = {}


def eligible(comm: Any) -> bool:
    """Whether ``comm`` is a plain TCP comm, the only kind :func:`write`/:func:`read`
    serve, and this release's comm frames the sample messages as :func:`write` does."""
    return type(comm) is _tcp.TCP and selfcheck() is None


#: Messages of the shapes the batched streams carry, for :func:`selfcheck`.
def _samples() -> list:
    return [
        [{"op": "free-keys", "keys": ["x", ("y", 0)], "stimulus_id": "s-1"}],
        [{"op": "task-finished", "key": "inc-1", "nbytes": 28, "type": b"\x80\x04int",
          "metadata": {}, "thread": 140, "startstops": ({"action": "compute",
          "start": 1.5, "stop": 2.5},), "stimulus_id": "s-2"}, {"op": "close-stream"}],
        [{"op": "compute-task", "key": "f-1", "priority": (0, 1, -2),
          "run_spec": ToPickle((len, "abc")), "who_has": {"x": ["tcp://a:1"]},
          "resource_restrictions": {}, "annotations": {"k": {1, 2}}}],
        # as the scheduler sends most tasks (no set, so read decodes it itself)
        [{"op": "compute-task", "key": ("f", 2), "priority": (0, 1, -3),
          "run_spec": ToPickle((max, (1, 2))), "who_has": {}, "nbytes": {},
          "resource_restrictions": {}, "actor": False, "annotations": {}, "span_id": None}],
        # out-of-band buffers (each through maybe_compress), as NumPy arrays give
        [{"op": "x", "data": ToPickle(bytearray(b"0123456789" * 2000)),
          "big": ToPickle(pickle.PickleBuffer(bytearray(b"ab" * 40_000)))}],
    ]


_selfcheck: list = []


def selfcheck() -> str | None:
    """None if :func:`pack`'s frames and their framing are byte for byte those of this
    release's ``protocol.dumps`` and TCP comm for sample messages; else why not (then
    every write and read goes through the comm). Worked out once per process."""
    if not _selfcheck:
        from distributed.protocol import dumps

        reason = None
        for i, sample in enumerate(_samples()):
            try:
                ours = pack(sample)
                if ours is None:
                    reason = f"fastworker.wire cannot pack sample message {i}"
                    break
                framed = frame(ours)
                theirs = _tcp._add_frames_header(dumps(sample, on_error="raise"))[0]
                if framed is None or b"".join(map(bytes, framed[0])) != b"".join(
                    map(bytes, theirs)
                ):
                    reason = "this release frames messages differently"
                    break
                reason = _read_check(sample, dumps)
                if reason:
                    break
            except Exception as e:  # a release whose comm or protocol we do not know
                reason = f"framing a sample message failed: {e!r}"
                break
        _selfcheck.append(reason)
        if reason:
            logger.info("fastworker: small messages go through distributed's comm: %s", reason)
    return _selfcheck[0]


def _read_check(sample: Any, dumps: Any) -> str | None:
    """None if :func:`read`'s own decoding of ``sample``, when it would decode it, gives
    what this release's ``protocol.loads`` gives (same types, same values)."""
    from distributed.protocol import loads

    frames = dumps(sample, on_error="raise")
    head = bytes(frames[0])
    if b"__" in head.replace(b"__Pickled__", b""):
        return None  # read leaves it to from_frames
    if not _same(_loads_pickled(list(frames), head, None), loads(frames)):
        return "this release decodes pickled messages differently"
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal, container by container, with the same types."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, (memoryview, pickle.PickleBuffer)):
        return bytes(a) == bytes(b)
    return bool(a == b)


def pack(payload: Any, options: dict | None = None) -> list | None:
    """The frames distributed's ``dumps`` makes of ``payload`` (a msgpack frame, then
    the sub-header and buffers of each ``ToPickle``), or None if it needs more.
    ``options``: the comm's handshake options, whose compression applies to buffers."""
    global _packing
    packing = _packing
    _packing = None  # re-entered (pickling code that writes): a packer of its own
    try:
        return (packing or _Packing()).pack(payload, options or _NO_OPTIONS)
    finally:
        _packing = packing or _Packing()


def frame(frames: list) -> tuple[Any, int] | None:
    """The chunks the TCP comm writes for ``frames`` and their total size, or None if
    the payload is too large for the loop (the comm may serialize it in a thread)."""
    if len(frames) == 1 and type(frames[0]) is bytes:
        only = frames[0]
        n = len(only)
        if n > LIMIT:
            return None
        return (_PRELUDE.pack(n + 16, 1, n) + only,), n + 24
    if sum(map(nbytes, frames)) > LIMIT:
        return None
    # the comm's own framing (prelude, what is read in one go, joining)
    chunks, _, total = _tcp._add_frames_header(frames)
    return chunks, total


def write(comm: Any, payload: Any) -> int | None:
    """Write ``payload`` to the TCP ``comm`` as its ``write`` would; return the bytes
    written, or None (nothing written) if it must go through ``comm.write``."""
    stream = comm.stream
    if stream is None:
        return None
    frames = pack(payload, comm.handshake_options)
    if frames is None:
        return None
    framed = frame(frames)
    if framed is None:
        return None
    chunks, total = framed
    try:
        buffer = stream._write_buffer
        for chunk in chunks:
            if buffer is None:
                raise StreamClosedError()
            buffer.append(chunk if type(chunk) is bytes else ensure_memoryview(chunk))
        stream._total_write_index += total
        stream.write(b"")
    except StreamClosedError as e:
        _stream_closed(comm, e)
    except BaseException:
        # as the comm does: nothing is known of what reached the socket
        comm.abort()
        raise
    return total


def _stream_closed(comm: Any, exc: BaseException) -> None:
    """What the comm does when its stream turns out closed: forget the stream, and
    raise CommClosedError (distributed's conversion of the error)."""
    comm.stream = None
    comm._closed = True
    _tcp.convert_stream_closed_error(comm, exc)


async def _read_ahead(stream: Any) -> tuple[int, bytes | None]:
    """A message's size and, if it is at most ``SMALL_BODY``, its body, read with one
    partial read of what has arrived (plus exact reads of what has not yet).

    The comm reads the 8-byte header, then the body: the header's read leaves the
    body in Tornado's buffer, so Tornado stops listening on the socket when it hands
    the header over and starts again once the body is read (two ``epoll_ctl`` calls,
    with asyncio's handle bookkeeping, per message). Taking everything that has
    arrived at once leaves the buffer empty and the socket listened to throughout.
    Bytes beyond this message (the next one, or a large body that the comm's way
    reads into a buffer of its own) go back in front of Tornado's buffer, where the
    next read finds them: the stream is left exactly where the comm's reads leave it.
    """
    chunk = await stream.read_bytes(READ_AHEAD, partial=True)
    got = len(chunk)
    if got < 8:
        chunk += await stream.read_bytes(8 - got)
        got = 8
    (size,) = _WORD.unpack_from(chunk)
    end = 8 + size
    if size > SMALL_BODY:
        if got > 8:
            _unread(stream, chunk, 8)
        return size, None
    if got == end:
        return size, chunk[8:]
    if got > end:
        _unread(stream, chunk, end)
        return size, chunk[8:end]
    return size, chunk[8:] + await stream.read_bytes(end - got)


def _unread(stream: Any, chunk: bytes, start: int) -> None:
    """Put ``chunk[start:]`` back in front of ``stream``'s read buffer (nothing has
    been read since ``chunk`` was taken from it)."""
    rest = memoryview(chunk)[start:]
    stream._read_buffer[0:0] = rest
    stream._read_buffer_size += len(rest)


async def read(comm: Any, deserializers: Any = None) -> Any:
    """What ``comm.read()`` returns, decoding a small plain message without the hook."""
    stream = comm.stream
    if stream is None:
        raise CommClosedError()
    try:
        if _READ_AHEAD_OK:
            size, body = await _read_ahead(stream)
        else:
            (size,) = _WORD.unpack(await stream.read_bytes(8))
            body = await stream.read_bytes(size) if size <= SMALL_BODY else None
        if body is not None:
            if (
                size > 16
                and _WORD.unpack_from(body)[0] == 1
                and _WORD.unpack_from(body, 8)[0] == size - 16
            ):
                # (bytes.find: a memoryview's `in` compares items, not substrings)
                if body.find(b"__", 16) < 0:
                    return msgpack.loads(
                        memoryview(body)[16:], use_list=False, strict_map_key=False, raw=False
                    )
            frames_nosplit = _tcp.host_array(size)
            frames_nosplit[:] = body
        else:
            frames_nosplit = await _tcp.read_bytes_rw(stream, size)
        frames, buffers_nbytes = unpack_frames(frames_nosplit, partial=True)
        for nbytes in buffers_nbytes:
            frames.append(await _tcp.read_bytes_rw(stream, nbytes))
    except (StreamClosedError, SSLError) as e:
        _stream_closed(comm, e)
    except BaseException:
        comm.abort()  # as the comm does: the stream's position is unknown
        raise
    if size <= SMALL_BODY and not buffers_nbytes:
        threshold = _comm_utils.OFFLOAD_THRESHOLD
        if not (threshold and comm.allow_offload and comm.deserialize and size > threshold):
            # (the comm would not deserialize it in a thread: the frames are smaller
            # than the body)
            head = bytes(frames[0])
            if b"__" not in head.replace(b"__Pickled__", b""):
                try:
                    return _loads_pickled(frames, head, comm)
                except EOFError:
                    comm.abort()
                    raise CommClosedError("aborted stream on truncated data")
    try:
        return await from_frames(
            frames,
            deserialize=comm.deserialize,
            deserializers=deserializers,
            allow_offload=comm.allow_offload,
        )
    except EOFError:
        comm.abort()
        raise CommClosedError("aborted stream on truncated data")


def _loads_pickled(frames: list, head: bytes, comm: Any) -> Any:
    """What ``from_frames`` returns for ``frames`` whose first frame carries no mark of
    distributed's hook but ``__Pickled__`` (checked by the caller: every ``"__"`` in
    ``head``, its bytes, belongs to one): each such dict is replaced by the object
    ``distributed.protocol.pickle.loads`` makes of its sub-header and sub-frames, every
    other dict is kept as it is, as the hook does. The sub-frames' ``decompress`` (a
    function timed by ``context_meter``) is skipped only when it has nothing to do and
    no metric callback is active, i.e. when calling it would change nothing."""

    def hook(obj: dict) -> Any:
        offset = obj.get("__Pickled__", 0)
        if offset > 0:
            sub_header = msgpack.loads(frames[offset])
            offset += 1
            sub_frames = frames[offset : offset + sub_header["num-sub-frames"]]
            if "compression" in sub_header:
                if (
                    sub_frames
                    or sub_header["compression"]
                    or _meter_callbacks is None
                    or _meter_callbacks()
                ):
                    sub_frames = decompress(sub_header, sub_frames)
                else:
                    sub_frames = []
            return _dpickle.loads(sub_header["pickled-obj"], buffers=sub_frames)
        return obj

    try:
        try:
            return msgpack.loads(head, object_hook=hook, use_list=False, **msgpack_opts)
        except Exception:
            # distributed's protocol.loads reports every failure so, then raises
            _loads_logger.critical("Failed to deserialize", exc_info=True)
            raise
    except EOFError:
        # and from_frames reports a truncated stream so (its size is what it measured)
        measured = sum(map(nbytes, frames)) if _offload_measures(comm) else False
        _frames_logger.error(
            "truncated data stream (%d bytes): %s",
            measured,
            "[too large to display]" if measured > 1000 else frames,
        )
        raise


def _offload_measures(comm: Any) -> bool:
    """Whether ``from_frames`` measures the frames of ``comm``'s messages (it does when
    it might deserialize them in a thread); no comm (the self-check): the defaults."""
    if comm is None:
        return bool(_comm_utils.OFFLOAD_THRESHOLD)
    return bool(comm.allow_offload and comm.deserialize and _comm_utils.OFFLOAD_THRESHOLD)


def install_read(comm: Any) -> bool:
    """Give the TCP ``comm`` instance :func:`read` as its ``read``; idempotent."""
    if not eligible(comm):
        return False
    if "read" not in vars(comm):
        comm.read = functools.partial(read, comm)  # comm.read() -> read(comm)
    return True


def installed(comm: Any) -> bool:
    """Whether :func:`install_read` gave ``comm`` its ``read``."""
    return "read" in getattr(comm, "__dict__", ())


async def _write_or_comm(comm: Any, msg: Any, serializers: Any = None,
                         on_error: str = "message") -> int:
    """``comm.write`` for a stream that distributed's own sending loop writes (the
    scheduler's stream to a client): :func:`write` when it can, else the comm's."""
    if serializers is None:
        nbytes = write(comm, msg)
        if nbytes is not None:
            return nbytes
    return await _tcp.TCP.write(comm, msg, serializers=serializers, on_error=on_error)


def install_write(comm: Any) -> bool:
    """Give the TCP ``comm`` instance a ``write`` that goes through :func:`write` for
    what it serves and through the comm's own ``write`` for the rest; idempotent, and
    a ``write`` already set on the instance (a test's, another extension's) is left
    alone. For streams whose sending loop is distributed's (``BatchedSend`` calls
    ``comm.write`` for each batch); the Pacer's loop calls :func:`write` itself."""
    if not eligible(comm):
        return False
    if "write" not in vars(comm):
        comm.write = functools.partial(_write_or_comm, comm)
    return True


def uninstall(comm: Any) -> None:
    """Take :func:`install_write`'s ``write`` and :func:`install_read`'s ``read`` off
    ``comm`` (each only if it is ours): the comm's own methods again."""
    attributes = getattr(comm, "__dict__", {})
    for name, function in (("write", _write_or_comm), ("read", read)):
        value = attributes.get(name)
        if isinstance(value, functools.partial) and value.func is function:
            del attributes[name]


def installed_write(comm: Any) -> bool:
    """Whether :func:`install_write` gave ``comm`` its ``write``."""
    value = getattr(comm, "__dict__", {}).get("write")
    return isinstance(value, functools.partial) and value.func is _write_or_comm

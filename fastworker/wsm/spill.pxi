# --- the worker's data when it is distributed's SpillBuffer ----------------------------------
#
# A worker with a memory limit keeps its results in distributed's ``SpillBuffer``, a
# ``zict.Buffer`` over a ``zict.LRU`` of values in memory and a cached ``Slow`` mapping
# on disk. Storing, reading and dropping one small value goes through a dozen Python
# frames (context managers, ``locked`` wrappers, a ``KeyError`` raised through three
# layers of ``slow`` on every store), 9, 5.5 and 2 µs here: about a seventh of a
# worker's CPU on a graph of tiny tasks.
#
# Below are the same three operations for the common case, done on the same objects:
# a value that fits below the target (nothing is evicted), read while in memory,
# dropped while in memory. They take the locks zict takes, in zict's order (the
# buffer's, then the LRU's), and leave every attribute as the stock methods would:
# ``fast.d``, ``fast.order``, ``fast.heavy``, ``fast.weights``, ``fast.total_weight``,
# the two cancel maps, ``logged_pickle_errors``, the ``memory-read`` metrics digested
# to the context's callbacks and to the buffer's own ``cumulative_metrics``.
# Everything else (a key already stored, on disk, a value that would make the LRU
# evict, a closed buffer, another mapping, a subclass such as dask-cuda's, zict other
# than 3.0.0) takes the mapping's own method. tests/test_spill_fast.py compares the
# whole state with stock's after random sequences of stores, reads and drops, spilling
# included.

cdef object _SpillBuffer = None
cdef object _LRU = None
cdef object _ZictCache = None
cdef object _InsertionSortedSet = None
cdef object _zict_buffer_getitem = None
cdef object _context_meter = None
cdef object _in_memory_weight = None
cdef bint _SPILL_FAST = False


def _spill_fast_supported():
    """Whether the worker's data may be handled by the functions below: zict 3.0.0
    (the layout they were written against, the one every supported release of
    distributed installs) and distributed's SpillBuffer built on it."""
    global _SpillBuffer, _LRU, _ZictCache, _InsertionSortedSet, _zict_buffer_getitem
    global _context_meter, _in_memory_weight, _SPILL_FAST
    try:
        import zict
        from zict.utils import InsertionSortedSet
        from distributed.metrics import context_meter
        from distributed.spill import SpillBuffer, _in_memory_weight
    except ImportError:  # pragma: no cover - distributed requires zict
        return False
    if zict.__version__ != "3.0.0":
        return False
    _SpillBuffer, _LRU, _ZictCache = SpillBuffer, zict.LRU, zict.Cache
    _InsertionSortedSet = InsertionSortedSet
    _zict_buffer_getitem = zict.Buffer.__getitem__
    _context_meter = context_meter
    _in_memory_weight = _in_memory_weight
    _SPILL_FAST = True
    return True


_spill_fast_supported()


cdef inline object _spill_lru(object data):
    """``data.fast`` when ``data`` is distributed's own SpillBuffer over zict 3.0.0's
    LRU (with a dict inside, weighing values with ``safe_sizeof``) and Cache, as
    ``WorkerMemoryManager`` makes it; None for any other mapping."""
    if not _SPILL_FAST or type(data) is not _SpillBuffer:
        return None
    lru = data.fast
    if (
        type(lru) is not _LRU
        or type(lru.d) is not dict
        or type(lru.order) is not _InsertionSortedSet
        or type(lru.heavy) is not _InsertionSortedSet
        or type(data.slow) is not _ZictCache
        or lru.weight is not _in_memory_weight
    ):
        return None
    return lru


cdef int _data_set(object data, object key, object value) except -1:
    """``data[key] = value``.

    For a SpillBuffer: stock's ``SpillBuffer.__setitem__`` enters two context
    managers, drops ``key`` from ``slow`` (raising and catching a KeyError three
    frames deep when it is not there), marks a pending restore of ``key`` cancelled,
    then ``LRU.__setitem__`` weighs the value, stores it and evicts while over the
    target. When ``key`` is in neither ``fast`` nor ``slow`` and the value fits,
    the same updates are made here under the same locks. The value is weighed before
    the locks are taken (stock weighs it under the LRU's): when it turns out not to
    fit, the mapping's own ``__setitem__`` runs and weighs it again.
    """
    lru = _spill_lru(data)
    if lru is None:
        data[key] = value
        return 0
    if key in lru.d or key in lru._cancel_evict or lru.closed:
        data[key] = value
        return 0
    weight = lru.weight(key, value)
    cdef bint done = False
    lock = data.lock
    lock.acquire()
    try:
        if key not in data.slow:
            lru_lock = lru.lock
            lru_lock.acquire()
            try:
                d = lru.d
                n = lru.n
                total = lru.total_weight + weight
                if (
                    key not in d
                    and key not in lru._cancel_evict
                    and not lru.closed
                    and not weight > n
                    and not total + lru.offset > n
                ):
                    cancel_restore = data._cancel_restore
                    if key in cancel_restore:
                        cancel_restore[key] = True
                    d[key] = value
                    (<dict>lru.order._d)[key] = None
                    lru.weights[key] = weight
                    lru.total_weight = total
                    done = True
            finally:
                lru_lock.release()
    finally:
        lock.release()
    if not done:
        data[key] = value
        return 0
    data.logged_pickle_errors.discard(key)
    return 0


cdef object _data_get(object data, object key):
    """``data[key]``.

    For a SpillBuffer holding ``key`` in memory: stock's ``__getitem__`` digests a
    ``memory-read`` count and the value's weight in bytes to the context's metric
    callbacks, then to the buffer's own ``cumulative_metrics`` (its callback is the
    last one added), and moves ``key`` to the top of the LRU under the buffer's and
    the LRU's locks. A key on disk (or evicted meanwhile by another thread) is read by
    zict's ``Buffer.__getitem__`` inside the buffer's metrics context, as stock reads it.
    """
    lru = _spill_lru(data)
    if lru is None:
        return data[key]
    if key not in lru.d:
        return data[key]
    memory_size = lru.weights[key]
    cumulative = data.cumulative_metrics
    _context_meter.digest_metric("memory-read", 1, "count")
    cumulative["memory-read", "count"] += 1
    _context_meter.digest_metric("memory-read", memory_size, "bytes")
    cumulative["memory-read", "bytes"] += memory_size
    cdef bint found = False
    lock = data.lock
    lock.acquire()
    try:
        lru_lock = lru.lock
        lru_lock.acquire()
        try:
            d = lru.d
            if key in d:
                value = d[key]
                order = <dict>lru.order._d
                del order[key]
                order[key] = None
                found = True
        finally:
            lru_lock.release()
    finally:
        lock.release()
    if found:
        return value
    with data._capture_metrics():
        return _zict_buffer_getitem(data, key)


def data_get(data, key):
    """``data[key]``, with the SpillBuffer fast path of :func:`_data_get` (used by
    :func:`fastworker.runner.gather_inputs`)."""
    return _data_get(data, key)


cdef int _data_discard(object data, object key) except -1:
    """``if key in data: del data[key]``.

    For a SpillBuffer holding ``key`` in memory: stock's ``__delitem__`` marks a
    pending restore and a pending eviction of ``key`` cancelled, removes it from the
    LRU's dict, order, heavy set and weights, and from ``logged_pickle_errors``.
    """
    lru = _spill_lru(data)
    if lru is None or key not in lru.d:
        if key in data:
            del data[key]
        return 0
    cdef bint done = False
    lock = data.lock
    lock.acquire()
    try:
        cancel_restore = data._cancel_restore
        lru_lock = lru.lock
        lru_lock.acquire()
        try:
            d = lru.d
            if key in d:
                if key in cancel_restore:
                    cancel_restore[key] = True
                cancel_evict = lru._cancel_evict
                if key in cancel_evict:
                    cancel_evict[key] = True
                del d[key]
                del (<dict>lru.order._d)[key]
                (<dict>lru.heavy._d).pop(key, None)
                lru.total_weight = lru.total_weight - lru.weights.pop(key)
                done = True
        finally:
            lru_lock.release()
    finally:
        lock.release()
    if not done:
        if key in data:
            del data[key]
        return 0
    data.logged_pickle_errors.discard(key)
    return 0


def spill_fast_path(data):
    """Whether stores, reads and drops of ``data`` (a worker's ``data``) take the
    functions above rather than the mapping's own methods."""
    return _spill_lru(data) is not None


def data_set(data, key, value):
    """``data[key] = value`` with the fast path of :func:`_data_set` (for tests)."""
    _data_set(data, key, value)


def data_discard(data, key):
    """``if key in data: del data[key]`` with the fast path of :func:`_data_discard`
    (for tests)."""
    _data_discard(data, key)

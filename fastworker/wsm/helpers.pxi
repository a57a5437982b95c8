# Small helpers shared by every part of the state machine: the shared empty
# results, a task's lazily made sets, clocks, state predicates and the queues.
# Included by fastworker/workerstate.pyx.

# --- shared empty results --------------------------------------------------------------
# Most transitions and events recommend nothing and instruct nothing. They return
# these shared empties instead of a fresh dict, list and tuple each (fewer objects
# for the garbage collector). Both are immutable: a caller that wrote into what a
# transition returned would fail at once instead of silently handing its writes to
# every later transition. Callers that need to add recommendations pass their own
# dict down (_execute_done_common, _ensure_computing_into); the Python-facing
# _transition/_handle_event hand out fresh copies.
cdef object _NO_RECS = MappingProxyType({})
cdef tuple _NO_INSTR = ()
cdef tuple _NOTHING = (_NO_RECS, _NO_INSTR)
cdef tuple _EMPTY_TUPLE = ()


cdef inline tuple _fresh(tuple result):
    """A (recs, instructions) pair that the caller may write into."""
    recs, instructions = result
    if recs is _NO_RECS or instructions is _NO_INSTR:
        return dict(recs), list(instructions)
    return result


def _shared_empties():
    """The shared empty results, for the tests that check they stay empty."""
    return _NO_RECS, _NO_INSTR, _NOTHING


# --- logs ------------------------------------------------------------------------------
# ``log`` and ``stimulus_log`` are deques unless someone rebound them; deque.append
# is then called directly (includes/fastcalls.h), else through the attribute.
fw_init_deque_append(deque, deque.__dict__["append"])


cdef inline int _append_log(object log, object entry) except -1:
    if fw_is_deque(log):
        return fw_deque_append(log, entry)
    log.append(entry)
    return 0


# --- a task's sets -----------------------------------------------------------------------
# A task's sets are made on first use (taskstate.pxd). Code that only reads one
# gets this empty stand-in meanwhile instead of making it; code that removes from
# one skips it. (A set field a user set to None stays None and fails as before.)
cdef frozenset _NOT_MADE = frozenset()


cdef inline bint _made_set(int unmade, object field) except -1:
    """Whether to loop over a task's set field (typed, without an iterator object):
    not if it is still to be made (empty); a field a user set to None fails as
    iterating it would."""
    if unmade:
        return False
    if field is None:
        raise TypeError("'NoneType' object is not iterable")
    return True


cdef inline object _dependencies(TaskState ts):
    if ts._unmade & UNMADE_DEPENDENCIES:
        return _NOT_MADE
    return ts._dependencies


cdef inline object _dependents(TaskState ts):
    if ts._unmade & UNMADE_DEPENDENTS:
        return _NOT_MADE
    return ts._dependents


cdef inline object _waiting_for_data(TaskState ts):
    if ts._unmade & UNMADE_WAITING_FOR_DATA:
        return _NOT_MADE
    return ts._waiting_for_data


cdef inline object _waiters(TaskState ts):
    if ts._unmade & UNMADE_WAITERS:
        return _NOT_MADE
    return ts._waiters


cdef inline object _resource_restrictions(TaskState ts):
    # (not made: an empty mapping, like the {} it will be)
    if ts._unmade & UNMADE_RESTRICTIONS:
        return _NO_RECS
    return ts._resource_restrictions


cdef inline object _who_has(TaskState ts):
    if ts._unmade & UNMADE_WHO_HAS:
        return _NOT_MADE
    return ts._who_has


# --- clocks ------------------------------------------------------------------------------

cdef inline double _now() noexcept:
    """Wall-clock seconds, as distributed.metrics.time on this platform (time.time)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _monotonic() noexcept:
    """As distributed.metrics.monotonic on this platform (time.monotonic)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# --- states --------------------------------------------------------------------------------

cdef inline object _name(int code):
    return STATE_NAMES[code]


cdef int _finish_code(object finish) except -1:
    """The enum code of a requested finish state; TS_NONE (no transition has it as
    finish) for anything that is not a state name."""
    try:
        return state_code(finish)
    except ValueError:
        return TS_NONE


cdef inline bint _is_ready_or_waiting(int s) noexcept:
    # stock: READY | {"waiting"}
    return s == TS_READY or s == TS_CONSTRAINED or s == TS_WAITING


cdef inline bint _is_unreleasable(int s) noexcept:
    # stock: READY | PROCESSING | {"memory"}
    return (
        s == TS_READY or s == TS_CONSTRAINED or s == TS_WAITING or s == TS_EXECUTING
        or s == TS_LONG_RUNNING or s == TS_MEMORY
    )


cdef inline bint _ran_in_thread(int previous) noexcept:
    # stock: ts.previous in ("executing", "long-running")
    return previous == TS_EXECUTING or previous == TS_LONG_RUNNING


# --- queues --------------------------------------------------------------------------------

def _new_heap():
    # keyed by .priority, read directly from the task. __cinit__ alone leaves it as
    # PriorityHeapSet() does (empty, default key), without parsing __init__'s keywords;
    # data_needed makes and drops one per peer whenever the peer's queue empties.
    return _new_queue()


# Queues that data_needed dropped while nobody else referred to them, reset to the
# state of a new one (PriorityHeapSet.reset_fresh), for the next peer queue: a peer's
# queue is made and dropped again whenever it empties, often once per transfer.
# (a C array of strong references: no list method calls, no list resizing)
cdef enum:
    _QUEUE_POOL_MAX = 64
cdef PyObject* _QUEUE_POOL[_QUEUE_POOL_MAX]
cdef Py_ssize_t _queue_pool_n = 0


cdef inline object _new_queue():
    global _queue_pool_n
    cdef PyObject* q
    if _queue_pool_n:
        _queue_pool_n -= 1
        q = _QUEUE_POOL[_queue_pool_n]
        queue = <object>q  # (a new reference)
        Py_DECREF(queue)   # the pool's, handed over to ``queue``
        return queue
    return PriorityHeapSet.__new__(PriorityHeapSet)


cdef object _NEW_HEAP = _new_heap


cdef extern from *:
    """
    /* collections.defaultdict's instance layout (Modules/_collectionsmodule.c,
       unchanged since 2.5): a dict followed by the default factory. */
    typedef struct { PyDictObject dict; PyObject *default_factory; } fw_defdictobject;
    #define fw_default_factory(d) (((fw_defdictobject *)(d))->default_factory)
    """
    PyObject* fw_default_factory(object d)


cdef inline object _queue_of(object data_needed, object worker):
    """``data_needed[worker]``: the peer's queue, made (as the defaultdict would
    make it) if there is none."""
    cdef PyObject* q
    if type(data_needed) is defaultdict:
        q = PyDict_GetItemWithError(data_needed, worker)
        if q is not NULL:
            return <object>q
        if fw_default_factory(data_needed) == <PyObject*>_NEW_HEAP:
            queue = _new_queue()
            PyDict_SetItem(data_needed, worker, queue)
            return queue
    return data_needed[worker]


cdef int _drop_queue(object data_needed, object worker) except -1:
    """``del data_needed[worker]`` of an empty queue, keeping the queue for reuse
    if nothing else refers to it."""
    global _queue_pool_n
    cdef PyObject* q
    cdef PriorityHeapSet queue
    if type(data_needed) is defaultdict or type(data_needed) is dict:
        q = PyDict_GetItemWithError(data_needed, worker)
        if (
            q is not NULL and fw_refcnt(q) == 1 and fw_type(q) is <PyObject*>PriorityHeapSet
            and _queue_pool_n < _QUEUE_POOL_MAX
        ):
            queue = <PriorityHeapSet>q
            PyDict_DelItem(data_needed, worker)
            if queue.reset_fresh():
                Py_INCREF(queue)
                _QUEUE_POOL[_queue_pool_n] = <PyObject*>queue
                _queue_pool_n += 1
            return 0
        if q is not NULL:
            PyDict_DelItem(data_needed, worker)
            return 0
    del data_needed[worker]
    return 0


cdef inline object _item_of(object mapping, object key):
    """``mapping[key]`` of a dict or defaultdict (made by the default factory if
    missing)."""
    cdef PyObject* v
    if type(mapping) is defaultdict or type(mapping) is dict:
        v = PyDict_GetItemWithError(mapping, key)
        if v is not NULL:
            return <object>v
    return mapping[key]


cdef inline int _set_add(object s, object item) except -1:
    """s.add(item)"""
    if type(s) is set:
        return PySet_Add(s, item)
    s.add(item)
    return 0


# The queues are compiled PriorityHeapSets unless someone rebound them to something else.
cdef inline int _heap_add(object heap, object ts) except -1:
    if type(heap) is PriorityHeapSet:
        return (<PriorityHeapSet>heap).push(ts)
    heap.add(ts)
    return 0


cdef inline int _heap_discard(object heap, object ts) except -1:
    if type(heap) is PriorityHeapSet:
        return (<PriorityHeapSet>heap).discard_c(ts)
    heap.discard(ts)
    return 0


cdef inline int _heap_remove(object heap, object ts) except -1:
    if type(heap) is PriorityHeapSet:
        # MutableSet.remove, which PriorityHeapSet.remove is: KeyError if absent
        if not (<PriorityHeapSet>heap).contains_c(ts):
            raise KeyError(ts)
        return (<PriorityHeapSet>heap).discard_c(ts)
    heap.remove(ts)
    return 0


cdef inline object _heap_pop(object heap):
    if type(heap) is PriorityHeapSet:
        return (<PriorityHeapSet>heap).pop_c()
    return heap.pop()


cdef inline Py_ssize_t _heap_len(object heap) except -1:
    if type(heap) is PriorityHeapSet:
        return (<PriorityHeapSet>heap).size()
    return len(heap)


cdef inline object _heap_peek(object heap):
    if type(heap) is PriorityHeapSet:
        return (<PriorityHeapSet>heap).peek_c()
    return heap.peek()


# --- peers ---------------------------------------------------------------------------------
# get_address_host(address) is a pure function of the address string; peers are few.
cdef dict _HOSTS = {}


cdef object _host(object address):
    cdef PyObject* found = PyDict_GetItemWithError(_HOSTS, address)
    if found is not NULL:
        return <object>found
    host = get_address_host(address)
    if len(_HOSTS) < 100_000:
        _HOSTS[address] = host
    return host


# --- plugins -------------------------------------------------------------------------------

cdef object _NOOP_TRANSITION = WorkerPlugin.transition


cdef inline bint _inherits_noop_transition(object plugin) except -1:
    """Whether plugin.transition is WorkerPlugin's own, which does nothing.

    Every worker carries plugins (the scheduler installs the shuffle plugin on
    all) that do not override it; calling it once per transition costs a Python
    call for no effect.
    """
    if getattr(type(plugin), "transition", None) is not _NOOP_TRANSITION:
        return False
    instance_dict = getattr(plugin, "__dict__", None)
    return instance_dict is None or "transition" not in instance_dict

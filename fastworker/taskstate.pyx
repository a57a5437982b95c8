# cython: language_level=3, boundscheck=False, wraparound=False
# cython: embedsignature=True, binding=True
"""Compiled drop-in for :class:`distributed.worker_state_machine.TaskState`.

The worker-side record of one task. Same constructor, fields, defaults, repr,
identity hash/eq, weakref support, ``_to_dict_no_nest`` and pickling as the stock
dataclass; the state is held as a C enum and shown as the same strings.
"""
cimport cython
from cpython.dict cimport PyDict_GetItemWithError
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_GET_LENGTH, PyUnicode_READ_CHAR

from cpython.ref cimport Py_DECREF, Py_INCREF

from libc.string cimport memcmp

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_1BYTE_DATA(object)
    object PyUnicode_Substring(object, Py_ssize_t, Py_ssize_t)
    void PyUnicode_InternInPlace(PyObject**)

from dask.utils import key_split
from distributed.utils import recursive_to_dict
from distributed.worker_state_machine import _default_data_size

from fastworker.compat import features as _features

__all__ = ["TaskState", "TaskStateWithDuration", "RELEASE_TASKSTATE", "TASK_STATES",
           "TaskStateCode"]

# Order must follow the TaskStateCode enum in taskstate.pxd.
STATE_NAMES = (
    "released",
    "waiting",
    "ready",
    "constrained",
    "executing",
    "long-running",
    "memory",
    "error",
    "fetch",
    "flight",
    "missing",
    "cancelled",
    "resumed",
    "rescheduled",
    "forgotten",
    None,
)

#: The fifteen valid worker task states, in enum order.
TASK_STATES = STATE_NAMES[:TS_NONE]

cdef dict _STATE_CODES = {name: code for code, name in enumerate(TASK_STATES)}

# Fields of stock TaskState that its _to_dict_no_nest may show, sorted by name as
# inspect.getmembers sorts them ("prefix" is always dropped there).
_DUMPED_FIELDS = (
    "annotations", "coming_from", "dependencies", "dependents", "done", "exception",
    "exception_text", "key", "metadata", "nbytes", "next", "previous", "priority",
    "resource_restrictions", "run_id", "run_spec", "span_id", "start_time",
    "startstops", "state", "stop_time", "suspicious_count", "traceback",
    "traceback_text", "type", "waiters", "waiting_for_data", "who_has",
)

# The same, with "duration" (releases whose TaskState has that field).
_DUMPED_FIELDS_WITH_DURATION = tuple(sorted(_DUMPED_FIELDS + ("duration",)))

# Stands for "argument not given", so that an explicit None is kept as stock keeps it.
cdef object _MISSING = object()


cdef TaskStateCode state_code(object name) except TS_NONE:
    """The enum code of a state name; ValueError for anything else."""
    cdef int code
    # Names written by code are interned constants: try pointer identity first.
    for code in range(<int>TS_NONE):
        if <PyObject*>name is PyTuple_GET_ITEM(STATE_NAMES, code):
            return <TaskStateCode>code
    cdef PyObject* found = NULL
    if isinstance(name, str):
        found = PyDict_GetItemWithError(_STATE_CODES, name)
    if found is NULL:
        raise ValueError(
            f"{name!r} is not a worker task state; expected one of {TASK_STATES}"
        )
    return <TaskStateCode><int><object>found


cdef TaskStateCode optional_state_code(object name) except? TS_NONE:
    """Like state_code, but None is allowed and maps to TS_NONE."""
    if name is None:
        return TS_NONE
    return state_code(name)


cdef inline object state_name(TaskStateCode code):
    return <object>PyTuple_GET_ITEM(STATE_NAMES, <Py_ssize_t>code)


cdef extern from "includes/weakrefs.h":
    object fw_weakrefs(object obj)

cdef extern from "Python.h":
    ctypedef Py_ssize_t Py_hash_t
    Py_hash_t _Py_HashPointer(const void* ptr)

# Hash by creation number instead of by address (see use_serial_hash).
cdef bint _serial_hash = False
cdef Py_ssize_t _next_serial = 0


def use_serial_hash(bint enabled=True, Py_ssize_t start=0):
    """Hash tasks by creation number instead of by address; restart the numbering.

    Sets of tasks iterate in an order derived from their hashes. Stock hashes by
    ``id()``, so that order differs between two runs of the same stimuli, and
    between stock and fastworker. Differential tests turn this on (and give stock's
    TaskState the same numbering) so that both iterate alike. Identity semantics
    are unchanged: two tasks are equal only if they are the same object.
    """
    global _serial_hash, _next_serial
    _serial_hash = enabled
    _next_serial = start


# Live tasks form an intrusive doubly linked list through TaskState._live_prev and
# _live_next: tracking a task costs a few pointer writes, where stock's WeakSet
# allocates a weakref with a callback. C statics, so that they outlive module
# teardown (tasks may be deallocated after the module's globals are cleared).
cdef void* _live_head = NULL
cdef Py_ssize_t _live_count = 0


cdef inline void _link(TaskState ts) noexcept:
    global _live_head, _live_count
    if ts._live:
        return
    ts._live = True
    ts._live_prev = NULL
    ts._live_next = _live_head
    if _live_head is not NULL:
        (<TaskState>_live_head)._live_prev = <void*>ts
    _live_head = <void*>ts
    _live_count += 1


cdef inline void _unlink(TaskState ts) noexcept:
    global _live_head, _live_count
    if not ts._live:
        return
    if ts._live_prev is NULL:
        _live_head = ts._live_next
    else:
        (<TaskState>ts._live_prev)._live_next = ts._live_next
    if ts._live_next is not NULL:
        (<TaskState>ts._live_next)._live_prev = ts._live_prev
    ts._live = False
    ts._live_prev = ts._live_next = NULL
    _live_count -= 1


@cython.final
cdef class LiveTaskSet:
    """The live TaskState objects: ``TaskState._instances``.

    Behaves like the ``weakref.WeakSet`` that stock keeps in
    ``TaskState._instances`` (len, iteration, membership, add, discard, clear): a
    task joins it when constructed and leaves it when it is deallocated, so it
    never keeps a task alive. Used by tests to find leaked tasks.
    """

    def __len__(self):
        return _live_count

    def __contains__(self, obj):
        return isinstance(obj, TaskState) and (<TaskState>obj)._live

    def __iter__(self):
        # A snapshot: tasks may come and go while the caller iterates.
        cdef list out = []
        cdef void* node = _live_head
        while node is not NULL:
            out.append(<TaskState>node)
            node = (<TaskState>node)._live_next
        return iter(out)

    def add(self, TaskState ts):
        _link(ts)

    def discard(self, TaskState ts):
        _unlink(ts)

    def remove(self, TaskState ts):
        if not ts._live:
            raise KeyError(ts)
        _unlink(ts)

    def clear(self):
        while _live_head is not NULL:
            _unlink(<TaskState>_live_head)

    def __repr__(self):
        return f"<LiveTaskSet: {_live_count} live fastworker TaskState objects>"


# All live TaskState objects, as in stock (tests use it to find leaks).
_INSTANCES = LiveTaskSet()


def _new_empty(cls):
    """Unpickling helper: an instance whose fields __setstate__ fills in.

    Like stock (whose __post_init__ does not run on unpickling), the copy is not
    added to ``TaskState._instances``.
    """
    return cls.__new__(cls)


def _shown_signature():
    """Stock TaskState's constructor signature, which the compiled __init__ takes
    (it has no introspectable signature of its own; tests/test_api_parity.py calls
    it with every parameter)."""
    import inspect

    return inspect.signature(_stock_class())


def _stock_class():
    from distributed.worker_state_machine import TaskState as StockTaskState

    return StockTaskState


def _dataclass_fields():
    """Copies of the dataclass fields of stock's TaskState. ``dataclasses.fields``,
    ``is_dataclass``, ``asdict`` and ``replace`` read them, as distributed's own
    tests do on stock's class."""
    import copy

    return {
        name: copy.copy(f) for name, f in _stock_class().__dataclass_fields__.items()
    }


@cython.freelist(256)
cdef class TaskState:
    """Holds volatile state relating to an individual Dask task on a worker.

    Compiled equivalent of :class:`distributed.worker_state_machine.TaskState`:
    same constructor and fields. ``state``, ``previous`` and ``next`` only accept
    the worker task state names (or None for the latter two) and raise
    ValueError for anything else. Hash and equality are by identity.
    """

    _instances = _INSTANCES
    # What _to_dict_no_nest shows (a subclass adds its own fields).
    _dumped_fields = _DUMPED_FIELDS
    __signature__ = _shown_signature()
    # The face of a dataclass (stock's TaskState is one), without its generated code.
    __dataclass_fields__ = _dataclass_fields()
    __dataclass_params__ = _stock_class().__dataclass_params__
    __match_args__ = _stock_class().__match_args__

    def __init__(
        self,
        key,
        run_id=-1,
        run_spec=None,
        dependencies=_MISSING,
        dependents=_MISSING,
        waiting_for_data=_MISSING,
        waiters=_MISSING,
        state="released",
        previous=None,
        next=None,
        priority=None,
        who_has=_MISSING,
        coming_from=None,
        resource_restrictions=_MISSING,
        exception=None,
        traceback=None,
        exception_text="",
        traceback_text="",
        type=None,
        suspicious_count=0,
        startstops=_MISSING,
        start_time=None,
        stop_time=None,
        metadata=_MISSING,
        nbytes=None,
        annotations=None,
        span_id=None,
        done=False,
    ):
        self.key = key
        self.run_id = run_id
        self.run_spec = run_spec
        cdef unsigned char unmade = 0
        if dependencies is _MISSING:
            unmade |= UNMADE_DEPENDENCIES
        else:
            self._dependencies = dependencies
        if dependents is _MISSING:
            unmade |= UNMADE_DEPENDENTS
        else:
            self._dependents = dependents
        if waiting_for_data is _MISSING:
            unmade |= UNMADE_WAITING_FOR_DATA
        else:
            self._waiting_for_data = waiting_for_data
        if waiters is _MISSING:
            unmade |= UNMADE_WAITERS
        else:
            self._waiters = waiters
        if who_has is _MISSING:
            unmade |= UNMADE_WHO_HAS
        else:
            self._who_has = who_has
        if resource_restrictions is _MISSING:
            unmade |= UNMADE_RESTRICTIONS
        else:
            self._resource_restrictions = resource_restrictions
        if startstops is _MISSING:
            unmade |= UNMADE_STARTSTOPS
        else:
            self._startstops = startstops
        if metadata is _MISSING:
            unmade |= UNMADE_METADATA
        else:
            self._metadata = metadata
        self._unmade = unmade
        self._state = state_code(state)
        self._previous = optional_state_code(previous)
        self._next = optional_state_code(next)
        self.priority = priority
        self.coming_from = coming_from
        self.exception = exception
        self.traceback = traceback
        self.exception_text = exception_text
        self.traceback_text = traceback_text
        self.type = type
        self.suspicious_count = suspicious_count
        self.start_time = start_time
        self.stop_time = stop_time
        self.nbytes = nbytes
        self.annotations = annotations
        self.span_id = span_id
        self.done = done
        global _next_serial
        self._serial = _next_serial
        _next_serial += 1
        _link(self)

    @property
    def __weakref__(self):
        """The first weak reference to the task, or None (as on a Python class)."""
        return fw_weakrefs(self)

    def __hash__(self):
        if _serial_hash:
            return self._serial
        return _Py_HashPointer(<void*>self)

    def __dealloc__(self):
        _unlink(self)

    # --- sets made on first use ---------------------------------------------------

    @property
    def resource_restrictions(self):
        """Resources the task holds while it runs ({name: amount})."""
        return made_resource_restrictions(self)

    @resource_restrictions.setter
    def resource_restrictions(self, value):
        set_resource_restrictions(self, value)

    @resource_restrictions.deleter
    def resource_restrictions(self):
        set_resource_restrictions(self, None)

    @property
    def startstops(self):
        """The task's compute, transfer and disk actions ({action, start, stop})."""
        return made_startstops(self)

    @startstops.setter
    def startstops(self, list value):
        self._startstops = value
        self._unmade &= ~UNMADE_STARTSTOPS

    @startstops.deleter
    def startstops(self):
        self._startstops = None
        self._unmade &= ~UNMADE_STARTSTOPS

    @property
    def metadata(self):
        """Metadata about the task (e.g. set by worker plugins)."""
        return made_metadata(self)

    @metadata.setter
    def metadata(self, value):
        self._metadata = value
        self._unmade &= ~UNMADE_METADATA

    @metadata.deleter
    def metadata(self):
        self._metadata = None
        self._unmade &= ~UNMADE_METADATA

    @property
    def dependencies(self):
        """The tasks this one needs as inputs."""
        return made_dependencies(self)

    @dependencies.setter
    def dependencies(self, set value):
        self._dependencies = value
        self._unmade &= ~UNMADE_DEPENDENCIES

    @property
    def dependents(self):
        """The tasks that need this one as an input."""
        return made_dependents(self)

    @dependents.setter
    def dependents(self, set value):
        self._dependents = value
        self._unmade &= ~UNMADE_DEPENDENTS

    @property
    def waiting_for_data(self):
        """The dependencies not yet in memory here."""
        return made_waiting_for_data(self)

    @waiting_for_data.setter
    def waiting_for_data(self, set value):
        self._waiting_for_data = value
        self._unmade &= ~UNMADE_WAITING_FOR_DATA

    @property
    def waiters(self):
        """The dependents waiting for this task's data."""
        return made_waiters(self)

    @waiters.setter
    def waiters(self, set value):
        self._waiters = value
        self._unmade &= ~UNMADE_WAITERS

    @property
    def who_has(self):
        """The addresses of the peers that hold this task's data."""
        return made_who_has(self)

    @who_has.setter
    def who_has(self, set value):
        self._who_has = value
        self._unmade &= ~UNMADE_WHO_HAS

    # --- state as an enum, shown as a string -------------------------------------

    @property
    def state(self):
        """The current state of the task, one of ``TASK_STATES``."""
        return state_name(self._state)

    @state.setter
    def state(self, value):
        self._state = state_code(value)

    @property
    def previous(self):
        """The state before cancelled/resumed (executing, long-running or flight), or None."""
        return state_name(self._previous)

    @previous.setter
    def previous(self, value):
        self._previous = optional_state_code(value)

    @property
    def next(self):
        """The state a resumed task goes to next (fetch or waiting), or None."""
        return state_name(self._next)

    @next.setter
    def next(self, value):
        self._next = optional_state_code(value)

    # --- prefix, derived from the key on first use -------------------------------

    cdef object get_prefix(self):
        if self._prefix is None:
            self._prefix = _key_split(self.key)
        return self._prefix

    @property
    def prefix(self):
        """Task prefix: the leftmost part of the key (``key_split(key)``)."""
        return self.get_prefix()

    @prefix.setter
    def prefix(self, value):
        self._prefix = value

    # --- behaviour ---------------------------------------------------------------

    def __repr__(self):
        cdef TaskStateCode s = self._state
        if s == TS_CANCELLED:
            state = f"cancelled({state_name(self._previous)})"
        elif s == TS_RESUMED:
            state = f"resumed({state_name(self._previous)}->{state_name(self._next)})"
        else:
            state = state_name(s)
        return f"<TaskState {self.key!r} {state}>"

    cpdef Py_ssize_t get_nbytes(self) except? -1:
        """``nbytes``, or distributed.scheduler.default-data-size if it is unknown."""
        nbytes = self.nbytes
        return nbytes if nbytes is not None else _default_data_size()

    def _to_dict_no_nest(self, *, exclude=()):
        """Dictionary representation for debugging, exactly as stock's.

        Public non-callable fields that are truthy, ``prefix`` left out; tasks that
        this one references are shown by their repr (see ``recursive_to_dict``).
        """
        members = {}
        for name in self._dumped_fields:
            if name in exclude:
                continue
            value = getattr(self, name)
            if not callable(value):
                members[name] = value
        out = recursive_to_dict(members, exclude=exclude)
        return {k: v for k, v in out.items() if v}

    # --- pickling ----------------------------------------------------------------

    def __reduce__(self):
        # Fields travel as state (not constructor arguments) so that cycles between
        # dependencies and dependents pickle: the object is memoised first.
        return (_new_empty, (type(self),), self.__getstate__())

    def __getstate__(self):
        return _getstate(self)

    def __setstate__(self, state):
        _setstate(self, state)


cdef tuple _getstate(TaskState self):
    return (
        self.key, self._prefix, self.run_id, self.run_spec, self.dependencies,
        self.dependents, self.waiting_for_data, self.waiters, self.state,
        self.previous, self.next, self.priority, self.who_has, self.coming_from,
        self.resource_restrictions, self.exception, self.traceback,
        self.exception_text, self.traceback_text, self.type,
        self.suspicious_count, self.startstops, self.start_time, self.stop_time,
        self.metadata, self.nbytes, self.annotations, self.span_id, self.done,
    )


cdef _setstate(TaskState self, tuple state):
    (
        self.key, self._prefix, self.run_id, self.run_spec, self.dependencies,
        self.dependents, self.waiting_for_data, self.waiters, self.state,
        self.previous, self.next, self.priority, self.who_has, self.coming_from,
        self.resource_restrictions, self.exception, self.traceback,
        self.exception_text, self.traceback_text, self.type,
        self.suspicious_count, self.startstops, self.start_time, self.stop_time,
        self.metadata, self.nbytes, self.annotations, self.span_id, self.done,
    ) = state


cdef class TaskStateWithDuration(TaskState):
    """TaskState of distributed 2024.11.0 to 2025.1.0, whose stock TaskState has a
    ``duration`` field (expected duration, after ``next``; set by compute-task).
    ``fastworker.TaskState`` is this class next to those releases."""

    _dumped_fields = _DUMPED_FIELDS_WITH_DURATION

    def __init__(
        self,
        key,
        run_id=-1,
        run_spec=None,
        dependencies=_MISSING,
        dependents=_MISSING,
        waiting_for_data=_MISSING,
        waiters=_MISSING,
        state="released",
        previous=None,
        next=None,
        duration=None,
        priority=None,
        who_has=_MISSING,
        coming_from=None,
        resource_restrictions=_MISSING,
        exception=None,
        traceback=None,
        exception_text="",
        traceback_text="",
        type=None,
        suspicious_count=0,
        startstops=_MISSING,
        start_time=None,
        stop_time=None,
        metadata=_MISSING,
        nbytes=None,
        annotations=None,
        span_id=None,
        done=False,
    ):
        TaskState.__init__(
            self, key, run_id, run_spec, dependencies, dependents, waiting_for_data,
            waiters, state, previous, next, priority, who_has, coming_from,
            resource_restrictions, exception, traceback, exception_text, traceback_text,
            type, suspicious_count, startstops, start_time, stop_time, metadata, nbytes,
            annotations, span_id, done,
        )
        self.duration = duration

    def __getstate__(self):
        return _getstate(self) + (self.duration,)

    def __setstate__(self, tuple state):
        # (this module is compiled with wraparound=False: no negative indices)
        cdef Py_ssize_t last = len(state) - 1
        _setstate(self, state[:last])
        self.duration = state[last]


# --- task prefixes ------------------------------------------------------------------
# dask.utils.key_split is an lru_cache'd Python function; the keys of a worker's
# tasks are nearly all distinct, so nearly every task pays a cache miss and the
# Python body. _key_split gives the same string without it for the common key
# shapes (an ASCII str starting with a letter, or a tuple whose first item is one)
# and calls key_split for everything else.

cdef inline bint _ascii_alpha(Py_UCS4 c) noexcept:
    return (c >= 'a' and c <= 'z') or (c >= 'A' and c <= 'Z')


# _key_split's last results (interned ASCII strings), replaced round robin.
cdef enum:
    _RECENT_PREFIXES = 4
cdef tuple _recent_prefixes = ("", "", "", "")
cdef Py_ssize_t _recent_next = 0


cdef object _key_split(object key):
    cdef object s = key
    cdef Py_ssize_t n, i, start, end, result_end
    cdef Py_UCS4 c
    cdef bint alpha
    if type(s) is tuple:
        if not PyTuple_GET_SIZE(s):
            return key_split(key)
        s = <object>PyTuple_GET_ITEM(s, 0)
    if type(s) is not str or not PyUnicode_IS_ASCII(s):
        return key_split(key)
    n = PyUnicode_GET_LENGTH(s)
    if n == 0 or not _ascii_alpha(PyUnicode_READ_CHAR(s, 0)):
        return key_split(key)
    # key_split: the first "-"-separated word (it starts with a letter), then each
    # following word while it is alphabetic and not 8 letters starting with a-f
    # (hex_pattern.match); the result is always a prefix of the string.
    i = 0
    while i < n and PyUnicode_READ_CHAR(s, i) != '-':
        i += 1
    result_end = i
    while result_end < n:
        start = result_end + 1
        end = start
        alpha = True
        while end < n:
            c = PyUnicode_READ_CHAR(s, end)
            if c == '-':
                break
            if not _ascii_alpha(c):
                alpha = False
            end += 1
        if not alpha or end == start:
            break
        if end - start == 8:
            c = PyUnicode_READ_CHAR(s, start)
            if c >= 'a' and c <= 'f':
                break
        result_end = end
    if result_end == 32:
        return key_split(key)  # maybe a 32-digit hex token: key_split says "data"
    # The last prefixes made, most often the prefix of this key as well (keys come
    # in runs of one prefix): returned without making the substring again.
    cdef Py_ssize_t j
    cdef const char* data = <const char*>PyUnicode_1BYTE_DATA(s)
    for j in range(_RECENT_PREFIXES):
        recent = <object>PyTuple_GET_ITEM(_recent_prefixes, j)
        if (PyUnicode_GET_LENGTH(recent) == result_end
                and memcmp(PyUnicode_1BYTE_DATA(recent), data, result_end) == 0):
            return recent
    result = s if result_end == n else PyUnicode_Substring(s, 0, result_end)
    # sys.intern(result)
    cdef PyObject* interned = <PyObject*>result
    Py_INCREF(result)
    PyUnicode_InternInPlace(&interned)
    out = <object>interned
    Py_DECREF(<object>interned)
    global _recent_prefixes, _recent_next
    recent_list = list(_recent_prefixes)
    recent_list[_recent_next] = out
    _recent_prefixes = tuple(recent_list)
    _recent_next = (_recent_next + 1) % _RECENT_PREFIXES
    return out


def _key_split_for_tests(key):
    """_key_split, for the tests that compare it with dask's key_split."""
    return _key_split(key)


cdef TaskState _alloc_task():
    return TaskState.__new__(TaskState)


cdef TaskState _alloc_task_with_duration():
    return TaskStateWithDuration.__new__(TaskStateWithDuration)


# Which class new_task makes: chosen once, for the installed distributed release.
cdef TaskState (*_alloc)()
if _features().taskstate_duration:
    _alloc = _alloc_task_with_duration
    #: The TaskState class of the installed release (what fastworker.TaskState is).
    RELEASE_TASKSTATE = TaskStateWithDuration
else:
    _alloc = _alloc_task
    RELEASE_TASKSTATE = TaskState


cdef TaskState new_task(object key):
    # The defaults of TaskState.__init__; tp_new has already set every object
    # field to None and every C field to 0 (TS_RELEASED, run_id 0, done False).
    cdef TaskState ts = _alloc()
    global _next_serial
    ts.key = key
    ts.run_id = -1
    ts._unmade = UNMADE_ALL
    ts._previous = TS_NONE
    ts._next = TS_NONE
    ts.exception_text = ""
    ts.traceback_text = ""
    ts._serial = _next_serial
    _next_serial += 1
    _link(ts)
    return ts


# --- garbage collector traversal --------------------------------------------------
# Cython's generated tp_traverse calls the visitor on every object field, None
# included: 23 calls per task, each time a collection looks at it. Most fields of
# most tasks hold None (the sets still to be made, no exception, no run_spec on a
# fetched task), and visiting None does nothing (it is not tracked by the collector),
# so these traversals visit every field but those that hold None. Same references
# to every tracked object; only gc.get_referents(ts) no longer lists None.

from fastworker.typeslots cimport (
    SlotsTypeObject as _TypeObject,
    hashfunc as _hashfunc,
    traverseproc as _traverseproc,
    visitproc as _visitproc,
)


cdef inline int _visit(PyObject* p, _visitproc visit, void* arg) noexcept:
    if p is NULL or p == <PyObject*>None:
        return 0
    return visit(p, arg)


cdef int _traverse_task(TaskState ts, _visitproc visit, void* arg) noexcept:
    cdef int e
    # (in the order of the fields, as the generated function visits them)
    e = _visit(<PyObject*>ts.key, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts._prefix, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.run_spec, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts._dependencies, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts._dependents, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts._waiting_for_data, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts._waiters, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.priority, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts._who_has, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.coming_from, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts._resource_restrictions, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.exception, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.traceback, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.exception_text, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.traceback_text, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.type, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts._startstops, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.start_time, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.stop_time, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts._metadata, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.nbytes, visit, arg)
    if e:
        return e
    e = _visit(<PyObject*>ts.annotations, visit, arg)
    if e:
        return e
    return _visit(<PyObject*>ts.span_id, visit, arg)


cdef int _traverse_task_with_duration(TaskStateWithDuration ts, _visitproc visit,
                                      void* arg) noexcept:
    cdef int e = _traverse_task(ts, visit, arg)
    if e:
        return e
    return _visit(<PyObject*>ts.duration, visit, arg)


(<_TypeObject*>TaskState).tp_traverse = <_traverseproc><void*>_traverse_task
(<_TypeObject*>TaskStateWithDuration).tp_traverse = (
    <_traverseproc><void*>_traverse_task_with_duration)


# The hash slot itself (TaskState.__hash__ above, without the wrapper that a
# Python-level __hash__ gets in the type's tp_hash).
cdef Py_hash_t _hash_task(TaskState ts) noexcept:
    cdef Py_hash_t h
    if _serial_hash:
        h = ts._serial
        return -2 if h == -1 else h
    return _Py_HashPointer(<void*>ts)


(<_TypeObject*>TaskState).tp_hash = <_hashfunc><void*>_hash_task
(<_TypeObject*>TaskStateWithDuration).tp_hash = <_hashfunc><void*>_hash_task

# cython: language_level=3, boundscheck=False, wraparound=False
# cython: embedsignature=True, binding=True
"""Compiled drop-in for :class:`distributed.worker_state_machine.WorkerState`.

Turns events (distributed's ``StateMachineEvent`` subclasses) into instructions
(distributed's own ``Instruction`` classes) and new task states, exactly as the
stock state machine of the supported release does: same instructions in the same
order, same states, logs and stories, same exceptions. Transitions are dispatched
by a C switch on the (start, finish) pair of state enums; events by a
class-to-code table instead of ``singledispatchmethod``.
"""
import logging
import math
import random
from collections import Counter, defaultdict, deque
from heapq import heapify, heappop, heappush
from itertools import chain

import dask
from dask.utils import typename

from distributed._stories import worker_story
from distributed.comm import get_address_host
from distributed.core import error_message
from distributed.protocol import pickle
from distributed.sizeof import safe_sizeof
from distributed.utils import recursive_to_dict
from distributed.worker_state_machine import (
    WAITING_FOR_DATA,
    AcquireReplicasEvent,
    AddKeysMsg,
    CancelComputeEvent,
    ComputeTaskEvent,
    Execute,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FindMissingEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepBusyEvent,
    GatherDepFailureEvent,
    GatherDepNetworkFailureEvent,
    GatherDepSuccessEvent,
    InvalidTaskState,
    InvalidTransition,
    LongRunningMsg,
    PauseEvent,
    RecommendationsConflict,
    RefreshWhoHasEvent,
    ReleaseWorkerDataMsg,
    RemoveReplicasEvent,
    RemoveWorkerEvent,
    RequestRefreshWhoHasMsg,
    RescheduleEvent,
    RescheduleMsg,
    RetryBusyWorkerEvent,
    RetryBusyWorkerLater,
    SecedeEvent,
    StealRequestEvent,
    StealResponseMsg,
    TaskErredMsg,
    TaskFinishedMsg,
    TransitionCounterMaxExceeded,
    UnpauseEvent,
    UpdateDataEvent,
    merge_recs_instructions,
)
from distributed.worker_state_machine import TaskState as StockTaskState

from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

from fastworker.heap cimport PriorityHeapSet
from fastworker.taskstate cimport (
    STATE_NAMES,
    TS_CANCELLED,
    TS_CONSTRAINED,
    TS_ERROR,
    TS_EXECUTING,
    TS_FETCH,
    TS_FLIGHT,
    TS_FORGOTTEN,
    TS_LONG_RUNNING,
    TS_MEMORY,
    TS_MISSING,
    TS_NONE,
    TS_READY,
    TS_RELEASED,
    TS_RESCHEDULED,
    TS_RESUMED,
    TS_WAITING,
    UNMADE_DEPENDENCIES,
    UNMADE_DEPENDENTS,
    UNMADE_WAITERS,
    UNMADE_WAITING_FOR_DATA,
    UNMADE_WHO_HAS,
    TaskState,
    made_dependencies,
    made_dependents,
    made_waiters,
    made_waiting_for_data,
    made_who_has,
    new_task,
    state_code,
)

__all__ = ["WorkerState"]

cdef class TaskCounter


# Same logger as stock, so that users' and tests' log capture keeps working.
logger = logging.getLogger("distributed.worker.state_machine")

cdef object _RUN_ID_SENTINEL = -1

cdef object _DEBUG = logging.DEBUG
cdef bint _PLAIN_LOGGER = type(logger) is logging.Logger


cdef bint _debug_enabled() except -1:
    """logger.isEnabledFor(logging.DEBUG), read once per handle_stimulus call.

    A plain Logger answers False while ``disabled``, else from ``_cache`` (which
    logging clears whenever a level changes), and only computes and caches the
    answer on a miss; the same is done here without the method call.
    """
    if not _PLAIN_LOGGER or "isEnabledFor" in logger.__dict__:
        return logger.isEnabledFor(_DEBUG)
    if logger.disabled:
        return False
    cache = logger.__dict__.get("_cache")
    if type(cache) is dict:
        answer = (<dict>cache).get(_DEBUG)
        if answer is not None:
            return answer
    return logger.isEnabledFor(_DEBUG)

# Most transitions and events recommend nothing and instruct nothing. They return
# these shared empties instead of a fresh dict, list and tuple each (fewer objects
# for the garbage collector). Internal callers only read what a transition returns;
# the Python-facing _transition/_handle_event hand out fresh copies.
cdef dict _NO_RECS = {}
cdef list _NO_INSTR = []
cdef tuple _NOTHING = (_NO_RECS, _NO_INSTR)


cdef inline tuple _fresh(tuple result):
    recs, instructions = result
    if recs is _NO_RECS or instructions is _NO_INSTR:
        return dict(recs), list(instructions)
    return result
cdef object _EMPTY_TUPLE = ()


# A task's sets are made on first use (taskstate.pxd). Code that only reads one
# gets this empty stand-in meanwhile instead of making it; code that removes from
# one skips it. (A set field a user set to None stays None and fails as before.)
cdef frozenset _NOT_MADE = frozenset()


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


cdef inline object _who_has(TaskState ts):
    if ts._unmade & UNMADE_WHO_HAS:
        return _NOT_MADE
    return ts._who_has


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


cdef inline object _name(int code):
    return STATE_NAMES[code]


cdef int _finish_code(object finish) except -1:
    """The enum code of a requested finish state; TS_NONE (no transition has it as
    finish) for anything that is not a state name."""
    try:
        return state_code(finish)
    except ValueError:
        return TS_NONE


cdef inline int _pair(int start, int finish) noexcept:
    return start * 16 + finish


# What _to_memory tells the scheduler.
cdef enum MemoryMsg:
    MSG_NONE = 0
    MSG_ADD_KEYS
    MSG_TASK_FINISHED


# Event classes -> handler codes; subclasses are resolved through the MRO once.
cdef enum EventCode:
    EV_UPDATE_DATA = 1
    EV_FREE_KEYS
    EV_REMOVE_REPLICAS
    EV_ACQUIRE_REPLICAS
    EV_COMPUTE_TASK
    EV_GATHER_DEP_SUCCESS
    EV_GATHER_DEP_BUSY
    EV_GATHER_DEP_NETWORK_FAILURE
    EV_GATHER_DEP_FAILURE
    EV_REMOVE_WORKER
    EV_SECEDE
    EV_STEAL_REQUEST
    EV_PAUSE
    EV_UNPAUSE
    EV_RETRY_BUSY_WORKER
    EV_CANCEL_COMPUTE
    EV_EXECUTE_SUCCESS
    EV_EXECUTE_FAILURE
    EV_RESCHEDULE
    EV_FIND_MISSING
    EV_REFRESH_WHO_HAS

cdef dict _EVENT_CODES = {
    UpdateDataEvent: EV_UPDATE_DATA,
    FreeKeysEvent: EV_FREE_KEYS,
    RemoveReplicasEvent: EV_REMOVE_REPLICAS,
    AcquireReplicasEvent: EV_ACQUIRE_REPLICAS,
    ComputeTaskEvent: EV_COMPUTE_TASK,
    GatherDepSuccessEvent: EV_GATHER_DEP_SUCCESS,
    GatherDepBusyEvent: EV_GATHER_DEP_BUSY,
    GatherDepNetworkFailureEvent: EV_GATHER_DEP_NETWORK_FAILURE,
    GatherDepFailureEvent: EV_GATHER_DEP_FAILURE,
    RemoveWorkerEvent: EV_REMOVE_WORKER,
    SecedeEvent: EV_SECEDE,
    StealRequestEvent: EV_STEAL_REQUEST,
    PauseEvent: EV_PAUSE,
    UnpauseEvent: EV_UNPAUSE,
    RetryBusyWorkerEvent: EV_RETRY_BUSY_WORKER,
    CancelComputeEvent: EV_CANCEL_COMPUTE,
    ExecuteSuccessEvent: EV_EXECUTE_SUCCESS,
    ExecuteFailureEvent: EV_EXECUTE_FAILURE,
    RescheduleEvent: EV_RESCHEDULE,
    FindMissingEvent: EV_FIND_MISSING,
    RefreshWhoHasEvent: EV_REFRESH_WHO_HAS,
}
cdef dict _RESOLVED_EVENT_CODES = dict(_EVENT_CODES)


cdef int _event_code(object cls) except -1:
    code = _RESOLVED_EVENT_CODES.get(cls)
    if code is not None:
        return code
    for base in cls.__mro__[1:]:
        code = _EVENT_CODES.get(base)
        if code is not None:
            _RESOLVED_EVENT_CODES[cls] = code
            return code
    return 0


# --- stimulus log entries ------------------------------------------------------------
# Stock logs ``stim.to_loggable(handled=...)``: the event itself, or for four event
# classes a ``copy.copy`` with the bulky payload blanked. copy.copy of a slotted
# dataclass goes through __reduce_ex__ and copyreg; the same shallow copy is made
# here slot by slot. Classes whose to_loggable is not one of the known ones (user
# subclasses) are asked to make their own entry.
cdef enum LoggableKind:
    LOG_OWN = 0          # call stim.to_loggable
    LOG_IN_PLACE         # StateMachineEvent.to_loggable: set handled, log the event
    LOG_NO_RUN_SPEC      # ComputeTaskEvent: copy, run_spec = None
    LOG_NO_VALUE         # ExecuteSuccessEvent: copy, value = None
    LOG_DATA_KEYS        # GatherDepSuccessEvent / UpdateDataEvent: copy, data values None

cdef dict _LOGGABLE = {}  # event class -> (LoggableKind, slot names, slot offsets or None)


cdef tuple _loggable_kind(object cls):
    import copyreg

    from distributed.worker_state_machine import StateMachineEvent

    method = cls.to_loggable
    if method is StateMachineEvent.to_loggable:
        kind = LOG_IN_PLACE
    elif method is ComputeTaskEvent.to_loggable and cls._clean is ComputeTaskEvent._clean:
        kind = LOG_NO_RUN_SPEC
    elif method is ExecuteSuccessEvent.to_loggable:
        kind = LOG_NO_VALUE
    elif method is GatherDepSuccessEvent.to_loggable or method is UpdateDataEvent.to_loggable:
        kind = LOG_DATA_KEYS
    else:
        kind = LOG_OWN
    # copy.copy of these objects: a new instance with the slots that are set
    if cls.__dictoffset__ or cls.__new__ is not StateMachineEvent.__new__:
        kind = LOG_OWN  # an instance __dict__ or its own __new__: let it copy itself
    slots = tuple(copyreg._slotnames(cls))
    entry = (kind, slots, _slot_offsets(cls, slots))
    _LOGGABLE[cls] = entry
    return entry


cdef extern from *:
    """
    #include <structmember.h>
    /* The offset of a plain object slot (what __slots__ makes: T_OBJECT_EX,
       writable) behind member descriptor descr; -1 for any other descriptor. */
    static Py_ssize_t fw_slot_offset(PyObject *descr) {
        PyMemberDef *m;
        if (Py_TYPE(descr) != &PyMemberDescr_Type) return -1;
        m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return -1;
        return m->offset;
    }
    /* copy.copy of an instance whose state is only object slots at these offsets:
       a new instance of the same class, and every slot that is set, shared. */
    static PyObject *fw_copy_slots(PyObject *obj, PyObject *offsets) {
        PyTypeObject *tp = Py_TYPE(obj);
        Py_ssize_t i, n = PyTuple_GET_SIZE(offsets);
        PyObject *out = tp->tp_alloc(tp, 0);
        if (out == NULL) return NULL;
        for (i = 0; i < n; i++) {
            Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(offsets, i));
            PyObject *v = *(PyObject **)((char *)obj + off);
            Py_XINCREF(v);
            *(PyObject **)((char *)out + off) = v;
        }
        return out;
    }
    """
    Py_ssize_t fw_slot_offset(object descr)
    object fw_copy_slots(object obj, tuple offsets)


cdef object _slot_offsets(object cls, tuple slots):
    """The offsets of cls's slots when getattr/setattr on them only read and write
    the slot itself (plain member descriptors, object's attribute access); else
    None, and instances are copied slot by slot through getattr/setattr."""
    if (
        cls.__getattribute__ is not object.__getattribute__
        or cls.__setattr__ is not object.__setattr__
        or getattr(cls, "__getattr__", None) is not None
    ):
        return None
    offsets = []
    for name in slots:
        for base in cls.__mro__:
            if name in base.__dict__:
                descr = base.__dict__[name]
                break
        else:
            return None
        offset = fw_slot_offset(descr)
        if offset < 0:
            return None
        offsets.append(offset)
    return tuple(offsets)


cdef object _shallow_copy(object obj, tuple entry):
    # As copy.copy: a new instance (StateMachineEvent.__new__ only presets
    # ``handled``, which is copied below like every other slot), then the set slots.
    offsets = entry[2]
    if offsets is not None:
        return fw_copy_slots(obj, <tuple>offsets)
    cls = type(obj)
    out = object.__new__(cls)
    for name in <tuple>entry[1]:
        try:
            value = getattr(obj, name)
        except AttributeError:
            continue
        setattr(out, name, value)
    return out


cdef object _to_loggable(object stim, object handled):
    cls = type(stim)
    entry = _LOGGABLE.get(cls)
    if entry is None:
        entry = _loggable_kind(cls)
    cdef int kind = (<tuple>entry)[0]
    if kind == LOG_IN_PLACE:
        stim.handled = handled
        return stim
    if kind == LOG_OWN:
        return stim.to_loggable(handled=handled)
    out = _shallow_copy(stim, <tuple>entry)
    if kind == LOG_NO_RUN_SPEC:
        out.run_spec = None
        out.handled = handled
    elif kind == LOG_NO_VALUE:
        out.handled = handled
        out.value = None
    else:
        out.handled = handled
        out.data = dict.fromkeys(stim.data)
    return out


# --- instructions ----------------------------------------------------------------------
# Instructions are distributed's own dataclasses. Their generated __init__ only stores
# the fields in slots, so the hot ones are made by allocating the instance and storing
# each field at its slot's offset, without a Python frame or attribute lookups.
cdef extern from *:
    """
    static PyObject *fw_alloc(PyObject *cls) {
        PyTypeObject *tp = (PyTypeObject *)cls;
        return tp->tp_alloc(tp, 0);
    }
    /* As setattr on a plain object slot: store v (new reference), drop the old value. */
    static void fw_put(PyObject *obj, Py_ssize_t offset, PyObject *v) {
        PyObject **slot = (PyObject **)((char *)obj + offset);
        PyObject *old = *slot;
        Py_INCREF(v);
        *slot = v;
        Py_XDECREF(old);
    }
    """
    object fw_alloc(object cls)
    void fw_put(object obj, Py_ssize_t offset, object v)


cdef bint _plain_dataclass(object cls, tuple fields):
    """Whether cls(**fields) only stores its fields (no custom __init__/__post_init__)."""
    import dataclasses

    return (
        dataclasses.is_dataclass(cls)
        and tuple(f.name for f in dataclasses.fields(cls)) == fields
        and not hasattr(cls, "__post_init__")
        and getattr(cls.__init__, "__qualname__", "") == f"{cls.__qualname__}.__init__"
    )


cdef object _plain_slots(object cls, tuple fields):
    """The slot offsets of fields, in this order, when cls(**fields) only stores them in
    plain slots of an instance made by object.__new__; else None (call the class)."""
    if not _plain_dataclass(cls, fields) or cls.__new__ is not object.__new__:
        return None
    return _slot_offsets(cls, fields)


cdef object _EXECUTE_SLOTS = _plain_slots(Execute, ("stimulus_id", "key"))


cdef inline object _two_slots(object cls, tuple offsets, object stimulus_id, object value):
    """An instance of the plain slotted dataclass ``cls`` with its (stimulus_id,
    value) slots written at ``offsets``."""
    out = fw_alloc(cls)
    fw_put(out, offsets[0], stimulus_id)
    fw_put(out, offsets[1], value)
    return out


cdef inline object _execute(object key, object stimulus_id):
    if _EXECUTE_SLOTS is None:
        return Execute(key=key, stimulus_id=stimulus_id)
    return _two_slots(Execute, <tuple>_EXECUTE_SLOTS, stimulus_id, key)


cdef object _RELEASE_DATA_SLOTS = _plain_slots(ReleaseWorkerDataMsg, ("stimulus_id", "key"))


cdef inline object _release_worker_data_msg(object key, object stimulus_id):
    if _RELEASE_DATA_SLOTS is None:
        return ReleaseWorkerDataMsg(key=key, stimulus_id=stimulus_id)
    return _two_slots(ReleaseWorkerDataMsg, <tuple>_RELEASE_DATA_SLOTS, stimulus_id, key)


cdef object _ADD_KEYS_SLOTS = _plain_slots(AddKeysMsg, ("stimulus_id", "keys"))


cdef inline object _add_keys_msg(object keys, object stimulus_id):
    if _ADD_KEYS_SLOTS is None:
        return AddKeysMsg(keys=keys, stimulus_id=stimulus_id)
    return _two_slots(AddKeysMsg, <tuple>_ADD_KEYS_SLOTS, stimulus_id, keys)


cdef object _GATHER_DEP_SLOTS = _plain_slots(
    GatherDep, ("stimulus_id", "worker", "to_gather", "total_nbytes")
)


cdef inline object _gather_dep(object worker, object to_gather, object total_nbytes,
                               object stimulus_id):
    if _GATHER_DEP_SLOTS is None:
        return GatherDep(
            worker=worker, to_gather=to_gather, total_nbytes=total_nbytes,
            stimulus_id=stimulus_id,
        )
    cdef tuple offsets = _GATHER_DEP_SLOTS
    out = fw_alloc(GatherDep)
    fw_put(out, offsets[0], stimulus_id)
    fw_put(out, offsets[1], worker)
    fw_put(out, offsets[2], to_gather)
    fw_put(out, offsets[3], total_nbytes)
    return out


# TaskFinishedMsg carries pickle.dumps(type) (which goes through inspect.getmodule)
# and typename(type); for builtin types neither ever changes, so both are kept.
cdef dict _TYPE_INFO = {}


cdef tuple _type_info(object typ):
    info = _TYPE_INFO.get(typ)
    if info is not None:
        return <tuple>info
    try:
        pickled = pickle.dumps(typ)
    except Exception:
        pickled = pickle.dumps(typename(typ))
    info = (pickled, typename(typ))
    if getattr(typ, "__module__", None) == "builtins":
        _TYPE_INFO[typ] = info
    return <tuple>info


cdef tuple _TASK_FINISHED_FIELDS = (
    "stimulus_id", "key", "run_id", "nbytes", "type", "typename", "metadata", "thread",
    "startstops",
)
cdef object _TASK_FINISHED_SLOTS = _plain_slots(TaskFinishedMsg, _TASK_FINISHED_FIELDS)


cdef object _task_finished_msg(object key, object run_id, object nbytes, object typ,
                               object metadata, object thread, object startstops,
                               object stimulus_id):
    pickled, name = _type_info(typ)
    if _TASK_FINISHED_SLOTS is None:
        return TaskFinishedMsg(
            key=key, run_id=run_id, nbytes=nbytes, type=pickled, typename=name,
            metadata=metadata, thread=thread, startstops=startstops,
            stimulus_id=stimulus_id,
        )
    cdef tuple offsets = _TASK_FINISHED_SLOTS
    out = fw_alloc(TaskFinishedMsg)
    fw_put(out, offsets[0], stimulus_id)
    fw_put(out, offsets[1], key)
    fw_put(out, offsets[2], run_id)
    fw_put(out, offsets[3], nbytes)
    fw_put(out, offsets[4], pickled)
    fw_put(out, offsets[5], name)
    fw_put(out, offsets[6], metadata)
    fw_put(out, offsets[7], thread)
    fw_put(out, offsets[8], startstops)
    return out


from distributed.diagnostics.plugin import WorkerPlugin

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


def _new_heap():
    # keyed by .priority, read directly from the task. __cinit__ alone leaves it as
    # PriorityHeapSet() does (empty, default key), without parsing __init__'s keywords;
    # data_needed makes and drops one per peer whenever the peer's queue empties.
    return PriorityHeapSet.__new__(PriorityHeapSet)


# get_address_host(address) is a pure function of the address string; peers are few.
cdef dict _HOSTS = {}


cdef object _host(object address):
    host = _HOSTS.get(address)
    if host is None:
        host = get_address_host(address)
        if len(_HOSTS) < 100_000:
            _HOSTS[address] = host
    return host


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


cdef inline object _heap_pop(object heap):
    if type(heap) is PriorityHeapSet:
        return (<PriorityHeapSet>heap).pop_c()
    return heap.pop()


cdef inline object _heap_peek(object heap):
    if type(heap) is PriorityHeapSet:
        return (<PriorityHeapSet>heap).peek_c()
    return heap.peek()


cdef inline bint _is_ready_or_waiting(int s) noexcept:
    return s == TS_READY or s == TS_CONSTRAINED or s == TS_WAITING


cdef inline bint _is_unreleasable(int s) noexcept:
    # READY | PROCESSING | {"memory"}
    return (
        s == TS_READY or s == TS_CONSTRAINED or s == TS_WAITING or s == TS_EXECUTING
        or s == TS_LONG_RUNNING or s == TS_MEMORY
    )


cdef inline bint _ran_in_thread(int previous) noexcept:
    return previous == TS_EXECUTING or previous == TS_LONG_RUNNING


import inspect as _inspect

from distributed.worker_state_machine import WorkerState as _StockWorkerState

# A compiled __init__ has no introspectable signature; ours is stock's, keyword for
# keyword (tests construct both with every argument).
_INIT_SIGNATURE = _inspect.signature(_StockWorkerState)


cdef class WorkerState:
    """State machine encapsulating the lifetime of all tasks on a worker.

    Compiled equivalent of :class:`distributed.worker_state_machine.WorkerState`
    with the same keyword-only constructor, attributes and methods. ``data``,
    ``threads`` and ``plugins`` are held by reference, never copied. Tasks are
    :class:`fastworker.TaskState` objects.
    """

    __signature__ = _INIT_SIGNATURE

    def __cinit__(self, *args, **kwargs):
        cls = type(self)
        if cls is not WorkerState:
            self._py_transition = cls._transition is not WorkerState._transition
            self._py_handle_event = cls._handle_event is not WorkerState._handle_event
            self._py_transitions = cls._transitions is not WorkerState._transitions

    def __init__(
        self,
        *,
        nthreads=1,
        address=None,
        data=None,
        threads=None,
        plugins=None,
        resources=None,
        transfer_incoming_count_limit=9999,
        validate=True,
        transition_counter_max=False,
        transfer_incoming_bytes_limit=math.inf,
        transfer_message_bytes_limit=math.inf,
    ):
        self.nthreads = nthreads
        if address:
            self._address = address
        self.data = data if data is not None else {}
        self.threads = threads if threads is not None else {}
        self.plugins = plugins if plugins is not None else {}
        self.total_resources = dict(resources) if resources is not None else {}
        self.available_resources = self.total_resources.copy()
        self.validate = validate
        self.tasks = {}
        self.running = True
        self.waiting = set()
        self.has_what = defaultdict(set)
        self.data_needed = defaultdict(_new_heap)
        self.fetch_count = 0
        self.in_flight_workers = {}
        self.busy_workers = set()
        self.transfer_incoming_count_limit = transfer_incoming_count_limit
        self.transfer_incoming_count_total = 0
        self.transfer_incoming_bytes_throttle_threshold = int(10e6)
        self.transfer_incoming_bytes = 0
        self.missing_dep_flight = set()
        self.generation = 0
        self.ready = _new_heap()
        self.constrained = _new_heap()
        self.executing = set()
        self.in_flight_tasks = set()
        self.nbytes = 0
        self.executed_count = 0
        self.long_running = set()
        self.transfer_message_bytes_limit = transfer_message_bytes_limit
        maxlen = dask.config.get("distributed.admin.low-level-log-length")
        self.log = deque(maxlen=maxlen)
        self.stimulus_log = deque(maxlen=maxlen)
        self.task_counter = TaskCounter()
        self.transition_counter = 0
        self.transition_counter_max = transition_counter_max
        self.transfer_incoming_bytes_limit = transfer_incoming_bytes_limit
        self.actors = {}
        self.rng = random.Random(0)

    # --- plain attributes with stock's quirks ---------------------------------------

    @property
    def address(self):
        """The worker's address; unset (AttributeError) until the Worker sets it."""
        if self._address is None:
            raise AttributeError("'WorkerState' object has no attribute 'address'")
        return self._address

    @address.setter
    def address(self, value):
        self._address = value

    @address.deleter
    def address(self):
        self._address = None

    @property
    def executing_count(self):
        """Tasks executing and counting towards nthreads (cancelled ones included)."""
        return len(self.executing)

    @property
    def all_running_tasks(self):
        """All tasks occupying a thread: executing | long_running."""
        return self.executing | self.long_running

    @property
    def in_flight_tasks_count(self):
        """Number of tasks being fetched from other workers."""
        return len(self.in_flight_tasks)

    @property
    def transfer_incoming_count(self):
        """Number of open transfers from other workers."""
        return len(self.in_flight_workers)

    # --- entry point ----------------------------------------------------------------

    def handle_stimulus(self, *stims):
        """Process external events; return the instructions they cause, in order."""
        return self._handle_stimuli(stims)

    cdef list _handle_stimuli(self, tuple stims):
        cdef list instructions = []
        # Read the log level once per call, not once per debug message site.
        self._debug = _debug_enabled()
        handled = _now()
        for stim in stims:
            if not isinstance(stim, FindMissingEvent):
                self.stimulus_log.append(_to_loggable(stim, handled))
            if self._py_handle_event:
                recs, instr = self._handle_event(stim)
            else:
                recs, instr = self._handle_event_c(stim)
            instructions += instr
            if self._py_transitions:
                instructions += self._transitions(recs, stimulus_id=stim.stimulus_id)
            else:
                instructions += self._transitions_c(recs, stim.stimulus_id)
        return instructions

    def _handle_event(self, ev):
        """Dispatch one event to its handler; return (recommendations, instructions)."""
        return _fresh(self._handle_event_c(ev))

    def _transitions(self, recommendations, *, stimulus_id):
        """Process recommendations until none are left; return the instructions."""
        return self._transitions_c(recommendations, stimulus_id)

    def _transition(self, ts, finish, *args, stimulus_id):
        """Transition one task to ``finish`` (a state name or a (state, *args) tuple)."""
        return _fresh(self._transition_c(ts, finish, args, stimulus_id))

    # --- recommendations -----------------------------------------------------------------

    cdef list _transitions_c(self, dict recommendations, object stimulus_id):
        cdef list instructions = []
        cdef dict initial_states = {}
        self._process_recs(recommendations.copy(), instructions, initial_states, stimulus_id)
        recs, instr = self._ensure_communicating(stimulus_id)
        if instr:
            instructions.extend(instr)
        if recs:
            self._process_recs(recs, instructions, initial_states, stimulus_id)
        if type(self.task_counter) is TaskCounter:
            (<TaskCounter>self.task_counter).transitions_c(initial_states)
        else:
            self.task_counter.transitions(initial_states)
        if self.validate:
            for ts in initial_states:
                self.validate_task(ts)
        return instructions

    cdef void _process_recs(self, dict recs, list instructions, dict initial_states,
                            object stimulus_id) except *:
        cdef TaskState ts
        while recs:
            ts, finish = recs.popitem()
            if ts not in initial_states:
                initial_states[ts] = _name(ts._state)
            a_recs, a_instr = self._tr(ts, finish, _EMPTY_TUPLE, stimulus_id)
            # (most transitions return the shared empties: nothing to merge)
            if type(a_recs) is not dict or a_recs:
                recs.update(a_recs)
            if type(a_instr) is not list or a_instr:
                instructions.extend(a_instr)

    cdef tuple _tr(self, TaskState ts, object finish, tuple args, object stimulus_id):
        if self._py_transition:
            return tuple(self._transition(ts, finish, *args, stimulus_id=stimulus_id))
        return self._transition_c(ts, finish, args, stimulus_id)

    cdef tuple _transition_c(self, TaskState ts, object finish, tuple args,
                             object stimulus_id):
        cdef dict recs
        cdef list instructions
        if isinstance(finish, tuple):
            assert not args
            args = (<tuple>finish)[1:]
            finish = (<tuple>finish)[0]
        cdef int start_code = ts._state
        # A finish that is no state at all has no table entry, as in stock: it goes
        # through released and fails there with InvalidTransition.
        cdef int finish_code = _finish_code(finish)
        if start_code == finish_code:
            return _NOTHING
        start = _name(start_code)
        self.transition_counter += 1
        if self.transition_counter_max and self.transition_counter >= self.transition_counter_max:
            raise TransitionCounterMaxExceeded(ts.key, start, finish, self.story(ts))

        result = self._dispatch(ts, start_code, finish_code, args, stimulus_id)
        if result is not None:
            recs, instructions = result
            recs_instr = result
            if self.plugins:
                self._notify_transition(ts.key, start, finish)
        elif start_code != TS_RELEASED and finish_code != TS_RELEASED:
            # No direct route: go through released, then on to the finish state.
            try:
                recs, instructions = self._tr(ts, "released", _EMPTY_TUPLE, stimulus_id)
                while True:
                    v = recs.pop(ts, None)
                    if not v:
                        break
                    if isinstance(v, tuple):
                        v_state = (<tuple>v)[0]
                        v_args = (<tuple>v)[1:]
                    else:
                        v_state = v
                        v_args = _EMPTY_TUPLE
                    if v_state == "forgotten":
                        continue
                    recs, instructions = merge_recs_instructions(
                        (recs, instructions), self._tr(ts, v_state, v_args, stimulus_id)
                    )
                recs, instructions = merge_recs_instructions(
                    (recs, instructions), self._tr(ts, finish, args, stimulus_id)
                )
            except (InvalidTransition, RecommendationsConflict) as e:
                raise InvalidTransition(ts.key, start, finish, self.story(ts)) from e
            recs_instr = (recs, instructions)
        else:
            raise InvalidTransition(ts.key, start, finish, self.story(ts))

        cdef dict shown = {}
        cdef TaskState other
        for other, new in recs.items():
            shown[other.key] = (<tuple>new)[0] if isinstance(new, tuple) else new
        self.log.append(
            (ts.key, start, finish, _name(ts._state), shown, stimulus_id, _now())
        )
        return recs_instr

    cdef void _notify_transition(self, object key, object start, object finish) except *:
        for name, plugin in self.plugins.items():
            if _inherits_noop_transition(plugin):
                continue  # WorkerPlugin.transition does nothing: skip the call
            if hasattr(plugin, "transition"):
                try:
                    plugin.transition(key, start, finish)
                except Exception:
                    logger.info("Plugin '%s' failed with exception", name, exc_info=True)

    # --- the transition table --------------------------------------------------------------

    cdef object _dispatch(self, TaskState ts, int start, int finish, tuple args,
                          object sid):
        """Run the (start, finish) transition; None when the table has no such entry."""
        cdef int pair = _pair(start, finish)
        cdef object v = self.validate

        # --- cancelled ---
        if pair == _pair(TS_CANCELLED, TS_RELEASED) or pair == _pair(TS_CANCELLED, TS_ERROR) \
                or pair == _pair(TS_CANCELLED, TS_MEMORY) or pair == _pair(TS_CANCELLED, TS_MISSING) \
                or pair == _pair(TS_CANCELLED, TS_RESCHEDULED):
            if not ts.done:
                return _NOTHING
            ts._previous = TS_NONE
            ts.done = False
            return self._generic_released(ts)
        if pair == _pair(TS_CANCELLED, TS_FETCH):
            if ts._previous == TS_FLIGHT:
                if ts.done:
                    return {ts: "released"}, _NO_INSTR
                ts._state = TS_FLIGHT
                ts._previous = TS_NONE
                return _NOTHING
            assert _ran_in_thread(ts._previous)
            assert not ts.done
            ts._state = TS_RESUMED
            ts._next = TS_FETCH
            return _NOTHING
        if pair == _pair(TS_CANCELLED, TS_WAITING):
            assert not ts.done
            if ts._previous == TS_EXECUTING:
                ts._state = TS_EXECUTING
                ts._previous = TS_NONE
                return _NOTHING
            if ts._previous == TS_LONG_RUNNING:
                ts._state = TS_LONG_RUNNING
                ts._previous = TS_NONE
                return {}, [LongRunningMsg(
                    key=ts.key, run_id=ts.run_id, compute_duration=None, stimulus_id=sid
                )]
            assert ts._previous == TS_FLIGHT
            ts._state = TS_RESUMED
            ts._next = TS_WAITING
            return _NOTHING
        if pair == _pair(TS_CANCELLED, TS_LONG_RUNNING) or pair == _pair(TS_RESUMED, TS_LONG_RUNNING):
            assert _ran_in_thread(ts._previous)
            ts._previous = TS_LONG_RUNNING
            self.executing.discard(ts)
            self.long_running.add(ts)
            return self._ensure_computing()

        # --- resumed ---
        if pair == _pair(TS_RESUMED, TS_ERROR):
            assert ts.done
            if _ran_in_thread(ts._previous):
                assert ts._next == TS_FETCH
                recs = {ts: "fetch"}
            else:
                assert ts._previous == TS_FLIGHT
                assert ts._next == TS_WAITING
                recs = {ts: "waiting"}
            ts._state = TS_RELEASED
            ts.done = False
            ts._previous = TS_NONE
            ts._next = TS_NONE
            return recs, _NO_INSTR
        if pair == _pair(TS_RESUMED, TS_RESCHEDULED):
            assert ts.done
            assert _ran_in_thread(ts._previous)
            assert ts._next == TS_FETCH
            ts._state = TS_RELEASED
            ts.done = False
            ts._previous = TS_NONE
            ts._next = TS_NONE
            return {ts: "fetch"}, _NO_INSTR
        if pair == _pair(TS_RESUMED, TS_FETCH):
            if ts._previous == TS_FLIGHT:
                if v:
                    assert ts._next == TS_WAITING
                if ts.done:
                    ts._state = TS_RELEASED
                    ts.done = False
                    ts._previous = TS_NONE
                    ts._next = TS_NONE
                    return {ts: "waiting"}, _NO_INSTR
                ts._state = TS_FLIGHT
                ts._previous = TS_NONE
                ts._next = TS_NONE
            elif v:
                assert _ran_in_thread(ts._previous)
                assert ts._next == TS_FETCH
                assert not ts.done
            return _NOTHING
        if pair == _pair(TS_RESUMED, TS_MEMORY):
            if _ran_in_thread(ts._previous):
                assert ts._next == TS_FETCH
                msg_type = MSG_ADD_KEYS
            else:
                assert ts._previous == TS_FLIGHT
                assert ts._next == TS_WAITING
                msg_type = MSG_TASK_FINISHED
            ts._previous = TS_NONE
            ts._next = TS_NONE
            return self._to_memory(ts, args[0], msg_type, args[1], sid)
        if pair == _pair(TS_RESUMED, TS_RELEASED):
            assert not ts.done
            ts._state = TS_CANCELLED
            ts._next = TS_NONE
            return _NOTHING

        # --- ready / constrained / waiting ---
        if pair == _pair(TS_READY, TS_EXECUTING) or pair == _pair(TS_CONSTRAINED, TS_EXECUTING):
            if v:
                assert ts._state == start
                assert not ts.waiting_for_data
                assert ts.key not in self.data
                assert ts not in self.ready
                assert ts not in self.constrained
                for dep in ts.dependencies:
                    assert dep.key in self.data or dep.key in self.actors
            ts._state = TS_EXECUTING
            return {}, [_execute(ts.key, sid)]
        if pair == _pair(TS_CONSTRAINED, TS_RELEASED) or pair == _pair(TS_ERROR, TS_RELEASED) \
                or pair == _pair(TS_READY, TS_RELEASED) or pair == _pair(TS_WAITING, TS_RELEASED):
            return self._generic_released(ts)
        if pair == _pair(TS_WAITING, TS_READY):
            if v:
                self._validate_waiting_to_runnable(ts)
            if ts.resource_restrictions:
                return {ts: "constrained"}, _NO_INSTR
            ts._state = TS_READY
            assert ts.priority is not None
            self.waiting.remove(ts)
            _heap_add(self.ready, ts)
            return self._ensure_computing()
        if pair == _pair(TS_WAITING, TS_CONSTRAINED):
            if v:
                self._validate_waiting_to_runnable(ts)
            ts._state = TS_CONSTRAINED
            self.waiting.remove(ts)
            _heap_add(self.constrained, ts)
            return self._ensure_computing()

        # --- executing / long-running ---
        if pair == _pair(TS_EXECUTING, TS_ERROR) or pair == _pair(TS_LONG_RUNNING, TS_ERROR) \
                or pair == _pair(TS_FLIGHT, TS_ERROR) or pair == _pair(TS_MISSING, TS_ERROR) \
                or pair == _pair(TS_RELEASED, TS_ERROR):
            return self._generic_error(ts, args, sid)
        if pair == _pair(TS_EXECUTING, TS_LONG_RUNNING):
            ts._state = TS_LONG_RUNNING
            self.executing.discard(ts)
            self.long_running.add(ts)
            smsg = LongRunningMsg(
                key=ts.key, run_id=ts.run_id, compute_duration=args[0], stimulus_id=sid
            )
            return merge_recs_instructions(({}, [smsg]), self._ensure_computing())
        if pair == _pair(TS_EXECUTING, TS_MEMORY) or pair == _pair(TS_LONG_RUNNING, TS_MEMORY):
            return self._to_memory(ts, args[0], MSG_TASK_FINISHED, args[1], sid)
        if pair == _pair(TS_EXECUTING, TS_RELEASED) or pair == _pair(TS_LONG_RUNNING, TS_RELEASED):
            if v:
                assert ts._state == TS_EXECUTING or ts._state == TS_LONG_RUNNING
                assert ts._next == TS_NONE
                assert not ts.done
            ts._previous = ts._state
            ts._state = TS_CANCELLED
            return _NOTHING
        if pair == _pair(TS_EXECUTING, TS_RESCHEDULED) or pair == _pair(TS_LONG_RUNNING, TS_RESCHEDULED):
            assert ts.done
            return merge_recs_instructions(
                ({}, [RescheduleMsg(key=ts.key, stimulus_id=sid)]), self._generic_released(ts)
            )

        # --- fetch / flight / missing ---
        if pair == _pair(TS_FETCH, TS_FLIGHT):
            if v:
                assert ts._state == TS_FETCH
                assert ts.who_has
                for w in ts.who_has:
                    assert ts not in self.data_needed[w]
            ts.done = False
            ts._state = TS_FLIGHT
            ts.coming_from = args[0]
            self.in_flight_tasks.add(ts)
            self.fetch_count -= 1
            return _NOTHING
        if pair == _pair(TS_FETCH, TS_MISSING):
            self.fetch_count -= 1
            return self._generic_missing(ts)
        if pair == _pair(TS_FETCH, TS_RELEASED):
            self.fetch_count -= 1
            return self._generic_released(ts)
        if pair == _pair(TS_FLIGHT, TS_FETCH):
            if not ts.done:
                return _NOTHING
            return self._generic_fetch(ts)
        if pair == _pair(TS_FLIGHT, TS_MEMORY):
            return self._to_memory(ts, args[0], MSG_ADD_KEYS, _RUN_ID_SENTINEL, sid)
        if pair == _pair(TS_FLIGHT, TS_MISSING):
            assert ts.done
            return self._generic_missing(ts)
        if pair == _pair(TS_FLIGHT, TS_RELEASED):
            assert not ts.done
            ts._previous = TS_FLIGHT
            ts._next = TS_NONE
            ts._state = TS_CANCELLED
            return _NOTHING
        if pair == _pair(TS_MISSING, TS_FETCH):
            if v:
                assert ts._state == TS_MISSING
            if not _who_has(ts):
                return _NOTHING
            self.missing_dep_flight.discard(ts)
            return self._generic_fetch(ts)
        if pair == _pair(TS_MISSING, TS_RELEASED):
            self.missing_dep_flight.discard(ts)
            result = self._generic_released(ts)
            assert ts.key in self.tasks
            return result
        if pair == _pair(TS_MISSING, TS_WAITING):
            self.missing_dep_flight.discard(ts)
            self._purge_state(ts)
            return self._released_waiting(ts)

        # --- memory / released ---
        if pair == _pair(TS_MEMORY, TS_RELEASED):
            assert ts.nbytes is not None
            self.nbytes -= ts.nbytes
            recs = self._generic_released(ts)[0]
            return recs, [_release_worker_data_msg(ts.key, sid)]
        if pair == _pair(TS_RELEASED, TS_FETCH):
            if v:
                assert ts._state == TS_RELEASED
            return self._generic_fetch(ts)
        if pair == _pair(TS_RELEASED, TS_FORGOTTEN):
            return self._released_forgotten(ts)
        if pair == _pair(TS_RELEASED, TS_MEMORY):
            return self._to_memory(ts, args[0], MSG_NONE, _RUN_ID_SENTINEL, sid)
        if pair == _pair(TS_RELEASED, TS_MISSING):
            return self._generic_missing(ts)
        if pair == _pair(TS_RELEASED, TS_WAITING):
            return self._released_waiting(ts)
        return None

    # --- transition bodies shared by several table entries ------------------------------

    cdef tuple _generic_fetch(self, TaskState ts):
        if not _who_has(ts):
            return {ts: "missing"}, _NO_INSTR
        ts._state = TS_FETCH
        ts.done = False
        self.fetch_count += 1
        assert ts.priority
        data_needed = self.data_needed
        for w in _who_has(ts):
            _heap_add(data_needed[w], ts)
        return _NOTHING

    cdef tuple _generic_missing(self, TaskState ts):
        if self.validate:
            assert not ts.who_has
        ts._state = TS_MISSING
        self.missing_dep_flight.add(ts)
        ts.done = False
        return _NOTHING

    cdef tuple _generic_released(self, TaskState ts):
        cdef TaskState dep
        cdef dict recs = {}
        self._purge_state(ts)
        for dep in _dependencies(ts):
            if not _waiters(dep) and not _is_unreleasable(dep._state):
                recs[dep] = "released"
        ts._state = TS_RELEASED
        if not _dependents(ts):
            recs[ts] = "forgotten"
        return recs, _NO_INSTR

    cdef tuple _generic_error(self, TaskState ts, tuple args, object stimulus_id):
        exception, traceback, exception_text, traceback_text, run_id = args
        ts.exception = exception
        ts.traceback = traceback
        ts.exception_text = exception_text
        ts.traceback_text = traceback_text
        ts._state = TS_ERROR
        smsg = TaskErredMsg.from_task(
            ts, run_id=run_id, stimulus_id=stimulus_id, thread=self.threads.get(ts.key)
        )
        return {}, [smsg]

    cdef tuple _released_waiting(self, TaskState ts):
        cdef TaskState dep
        cdef dict recs = {}
        if self.validate:
            assert all(d.key in self.tasks for d in ts.dependencies)
        if not ts._unmade & UNMADE_WAITING_FOR_DATA:
            ts._waiting_for_data.clear()
        for dep in _dependencies(ts):
            if dep._state != TS_MEMORY:
                made_waiting_for_data(ts).add(dep)
                made_waiters(dep).add(ts)
                recs[dep] = "fetch"
        if not _waiting_for_data(ts):
            recs[ts] = "ready"
        ts._state = TS_WAITING
        self.waiting.add(ts)
        return recs, _NO_INSTR

    cdef tuple _released_forgotten(self, TaskState ts):
        cdef TaskState dep
        cdef dict recs = {}
        if self.validate:
            assert not any(d.state != "forgotten" for d in ts.dependents)
        for dep in _dependencies(ts):
            if not dep._unmade & UNMADE_DEPENDENTS:
                dep._dependents.discard(ts)
            if dep._state == TS_RELEASED and not _dependents(dep):
                recs[dep] = "forgotten"
        self._purge_state(ts)
        ts._state = TS_FORGOTTEN
        self.tasks.pop(ts.key, None)
        return recs, _NO_INSTR

    cdef tuple _to_memory(self, TaskState ts, object value, int msg_type, object run_id,
                          object stimulus_id):
        cdef TaskState dep
        cdef dict recs = {}
        cdef list instructions = []
        cdef double start, stop
        key = ts.key
        if self.validate:
            assert key not in self.data
            assert ts._state != TS_MEMORY
        if key in self.actors:
            self.actors[key] = value
        else:
            start = _now()
            try:
                self.data[key] = value
            except Exception as e:
                msg = error_message(e)
                return {ts: tuple(msg.values()) + (run_id,)}, _NO_INSTR
            stop = _now()
            if stop - start > 0.005:
                ts.startstops.append({"action": "disk-write", "start": start, "stop": stop})
        ts._state = TS_MEMORY
        if ts.nbytes is None:
            ts.nbytes = safe_sizeof(value)
        self.nbytes += ts.nbytes
        ts.type = type(value)
        for dep in _dependents(ts):
            if not dep._unmade & UNMADE_WAITING_FOR_DATA:
                dep._waiting_for_data.discard(ts)
            if not _waiting_for_data(dep) and dep._state == TS_WAITING:
                recs[dep] = "ready"
        self.log.append((key, "put-in-memory", stimulus_id, _now()))
        if msg_type == MSG_ADD_KEYS:
            instructions.append(_add_keys_msg([key], stimulus_id))
        elif msg_type == MSG_TASK_FINISHED:
            assert run_id != _RUN_ID_SENTINEL
            instructions.append(self._get_task_finished_msg(ts, run_id, stimulus_id))
        return recs, instructions

    def _validate_waiting_to_runnable(self, TaskState ts):
        assert ts.state == "waiting"
        assert ts not in self.ready
        assert ts not in self.constrained
        assert not ts.waiting_for_data
        for dep in ts.dependencies:
            assert dep.key in self.data or dep.key in self.actors
            assert dep.state == "memory"

    # --- helpers --------------------------------------------------------------------------

    cdef TaskState _ensure_task_exists(self, object key, object priority,
                                       object stimulus_id):
        cdef TaskState ts = self.tasks.get(key)
        if ts is None:
            ts = new_task(key)
            self.tasks[key] = ts
            _count_new_task(self.task_counter, ts)
        elif self._debug:
            logger.debug("Data task %s already known (stimulus_id=%s)", ts, stimulus_id)
        if not ts.priority:
            assert priority
            ts.priority = priority
        self.log.append((key, "ensure-task-exists", _name(ts._state), stimulus_id, _now()))
        return ts

    cdef int _update_who_has(self, object who_has) except -1:
        cdef TaskState ts
        cdef set workers
        for key, holders in who_has.items():
            ts = self.tasks.get(key)
            if not ts:
                continue
            workers = set(holders)
            if self._address in workers:
                workers.remove(self._address)
                if ts._state != TS_MEMORY:
                    logger.debug(
                        "Scheduler claims worker %s holds data for task %s, which is not true.",
                        self._address, ts,
                    )
            if _who_has(ts) == workers:
                continue
            for worker in _who_has(ts) - workers:
                self.has_what[worker].remove(key)
                if ts._state == TS_FETCH:
                    self.data_needed[worker].remove(ts)
            for worker in workers - _who_has(ts):
                self.has_what[worker].add(key)
                if ts._state == TS_FETCH:
                    _heap_add(self.data_needed[worker], ts)
            ts._who_has = workers
            ts._unmade &= ~UNMADE_WHO_HAS
        return 0

    cdef int _purge_state(self, TaskState ts) except -1:
        cdef TaskState dep
        key = ts.key
        if self._debug:
            logger.debug("Purge task: %s", ts)
        if key in self.data:
            del self.data[key]
        self.actors.pop(key, None)
        self.threads.pop(key, None)
        if _who_has(ts):
            has_what = self.has_what
            data_needed = self.data_needed
            for worker in ts._who_has:
                has_what[worker].discard(key)
                _heap_discard(data_needed[worker], ts)
            ts._who_has.clear()
        for dep in _dependencies(ts):
            if not ts._unmade & UNMADE_WAITING_FOR_DATA:
                ts._waiting_for_data.discard(dep)
            if not dep._unmade & UNMADE_WAITERS:
                dep._waiters.discard(ts)
        if not ts._unmade & UNMADE_WAITING_FOR_DATA:
            ts._waiting_for_data.clear()
        ts.nbytes = None
        ts._previous = TS_NONE
        ts._next = TS_NONE
        ts.done = False
        ts.coming_from = None
        ts.exception = None
        ts.traceback = None
        # Stock resets traceback_text (twice) and leaves exception_text as it was.
        ts.traceback_text = ""
        self.missing_dep_flight.discard(ts)
        _heap_discard(self.ready, ts)
        _heap_discard(self.constrained, ts)
        self.executing.discard(ts)
        self.long_running.discard(ts)
        self.in_flight_tasks.discard(ts)
        self.waiting.discard(ts)
        return 0

    # --- fetching -------------------------------------------------------------------------

    cdef bint _should_throttle_incoming_transfers(self) except -1:
        reached_count_limit = len(self.in_flight_workers) >= self.transfer_incoming_count_limit
        reached_threshold = (
            self.transfer_incoming_bytes >= self.transfer_incoming_bytes_throttle_threshold
        )
        reached_bytes_limit = self.transfer_incoming_bytes >= self.transfer_incoming_bytes_limit
        return (reached_count_limit and reached_threshold) or reached_bytes_limit

    cdef tuple _ensure_communicating(self, object stimulus_id):
        cdef TaskState ts
        cdef list to_gather
        if not self.running or not self.data_needed:
            return _NOTHING
        if self._should_throttle_incoming_transfers():
            return _NOTHING
        cdef dict recs = {}
        cdef list instructions = []
        for worker, available in self._select_workers_for_gather():
            assert worker != self._address
            to_gather = []
            message_nbytes = 0
            while available:
                ts = _heap_peek(available)
                if self._task_exceeds_transfer_limits(ts, message_nbytes):
                    break
                for w in _who_has(ts):
                    self.data_needed[w].remove(ts)
                to_gather.append(ts)
                message_nbytes += ts.get_nbytes()
            assert to_gather or self.transfer_incoming_bytes
            if not to_gather:
                break
            to_gather_keys = {ts.key for ts in to_gather}
            if self._debug:
                logger.debug(
                    "Gathering %d tasks from %s; %d more remain. Pending workers: %d; "
                    "connections: %d/%d; busy: %d",
                    len(to_gather), worker, len(available), len(self.data_needed),
                    len(self.in_flight_workers), self.transfer_incoming_count_limit,
                    len(self.busy_workers),
                )
            self.log.append(("gather-dependencies", worker, to_gather_keys, stimulus_id, _now()))
            for ts in to_gather:
                if self.validate:
                    assert ts._state == TS_FETCH
                    assert worker in ts.who_has
                    assert ts not in recs
                recs[ts] = ("flight", worker)
            instructions.append(
                _gather_dep(worker, to_gather_keys, message_nbytes, stimulus_id)
            )
            self.in_flight_workers[worker] = to_gather_keys
            self.transfer_incoming_count_total += 1
            self.transfer_incoming_bytes += message_nbytes
            if self._should_throttle_incoming_transfers():
                break
        return recs, instructions

    cdef object _select_workers_for_gather(self):
        # Stock walks this as a generator, interleaved with the gathers it causes; the
        # candidates' order depends on queue lengths that those gathers change, so the
        # whole selection is replayed lazily through _GatherOrder below.
        return _GatherOrder(self)

    cdef bint _task_exceeds_transfer_limits(self, TaskState ts, object message_nbytes) except -1:
        if self.transfer_incoming_bytes == 0 and message_nbytes == 0:
            return False
        allowance = self.transfer_incoming_bytes_limit - self.transfer_incoming_bytes
        if message_nbytes != 0:
            allowance = min(allowance, self.transfer_message_bytes_limit) - message_nbytes
        return ts.get_nbytes() > allowance

    # --- computing ------------------------------------------------------------------------

    cdef tuple _ensure_computing(self):
        cdef TaskState ts
        if not self.running:
            return {}, _NO_INSTR
        cdef dict recs = {}
        while len(self.executing) < self.nthreads:
            ts = self._next_ready_task()
            if ts is None:
                break
            if self.validate:
                assert ts._state == TS_READY or ts._state == TS_CONSTRAINED
                assert ts not in recs
            recs[ts] = "executing"
            self._acquire_resources(ts)
            self.executing.add(ts)
        return recs, _NO_INSTR

    cdef TaskState _next_ready_task(self):
        cdef TaskState tsr, tsc
        ready = self.ready
        constrained = self.constrained
        if ready and constrained:
            tsr = _heap_peek(ready)
            tsc = _heap_peek(constrained)
            assert tsr.priority
            assert tsc.priority
            if tsc.priority < tsr.priority and self._resource_restrictions_satisfied(tsc):
                return _heap_pop(constrained)
            return _heap_pop(ready)
        if ready:
            return _heap_pop(ready)
        if constrained:
            tsc = _heap_peek(constrained)
            if self._resource_restrictions_satisfied(tsc):
                return _heap_pop(constrained)
        return None

    cdef bint _resource_restrictions_satisfied(self, TaskState ts) except -1:
        if not ts.resource_restrictions:
            return True
        available = self.available_resources
        for resource, needed in ts.resource_restrictions.items():
            if not available[resource] >= needed:
                return False
        return True

    cdef int _acquire_resources(self, TaskState ts) except -1:
        if ts.resource_restrictions:
            available = self.available_resources
            for resource, needed in ts.resource_restrictions.items():
                available[resource] -= needed
        return 0

    cdef int _release_resources(self, TaskState ts) except -1:
        if ts.resource_restrictions:
            available = self.available_resources
            for resource, needed in ts.resource_restrictions.items():
                available[resource] += needed
        return 0

    cdef object _get_task_finished_msg(self, TaskState ts, object run_id, object stimulus_id):
        if self.validate:
            assert ts._state == TS_MEMORY
            assert ts.key in self.data or ts.key in self.actors
            assert ts.type is not None
        assert ts.nbytes is not None
        return _task_finished_msg(
            ts.key, run_id, ts.nbytes, ts.type, ts.metadata, self.threads.get(ts.key),
            ts.startstops, stimulus_id,
        )

    # --- events ---------------------------------------------------------------------------

    cdef tuple _handle_event_c(self, object ev):
        cdef int code = _event_code(type(ev))
        cdef TaskState ts
        cdef dict recs
        cdef list instructions
        if not code:
            raise TypeError(ev)
        sid = ev.stimulus_id

        if code == EV_COMPUTE_TASK:
            return self._handle_compute_task(ev)
        if code == EV_EXECUTE_SUCCESS:
            ts, recs, instructions = self._execute_done_common(ev)
            ts.startstops.append({"action": "compute", "start": ev.start, "stop": ev.stop})
            ts.nbytes = ev.nbytes
            ts.type = ev.type
            recs[ts] = ("memory", ev.value, ev.run_id)
            return recs, instructions
        if code == EV_EXECUTE_FAILURE:
            ts, recs, instructions = self._execute_done_common(ev)
            if ev.start is not None and ev.stop is not None:
                ts.startstops.append({"action": "compute", "start": ev.start, "stop": ev.stop})
            recs[ts] = ("error", ev.exception, ev.traceback, ev.exception_text,
                        ev.traceback_text, ev.run_id)
            return recs, instructions
        if code == EV_RESCHEDULE:
            ts, recs, instructions = self._execute_done_common(ev)
            recs[ts] = "rescheduled"
            return recs, instructions
        if code == EV_FREE_KEYS:
            self.log.append(("free-keys", ev.keys, sid, _now()))
            recs = {}
            for key in ev.keys:
                ts = self.tasks.get(key)
                if ts:
                    recs[ts] = "released"
            return recs, _NO_INSTR
        if code == EV_UPDATE_DATA:
            recs = {}
            for key, value in ev.data.items():
                ts = self.tasks.get(key)
                if ts is None:
                    ts = new_task(key)
                    self.tasks[key] = ts
                    _count_new_task(self.task_counter, ts)
                recs[ts] = ("memory", value, _RUN_ID_SENTINEL)
                self.log.append((key, "receive-from-scatter", _name(ts._state), sid, _now()))
            return recs, _NO_INSTR
        if code == EV_REMOVE_REPLICAS:
            recs = {}
            for key in ev.keys:
                ts = self.tasks.get(key)
                if ts is None or ts._state != TS_MEMORY:
                    continue
                for dep in _dependents(ts):
                    if dep.state in ("executing", "long-running"):
                        raise RuntimeError(
                            f"Cannot remove replica of {ts.key!r} while {dep.key!r} "
                            f"in state {dep.state!r}."
                        )
                self.log.append((ts.key, "remove-replica", sid, _now()))
                recs[ts] = "released"
            return recs, _NO_INSTR
        if code == EV_ACQUIRE_REPLICAS:
            if self.validate:
                assert ev.who_has.keys() == ev.nbytes.keys()
                assert all(ev.who_has.values())
            recs = {}
            for key, nbytes in ev.nbytes.items():
                ts = self._ensure_task_exists(key, (1,), sid)
                if ts._state != TS_MEMORY:
                    ts.nbytes = nbytes
                    recs[ts] = "fetch"
            self._update_who_has(ev.who_has)
            return recs, _NO_INSTR
        if code == EV_GATHER_DEP_SUCCESS:
            recs = {}
            for ts in self._gather_dep_done_common(ev):
                if ts.key in ev.data:
                    recs[ts] = ("memory", ev.data[ts.key], ts.run_id)
                else:
                    self.log.append((ts.key, "missing-dep", sid, _now()))
                    if self.validate:
                        assert ts._state != TS_FETCH
                        assert ts not in self.data_needed[ev.worker]
                    if not ts._unmade & UNMADE_WHO_HAS:
                        ts._who_has.discard(ev.worker)
                    if ev.worker in self.has_what:
                        self.has_what[ev.worker].discard(ts.key)
                    recs[ts] = "fetch"
            return recs, _NO_INSTR
        if code == EV_GATHER_DEP_BUSY:
            self.busy_workers.add(ev.worker)
            recs = {}
            refresh_who_has = []
            for ts in self._gather_dep_done_common(ev):
                recs[ts] = "fetch"
                if not _who_has(ts) - self.busy_workers:
                    refresh_who_has.append(ts.key)
            instructions = [RetryBusyWorkerLater(worker=ev.worker, stimulus_id=sid)]
            if refresh_who_has:
                instructions.append(RequestRefreshWhoHasMsg(keys=refresh_who_has, stimulus_id=sid))
            return recs, instructions
        if code == EV_GATHER_DEP_NETWORK_FAILURE:
            recs = {}
            for ts in self._gather_dep_done_common(ev):
                self.log.append((ts.key, "missing-dep", sid, _now()))
                recs[ts] = "fetch"
            self._forget_peer(ev.worker, recs)
            return recs, _NO_INSTR
        if code == EV_GATHER_DEP_FAILURE:
            recs = {}
            for ts in self._gather_dep_done_common(ev):
                recs[ts] = ("error", ev.exception, ev.traceback, ev.exception_text,
                            ev.traceback_text, ts.run_id)
            return recs, _NO_INSTR
        if code == EV_REMOVE_WORKER:
            recs = {}
            self._forget_peer(ev.worker, recs)
            return recs, _NO_INSTR
        if code == EV_SECEDE:
            ts = self.tasks.get(ev.key)
            if not ts:
                return _NOTHING
            return {ts: ("long-running", ev.compute_duration)}, _NO_INSTR
        if code == EV_STEAL_REQUEST:
            ts = self.tasks.get(ev.key)
            state = _name(ts._state) if ts is not None else None
            smsg = StealResponseMsg(key=ev.key, state=state, stimulus_id=sid)
            if ts is not None and _is_ready_or_waiting(ts._state):
                return {ts: "released"}, [smsg]
            return {}, [smsg]
        if code == EV_PAUSE:
            self.running = False
            return _NOTHING
        if code == EV_UNPAUSE:
            self.running = True
            return self._ensure_computing()
        if code == EV_RETRY_BUSY_WORKER:
            self.busy_workers.discard(ev.worker)
            return _NOTHING
        if code == EV_CANCEL_COMPUTE:
            ts = self.tasks.get(ev.key)
            if not ts or not _is_ready_or_waiting(ts._state):
                return _NOTHING
            self.log.append((ev.key, "cancel-compute", sid, _now()))
            assert not ts.dependents
            return {ts: "released"}, _NO_INSTR
        if code == EV_FIND_MISSING:
            if not self.missing_dep_flight:
                return _NOTHING
            if self.validate:
                for ts in self.missing_dep_flight:
                    assert not ts.who_has, self.story(ts)
            smsg = RequestRefreshWhoHasMsg(
                keys=[ts.key for ts in self.missing_dep_flight], stimulus_id=sid
            )
            return {}, [smsg]
        if code == EV_REFRESH_WHO_HAS:
            self._update_who_has(ev.who_has)
            recs = {}
            for key in ev.who_has:
                ts = self.tasks.get(key)
                if not ts:
                    continue
                if _who_has(ts) and ts._state == TS_MISSING:
                    recs[ts] = "fetch"
                elif not _who_has(ts) and ts._state == TS_FETCH:
                    recs[ts] = "missing"
            return recs, _NO_INSTR
        raise TypeError(ev)

    cdef tuple _handle_compute_task(self, object ev):
        cdef TaskState ts, dep_ts
        cdef int s
        sid = ev.stimulus_id
        key = ev.key
        ts = self.tasks.get(key)
        if ts is None:
            ts = new_task(key)
            self.tasks[key] = ts
            _count_new_task(self.task_counter, ts)
        elif self._debug:
            logger.debug(
                "Asked to compute an already known task %s", {"task": ts, "stimulus_id": sid}
            )
        self.log.append((key, "compute-task", _name(ts._state), sid, _now()))
        ts.run_id = ev.run_id
        s = ts._state
        if s == TS_READY or s == TS_CONSTRAINED or s == TS_EXECUTING or s == TS_LONG_RUNNING \
                or s == TS_WAITING:
            return _NOTHING
        if s == TS_MEMORY:
            return {}, [self._get_task_finished_msg(ts, ev.run_id, sid)]
        if not (s == TS_RELEASED or s == TS_FETCH or s == TS_FLIGHT or s == TS_MISSING
                or s == TS_CANCELLED or s == TS_RESUMED or s == TS_ERROR):
            raise RuntimeError(
                f"Unexpected task state encountered for {ts}; stimulus_id={sid}; "
                f"story={self.story(ts)}"
            )
        ts.run_spec = ev.run_spec
        priority = ev.priority + (self.generation,)
        self.generation -= 1
        if ev.actor:
            self.actors[key] = None
        ts.exception = None
        ts.traceback = None
        ts.exception_text = ""
        ts.traceback_text = ""
        ts.priority = priority
        ts.annotations = ev.annotations
        ts.span_id = ev.span_id
        if not ((s == TS_CANCELLED or s == TS_RESUMED) and _ran_in_thread(ts._previous)):
            ts.resource_restrictions = ev.resource_restrictions
        if self.validate:
            assert ev.who_has.keys() == ev.nbytes.keys()
            for dep_workers in ev.who_has.values():
                assert dep_workers
                assert len(dep_workers) == len(set(dep_workers))
        for dep_key, nbytes in ev.nbytes.items():
            dep_ts = self._ensure_task_exists(dep_key, priority, sid)
            if dep_ts._state != TS_MEMORY:
                dep_ts.nbytes = nbytes
            made_dependencies(ts).add(dep_ts)
            made_dependents(dep_ts).add(ts)
        self._update_who_has(ev.who_has)
        return {ts: "waiting"}, _NO_INSTR

    cdef tuple _execute_done_common(self, object ev):
        cdef TaskState ts = self.tasks.get(ev.key)
        assert ts, self.story(ev.key)
        if self.validate:
            assert (ts in self.executing) != (ts in self.long_running)
        ts.done = True
        self.executed_count += 1
        self._release_resources(ts)
        self.executing.discard(ts)
        self.long_running.discard(ts)
        recs, instructions = self._ensure_computing()
        assert ts not in recs
        return ts, recs, instructions

    cdef list _gather_dep_done_common(self, object ev):
        """Close the transfer from ev.worker; the tasks it carried, done, in order."""
        cdef TaskState ts
        cdef list out = []
        self.transfer_incoming_bytes -= ev.total_nbytes
        keys = self.in_flight_workers.pop(ev.worker)
        for key in keys:
            ts = self.tasks[key]
            ts.done = True
            ts.coming_from = None
            self.in_flight_tasks.remove(ts)
            out.append(ts)
        return out

    cdef int _forget_peer(self, object worker, dict recs) except -1:
        """A peer is gone: drop it from every who_has; tasks it alone held go missing."""
        cdef TaskState ts
        for ts in self.data_needed.pop(worker, ()):
            if self.validate:
                assert ts._state == TS_FETCH
                assert worker in ts.who_has
            if _who_has(ts) == {worker}:
                recs[ts] = "missing"
        for key in self.has_what.pop(worker, ()):
            ts = self.tasks[key]
            made_who_has(ts).remove(worker)
        return 0

    # --- introspection --------------------------------------------------------------------

    def story(self, *keys_or_tasks_or_stimuli):
        """The log entries that mention any of these keys, tasks or stimulus ids."""
        keys_or_stimuli = {
            e.key if isinstance(e, (TaskState, StockTaskState)) else e
            for e in keys_or_tasks_or_stimuli
        }
        return worker_story(keys_or_stimuli, self.log)

    def stimulus_story(self, *keys_or_tasks):
        """The logged stimuli that concern any of these keys or tasks."""
        keys = {e.key if isinstance(e, (TaskState, StockTaskState)) else e for e in keys_or_tasks}
        return [ev for ev in self.stimulus_log if getattr(ev, "key", None) in keys]

    def _to_dict(self, *, exclude=()):
        """Dictionary representation for debugging (cluster dumps), as stock's."""
        info = {
            "address": self.address,
            "nthreads": self.nthreads,
            "running": self.running,
            "ready": [ts.key for ts in self.ready.sorted()],
            "constrained": [ts.key for ts in self.constrained.sorted()],
            "data": dict.fromkeys(self.data),
            "data_needed": {w: [ts.key for ts in tss.sorted()] for w, tss in self.data_needed.items()},
            "executing": {ts.key for ts in self.executing},
            "has_what": dict(self.has_what),
            "long_running": {ts.key for ts in self.long_running},
            "in_flight_tasks": {ts.key for ts in self.in_flight_tasks},
            "in_flight_workers": self.in_flight_workers,
            "missing_dep_flight": [ts.key for ts in self.missing_dep_flight],
            "busy_workers": self.busy_workers,
            "log": self.log,
            "stimulus_log": self.stimulus_log,
            "transition_counter": self.transition_counter,
            "tasks": self.tasks,
            "task_counts": dict(self.task_counter.current_count()),
            "task_cumulative_elapsed": dict(self.task_counter.cumulative_elapsed()),
        }
        info = {k: v for k, v in info.items() if k not in exclude}
        return recursive_to_dict(info, exclude=exclude)

    # --- pickling -------------------------------------------------------------------------

    def __reduce__(self):
        return (_new_empty_state, (type(self),), self.__getstate__())

    def __getstate__(self):
        return {name: getattr(self, name) for name in _PICKLED if name != "address"} | (
            {"address": self._address} if self._address is not None else {}
        )

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)

    # --- validation -----------------------------------------------------------------------

    def validate_task(self, ts):
        """Check one task's invariants; InvalidTaskState (with its story) if broken."""
        try:
            if ts.key in self.tasks:
                assert self.tasks[ts.key] is ts
            state = ts.state
            if state == "memory":
                assert ts.key in self.data or ts.key in self.actors
                assert isinstance(ts.nbytes, int)
                assert not ts.waiting_for_data
            elif state == "waiting":
                self._validate_task_waiting(ts)
            elif state == "missing":
                self._validate_task_missing(ts)
            elif state == "cancelled":
                assert ts.next is None
                if ts.previous in ("executing", "long-running"):
                    self._validate_task_executing(ts)
                else:
                    assert ts.previous == "flight"
                    self._validate_task_flight(ts)
            elif state == "resumed":
                if ts.previous in ("executing", "long-running"):
                    assert ts.next == "fetch"
                    self._validate_task_executing(ts)
                else:
                    assert ts.previous == "flight"
                    assert ts.next == "waiting"
                    self._validate_task_flight(ts)
                self._validate_dependents_not_runnable(ts)
            elif state in ("ready", "constrained"):
                self._validate_task_ready(ts)
            elif state in ("executing", "long-running"):
                self._validate_task_executing(ts)
            elif state == "flight":
                self._validate_task_flight(ts)
            elif state == "fetch":
                self._validate_task_fetch(ts)
            elif state == "released":
                self._validate_task_released(ts)
        except Exception as e:
            logger.exception(e)
            raise InvalidTaskState(key=ts.key, state=ts.state, story=self.story(ts)) from e

    def _validate_dependents_not_runnable(self, ts):
        for dep in ts.dependents:
            assert dep not in self.ready
            assert dep not in self.constrained

    def _validate_task_executing(self, ts):
        if ts.state == "executing" or ts.previous == "executing":
            assert ts in self.executing
            assert ts not in self.long_running
        else:
            assert ts.state == "long-running" or ts.previous == "long-running"
            assert ts not in self.executing
            assert ts in self.long_running
        assert ts.run_spec is not None
        assert ts.key not in self.data
        assert not ts.waiting_for_data
        self._validate_dependents_not_runnable(ts)

    def _validate_task_ready(self, ts):
        if ts.state == "ready":
            assert not ts.resource_restrictions
            assert ts in self.ready
            assert ts not in self.constrained
        else:
            assert ts.resource_restrictions
            assert ts.state == "constrained"
            assert ts not in self.ready
            assert ts in self.constrained
        assert ts.key not in self.data
        assert not ts.done
        assert not ts.waiting_for_data
        assert all(dep.key in self.data or dep.key in self.actors for dep in ts.dependencies)

    def _validate_task_waiting(self, ts):
        assert ts.key not in self.data
        assert not ts.done
        assert ts in self.waiting
        assert ts.waiting_for_data
        assert ts.waiting_for_data == {
            dep for dep in ts.dependencies
            if dep.key not in self.data and dep.key not in self.actors
        }
        self._validate_dependents_not_runnable(ts)

    def _validate_task_flight(self, ts):
        assert ts.key not in self.data
        assert ts.key not in self.actors
        assert ts in self.in_flight_tasks
        self._validate_dependents_not_runnable(ts)
        assert ts.coming_from
        assert ts.coming_from in self.in_flight_workers
        assert ts.key in self.in_flight_workers[ts.coming_from]

    def _validate_task_fetch(self, ts):
        assert ts.key not in self.data
        assert ts.key not in self.actors
        assert self._address not in ts.who_has
        assert not ts.done
        assert ts.who_has
        for w in ts.who_has:
            assert ts.key in self.has_what[w]
            assert ts in self.data_needed[w]
        self._validate_dependents_not_runnable(ts)

    def _validate_task_missing(self, ts):
        assert ts.key not in self.data
        assert ts.key not in self.actors
        assert not ts.who_has
        assert not ts.done
        assert not any(ts.key in has_what for has_what in self.has_what.values())
        assert ts in self.missing_dep_flight
        self._validate_dependents_not_runnable(ts)

    def _validate_task_released(self, ts):
        assert ts.key not in self.data
        assert ts.key not in self.actors
        assert not ts.next
        assert not ts.previous
        for tss in self.data_needed.values():
            assert ts not in tss
        assert ts not in self.executing
        assert ts not in self.in_flight_tasks
        assert ts not in self.missing_dep_flight
        assert not ts.waiting_for_data
        assert not ts.done
        assert not ts.exception
        assert not ts.traceback

    def validate_state(self):
        """Check every invariant of the whole state (slow; for tests and debugging)."""
        for ts in self.tasks.values():
            for worker in ts.who_has:
                assert worker != self._address
                assert ts.key in self.has_what[worker]
            for dep in ts.dependencies:
                assert self.tasks[dep.key] is dep
                assert ts in dep.dependents, self.story(ts)
            for ts_wait in ts.waiting_for_data:
                assert self.tasks[ts_wait.key] is ts_wait
                assert ts_wait.state in WAITING_FOR_DATA, self.story(ts_wait)
        for worker, keys in self.has_what.items():
            assert worker != self._address
            for k in keys:
                assert k in self.tasks, self.story(k)
                assert worker in self.tasks[k].who_has
        fetch_tss = set()
        for worker, tss in self.data_needed.items():
            for ts in tss:
                fetch_tss.add(ts)
                assert ts.state == "fetch", self.story(ts)
                assert worker in ts.who_has, f"{ts}; ts.who_has={ts.who_has!r}"
        assert len(fetch_tss) == self.fetch_count
        for ts in self.missing_dep_flight:
            assert ts.state == "missing", self.story(ts)
        for ts in self.ready:
            assert ts.state == "ready", self.story(ts)
        for ts in self.constrained:
            assert ts.state == "constrained", self.story(ts)
        for ts in self.executing:
            assert ts.state == "executing" or (
                ts.state in ("cancelled", "resumed") and ts.previous == "executing"
            ), self.story(ts)
        for ts in self.long_running:
            assert ts.state == "long-running" or (
                ts.state in ("cancelled", "resumed") and ts.previous == "long-running"
            ), self.story(ts)
        for ts in self.in_flight_tasks:
            assert ts.state == "flight" or (
                ts.state in ("cancelled", "resumed") and ts.previous == "flight"
            ), self.story(ts)
        for ts in self.waiting:
            assert ts.state == "waiting", self.story(ts)
        for ts in chain(
            *self.data_needed.values(), self.missing_dep_flight, self.ready,
            self.constrained, self.in_flight_tasks, self.executing, self.long_running,
            self.waiting,
        ):
            assert self.tasks[ts.key] is ts, f"{self.tasks[ts.key]} is not {ts}"
        expect_nbytes = sum(self.tasks[key].nbytes or 0 for key in chain(self.data, self.actors))
        assert self.nbytes == expect_nbytes, f"self.nbytes={self.nbytes!r}; expected {expect_nbytes}"
        for key in self.data:
            assert key in self.tasks, self.story(key)
        for key in self.actors:
            assert key in self.tasks, self.story(key)
        for ts in self.tasks.values():
            self.validate_task(ts)
        expect_state_count = Counter((ts.prefix, ts.state) for ts in self.tasks.values())
        assert self.task_counter.current_count() == expect_state_count, (
            self.task_counter.current_count(), expect_state_count,
        )
        if self.transition_counter_max:
            assert self.transition_counter < self.transition_counter_max
        self._validate_resources()

    def _validate_resources(self):
        assert self.total_resources.keys() == self.available_resources.keys()
        total = self.total_resources.copy()
        for k, v in self.available_resources.items():
            assert v > -1e-9, self.available_resources
            total[k] -= v
        for ts in self.all_running_tasks:
            if ts.resource_restrictions:
                for k, v in ts.resource_restrictions.items():
                    assert v >= 0, (ts, ts.resource_restrictions)
                    total[k] -= v
        assert all(abs(v) < 1e-9 for v in total.values()), total


# Everything a pickled WorkerState carries (stock pickles all of its slots).
_PICKLED = (
    "address", "nthreads", "data", "threads", "plugins", "total_resources",
    "available_resources", "validate", "tasks", "running", "waiting", "has_what",
    "data_needed", "fetch_count", "in_flight_workers", "busy_workers",
    "transfer_incoming_count_limit", "transfer_incoming_count_total",
    "transfer_incoming_bytes_throttle_threshold", "transfer_incoming_bytes",
    "missing_dep_flight", "generation", "ready", "constrained", "executing",
    "in_flight_tasks", "nbytes", "executed_count", "long_running",
    "transfer_message_bytes_limit", "log", "stimulus_log", "task_counter",
    "transition_counter", "transition_counter_max", "transfer_incoming_bytes_limit",
    "actors", "rng",
)


cdef class _PrefixCounts:
    """Per task prefix: how many tasks are in each state, and since when."""
    cdef Py_ssize_t n[16]
    cdef double since[16]      # when n last changed
    cdef double elapsed[16]    # task-seconds accumulated up to ``since``
    cdef bint seen[16]         # ever counted: shown by cumulative_elapsed()

    cdef inline void change(self, int state, Py_ssize_t delta, double now) noexcept:
        self.elapsed[state] += (now - self.since[state]) * self.n[state]
        self.since[state] = now
        self.n[state] += delta
        self.seen[state] = True

    cdef inline double elapsed_until(self, int state, double now) noexcept:
        return self.elapsed[state] + (now - self.since[state]) * self.n[state]


cdef class TaskCounter:
    """Counts tasks by (prefix, state) and the task-seconds spent there.

    Same API as distributed's ``TaskCounter`` (read by the Worker's heartbeat,
    metrics and cluster dumps): ``new_task``, ``transitions``, ``current_count`` and
    ``cumulative_elapsed``. Counts live in C arrays per prefix, and elapsed time is
    integrated per (prefix, state) when its count changes, so a stimulus costs
    O(tasks it touched) instead of O(all (prefix, state) pairs).
    """
    cdef dict _prefixes      # prefix -> _PrefixCounts
    cdef set _new_tasks

    def __init__(self):
        self._prefixes = {}
        self._new_tasks = set()

    cdef inline _PrefixCounts _counts_for(self, object prefix):
        counts = self._prefixes.get(prefix)
        if counts is None:
            counts = _PrefixCounts()
            self._prefixes[prefix] = counts
        return <_PrefixCounts>counts

    def current_count(self, by_prefix=True):
        """Tasks per (prefix, state), or per state if not ``by_prefix``."""
        cdef _PrefixCounts counts
        cdef int state
        out = Counter()
        for prefix, counts in self._prefixes.items():
            for state in range(<int>TS_NONE):
                if counts.n[state]:
                    if by_prefix:
                        out[prefix, _name(state)] = counts.n[state]
                    else:
                        out[_name(state)] += counts.n[state]
        return out

    @property
    def _current_count(self):
        return self.current_count()

    def cumulative_elapsed(self, by_prefix=True):
        """Task-seconds spent per (prefix, state), or per state."""
        cdef _PrefixCounts counts
        cdef int state
        cdef double now = _monotonic()
        out = defaultdict(float)
        for prefix, counts in self._prefixes.items():
            for state in range(<int>TS_NONE):
                if counts.seen[state]:
                    if by_prefix:
                        out[prefix, _name(state)] = counts.elapsed_until(state, now)
                    else:
                        out[_name(state)] += counts.elapsed_until(state, now)
        return out

    def new_task(self, ts):
        self._new_tasks.add(ts)

    def transitions(self, prev_states):
        """Account for the tasks whose state changed from ``prev_states``."""
        self.transitions_c(prev_states)

    cdef int transitions_c(self, dict prev_states) except -1:
        cdef TaskState ts
        cdef _PrefixCounts counts
        cdef int state
        if not prev_states and not self._new_tasks:
            return 0
        cdef double now = _monotonic()
        for ts, prev_state in prev_states.items():
            counts = self._counts_for(ts.get_prefix())
            if ts._state != TS_FORGOTTEN:
                counts.change(ts._state, 1, now)
            if ts in self._new_tasks:
                self._new_tasks.discard(ts)
            else:
                state = state_code(prev_state)
                assert counts.n[state] > 0
                counts.change(state, -1, now)
        for ts in self._new_tasks:
            self._counts_for(ts.get_prefix()).change(ts._state, 1, now)
        self._new_tasks.clear()
        return 0


cdef inline int _count_new_task(object counter, TaskState ts) except -1:
    if type(counter) is TaskCounter:
        (<TaskCounter>counter)._new_tasks.add(ts)
    else:
        counter.new_task(ts)
    return 0


def _new_empty_state(cls):
    return cls.__new__(cls)


cdef class _GatherOrder:
    """Peers to gather from, best first, as stock's _select_workers_for_gather yields them.

    Candidates are ranked by (top task priority, remote host, -queue length, seeded
    random draw); a candidate whose queue changed since it was ranked is re-ranked.
    Iterated lazily, because each gather changes other peers' queues.
    """
    cdef WorkerState ws
    cdef list heap
    cdef object current

    def __init__(self, WorkerState ws):
        self.ws = ws
        host = _host(ws.address)
        heap = []
        data_needed = ws.data_needed
        for worker, tasks in list(data_needed.items()):
            if not tasks:
                del data_needed[worker]
                continue
            if worker in ws.in_flight_workers or worker in ws.busy_workers:
                continue
            heap.append((
                _heap_peek(tasks).priority, _host(worker) != host, -len(tasks),
                ws.rng.random(), worker, tasks,
            ))
        heapify(heap)
        self.heap = heap
        self.current = None

    def __iter__(self):
        return self

    def __next__(self):
        data_needed = self.ws.data_needed
        if self.current is not None:
            worker, tasks = self.current
            self.current = None
            if not tasks:
                del data_needed[worker]
        heap = self.heap
        while heap:
            _, is_remote, ntasks_neg, rnd, worker, tasks = heappop(heap)
            if not tasks:
                del data_needed[worker]
            elif -ntasks_neg != len(tasks):
                heappush(
                    heap, (_heap_peek(tasks).priority, is_remote, -len(tasks), rnd, worker, tasks)
                )
            else:
                self.current = (worker, tasks)
                return worker, tasks
        raise StopIteration


def _fast_paths():
    """Which instructions are built slot by slot (True) rather than through their
    dataclass __init__; both give equal objects. For tests and diagnostics."""
    return {
        "Execute": _EXECUTE_SLOTS is not None,
        "TaskFinishedMsg": _TASK_FINISHED_SLOTS is not None,
        "ReleaseWorkerDataMsg": _RELEASE_DATA_SLOTS is not None,
        "AddKeysMsg": _ADD_KEYS_SLOTS is not None,
        "GatherDep": _GATHER_DEP_SLOTS is not None,
    }

# cython: language_level=3, boundscheck=False, wraparound=False
# cython: embedsignature=True, binding=True
"""Compiled drop-in for :class:`distributed.worker_state_machine.WorkerState`.

Turns events (distributed's ``StateMachineEvent`` subclasses) into instructions
(distributed's own ``Instruction`` classes) and new task states, exactly as the
stock state machine of the supported release does: same instructions in the same
order, same states, logs and stories, same exceptions.

It is laid out like stock's module. Every transition of stock's
``_TRANSITIONS_TABLE`` and every event handler registered on stock's
``_handle_event`` is a C function of the same name taking the WorkerState as
``self``; transitions are dispatched through a C table indexed by the (start,
finish) state codes, events through a table indexed by a code per event class.
This file holds the class (attributes, the stimulus loop, _transition) and
includes the rest, by concern:

- ``wsm/helpers.pxi``: shared empty results, a task's lazily made sets, clocks,
  state predicates, queues
- ``wsm/spill.pxi``: storing, reading and dropping values in distributed's SpillBuffer
- ``wsm/events.pxi``: the event handler table; stimulus log copies of events
- ``wsm/instructions.pxi``: instruction builders
- ``wsm/compute.pxi``: _ensure_computing, the ready queues, resources
- ``wsm/fetch.pxi``: who_has, _ensure_communicating, peer and key selection
- ``wsm/transitions.pxi``: the transition table and the transitions
- ``wsm/transitions_cancelled.pxi``: transitions out of cancelled and resumed
- ``wsm/handlers.pxi``: the event handlers
- ``wsm/validation.pxi``, ``wsm/introspection.pxi``, ``wsm/pickling.pxi``
- ``wsm/counter.pxi``: TaskCounter
- ``includes/slots.h``: C helpers to make and copy slotted dataclasses
"""
cimport cython

import copyreg
import inspect as _inspect
import dataclasses
import logging
import math
import random
from collections import Counter, defaultdict, deque
from heapq import heapify, heappop, heappush
from itertools import chain
from types import MappingProxyType

import dask
from dask.utils import typename

from distributed._stories import worker_story
from distributed.comm import get_address_host
from distributed.core import error_message
from distributed.diagnostics.plugin import WorkerPlugin
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
    StateMachineEvent,
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
from distributed.worker_state_machine import WorkerState as _StockWorkerState

from cpython.dict cimport (
    PyDict_Check,
    PyDict_Contains,
    PyDict_DelItem,
    PyDict_GetItemWithError,
    PyDict_Next,
    PyDict_SetItem,
)
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.set cimport PySet_Add
from cpython.list cimport PyList_GET_SIZE
from cpython.object cimport PyObject
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
    UNMADE_RESTRICTIONS,
    UNMADE_WHO_HAS,
    TaskState,
    TaskStateWithDuration,
    made_dependencies,
    made_dependents,
    made_metadata,
    made_startstops,
    made_waiters,
    made_waiting_for_data,
    made_who_has,
    new_task,
    set_resource_restrictions,
    state_code,
)

cdef extern from "includes/fastcalls.h":
    int fw_init_deque_append(object deque_type, object append_descr) except -1
    bint fw_is_deque(object seq) noexcept
    int fw_deque_append(object seq, object item) except -1

cdef extern from "Python.h":
    Py_ssize_t PyDict_GET_SIZE(object)
    PyObject** _PyObject_GetDictPtr(object)
    Py_ssize_t fw_refcnt "Py_REFCNT"(PyObject*)
    PyObject* fw_type "(PyObject *)Py_TYPE"(PyObject*)

cdef extern from "includes/slots.h":
    Py_ssize_t fw_slot_offset(object descr)
    object fw_copy_slots(object obj, tuple offsets)
    object fw_alloc(object cls)
    void fw_put(object obj, Py_ssize_t offset, object v)
    PyObject* fw_peek_slot(object obj, Py_ssize_t offset) noexcept

__all__ = ["WorkerState"]

cdef class TaskCounter


# Same logger as stock, so that users' and tests' log capture keeps working.
logger = logging.getLogger("distributed.worker.state_machine")

from fastworker.compat import features as _release_features

# How the installed distributed release's state machine differs from the newest one's
# (fastworker.compat.Features): the wsm/*.pxi parts pick their per-release C
# functions from it once, here at import, never per task.
_FEATURES = _release_features()

cdef object _RUN_ID_SENTINEL = -1

cdef object _DEBUG = logging.DEBUG
cdef object _LOGGER_CLASS = logging.Logger


cdef bint _debug_enabled() except -1:
    """logger.isEnabledFor(logging.DEBUG), read once per handle_stimulus call.

    A plain Logger answers False while ``disabled``, else from ``_cache`` (which
    logging clears whenever a level changes), and only computes and caches the
    answer on a miss; the same is done here without the method call, reading the
    logger's instance dict directly (a plain Logger's class defines neither
    ``disabled`` nor ``_cache``, so instance attributes are what getattr finds).
    """
    cdef PyObject** dictptr
    cdef PyObject* found
    log = logger
    if type(log) is not _LOGGER_CLASS:
        return log.isEnabledFor(_DEBUG)
    dictptr = _PyObject_GetDictPtr(log)
    if dictptr is NULL or dictptr[0] is NULL or type(<object>dictptr[0]) is not dict:
        return log.isEnabledFor(_DEBUG)
    attrs = <dict>dictptr[0]
    # The answer depends only on the logger's instance dict and its ``_cache`` dict:
    # while both are the same dicts, unmodified (same version tags: a dict's tag
    # changes with every change to it), the last answer stands.
    global _dbg_attrs, _dbg_attrs_version, _dbg_cache, _dbg_cache_version, _dbg_answer
    if (attrs is _dbg_attrs and fw_dict_version(attrs) == _dbg_attrs_version
            and _dbg_cache is not None
            and fw_dict_version(_dbg_cache) == _dbg_cache_version):
        return _dbg_answer
    _dbg_attrs = None
    _dbg_cache = None
    if PyDict_GetItemWithError(attrs, "isEnabledFor") is not NULL:
        return log.isEnabledFor(_DEBUG)
    found = PyDict_GetItemWithError(attrs, "disabled")
    if found is NULL:
        return log.isEnabledFor(_DEBUG)
    if <object>found:
        return False
    found = PyDict_GetItemWithError(attrs, "_cache")
    if found is not NULL and type(<object>found) is dict:
        cache = <dict>found
        found = PyDict_GetItemWithError(cache, _DEBUG)
        if found is not NULL:
            answer = <object>found
            if FW_DICT_VERSIONS and type(answer) is bool:
                _dbg_attrs = attrs
                _dbg_attrs_version = fw_dict_version(attrs)
                _dbg_cache = cache
                _dbg_cache_version = fw_dict_version(cache)
                _dbg_answer = answer
            return answer
    return log.isEnabledFor(_DEBUG)


cdef extern from *:
    """
    /* A dict's version tag (PEP 509), changed by every change to the dict. Deprecated
       in 3.12 (PEP 699) and gone from 3.14: there FW_DICT_VERSIONS is 0 and
       _debug_enabled asks the logger every time, as stock does. */
    #if PY_VERSION_HEX < 0x030E0000
    #define FW_DICT_VERSIONS 1
    #if PY_VERSION_HEX >= 0x030C0000
    #pragma GCC diagnostic push
    #pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    #endif
    static unsigned long long fw_dict_version(PyObject *d) {
        return (unsigned long long)((PyDictObject *)d)->ma_version_tag;
    }
    #if PY_VERSION_HEX >= 0x030C0000
    #pragma GCC diagnostic pop
    #endif
    #else
    #define FW_DICT_VERSIONS 0
    static unsigned long long fw_dict_version(PyObject *d) { (void)d; return 0; }
    #endif
    """
    const bint FW_DICT_VERSIONS
    unsigned long long fw_dict_version(object d)

# _debug_enabled's last answer and the two dicts it was read from (strong references,
# so that neither can be freed and another made at its address meanwhile).
cdef object _dbg_attrs = None
cdef object _dbg_cache = None
cdef unsigned long long _dbg_attrs_version = 0
cdef unsigned long long _dbg_cache_version = 0
cdef bint _dbg_answer = False


include "wsm/helpers.pxi"
include "wsm/spill.pxi"
include "wsm/events.pxi"
include "wsm/instructions.pxi"
include "wsm/compute.pxi"
include "wsm/fetch.pxi"
include "wsm/transitions.pxi"
include "wsm/transitions_cancelled.pxi"
include "wsm/handlers.pxi"
include "wsm/validation.pxi"
include "wsm/introspection.pxi"
include "wsm/pickling.pxi"
include "wsm/counter.pxi"


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
        cdef list more
        for stim in stims:
            # (None for the FindMissingEvents, which stock does not log)
            entry = _to_loggable(stim, handled)
            if entry is not None:
                _append_log(self.stimulus_log, entry)
            if self._py_handle_event:
                recs, instr = self._handle_event(stim)
            else:
                recs, instr = self._handle_event_c(stim)
            if instr is not _NO_INSTR:
                instructions += instr
            if self._py_transitions:
                if recs is _NO_RECS:
                    recs = {}  # Python code may write into what it is given
                instructions += self._transitions(recs, stimulus_id=stim.stimulus_id)
            else:
                # a compiled handler's recs dict: nobody else has it
                more = self._transitions_c(recs, stim.stimulus_id, not self._py_handle_event)
                if more:
                    instructions.extend(more)
        return instructions

    def _handle_event(self, ev):
        """Dispatch one event to its handler; return (recommendations, instructions)."""
        return _fresh(self._handle_event_c(ev))

    def _transitions(self, recommendations, *, stimulus_id):
        """Process recommendations until none are left; return the instructions."""
        return self._transitions_c(recommendations, stimulus_id, False)

    def _transition(self, ts, finish, *args, stimulus_id):
        """Transition one task to ``finish`` (a state name or a (state, *args) tuple)."""
        return _fresh(self._transition_c(ts, finish, args, stimulus_id))

    cdef tuple _handle_event_c(self, object ev):
        """Run the handler registered for the event's class (wsm/handlers.pxi)."""
        cdef Handler handler = _HANDLERS[_event_code(type(ev))]
        if handler is NULL:
            raise TypeError(ev)
        return handler(self, ev)

    # --- recommendations -----------------------------------------------------------------

    cdef list _transitions_c(self, object recommendations, object stimulus_id,
                             bint owned):
        """Process recommendations; ``owned``: a dict that nobody else refers to
        (a handler's result), consumed here instead of a copy of it."""
        cdef list instructions = []
        cdef dict initial_states = {}
        if recommendations is not _NO_RECS and (
            PyDict_GET_SIZE(recommendations) if type(recommendations) is dict
            else recommendations
        ):
            # our own copy, consumed as it is processed
            if type(recommendations) is dict:
                if owned:
                    recs = recommendations
                else:
                    recs = (<dict>recommendations).copy()
            else:
                recs = recommendations.copy()
            self._process_recs(recs, instructions, initial_states, stimulus_id)
        # Even without recommendations: a stimulus may have made a transfer possible.
        result = _ensure_communicating(self, stimulus_id)
        if result is not _NOTHING:
            recs, instr = result
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
            if a_recs is not _NO_RECS and (type(a_recs) is not dict or PyDict_GET_SIZE(a_recs)):
                recs.update(a_recs)
            if a_instr is not _NO_INSTR and (type(a_instr) is not list or PyList_GET_SIZE(a_instr)):
                instructions.extend(a_instr)

    cdef tuple _tr(self, TaskState ts, object finish, tuple args, object stimulus_id):
        if self._py_transition:
            return tuple(self._transition(ts, finish, *args, stimulus_id=stimulus_id))
        return self._transition_c(ts, finish, args, stimulus_id)

    cdef tuple _transition_c(self, TaskState ts, object finish, tuple args,
                             object stimulus_id):
        """Transition one task, as stock's _transition: count it, run the table's
        function (or go through released), notify plugins and log it."""
        cdef Transition transition
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
        # Counted before the transition runs, so that runaway recursion is caught;
        # a transition through released counts twice.
        self.transition_counter += 1
        if self.transition_counter_max and self.transition_counter >= self.transition_counter_max:
            raise TransitionCounterMaxExceeded(ts.key, start, finish, self.story(ts))

        transition = _TRANSITIONS[start_code][finish_code]
        if transition is not NULL:
            recs_instr = transition(self, ts, args, stimulus_id)
            recs = (<tuple>recs_instr)[0]
            if self.plugins:
                self._notify_transition(ts.key, start, finish)
        elif start_code != TS_RELEASED and finish_code != TS_RELEASED:
            # No direct route: go through released, then on to the finish state.
            try:
                recs, instructions = self._tr(ts, "released", _EMPTY_TUPLE, stimulus_id)
                if recs is _NO_RECS:
                    recs = {}  # popped below
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
        cdef PyObject* pkey
        cdef PyObject* pvalue
        cdef Py_ssize_t pos = 0
        if recs is not _NO_RECS:
            if type(recs) is dict:
                # (PyDict_Next: no iterator, no items tuple; nothing here changes recs)
                while PyDict_Next(recs, &pos, &pkey, &pvalue):
                    other = <TaskState?><object>pkey
                    new = <object>pvalue
                    shown[other.key] = (<tuple>new)[0] if isinstance(new, tuple) else new
            else:
                for other, new in recs.items():
                    shown[other.key] = (<tuple>new)[0] if isinstance(new, tuple) else new
        _append_log(
            self.log, (ts.key, start, finish, _name(ts._state), shown, stimulus_id, _now())
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

    # --- introspection (wsm/introspection.pxi) ------------------------------------------
    story = story
    stimulus_story = stimulus_story
    _to_dict = _to_dict

    # --- pickling (wsm/pickling.pxi) --------------------------------------------------------

    def __reduce__(self):
        return (_new_empty_state, (type(self),), self.__getstate__())

    def __getstate__(self):
        return _getstate(self)

    def __setstate__(self, state):
        _setstate(self, state)

    # --- validation (wsm/validation.pxi) ---------------------------------------------------
    validate_task = validate_task
    _validate_dependents_not_runnable = _validate_dependents_not_runnable
    _validate_task_executing = _validate_task_executing
    _validate_task_ready = _validate_task_ready
    _validate_task_waiting = _validate_task_waiting
    _validate_task_flight = _validate_task_flight
    _validate_task_fetch = _validate_task_fetch
    _validate_task_missing = _validate_task_missing
    _validate_task_released = _validate_task_released
    validate_state = validate_state
    _validate_resources = _validate_resources


# The methods defined in the included files are WorkerState's, not the module's.
_METHODS_FROM_INCLUDES = (
    "story", "stimulus_story", "_to_dict", "validate_task",
    "_validate_dependents_not_runnable", "_validate_task_executing",
    "_validate_task_ready", "_validate_task_waiting", "_validate_task_flight",
    "_validate_task_fetch", "_validate_task_missing", "_validate_task_released",
    "validate_state", "_validate_resources",
)
for _method in _METHODS_FROM_INCLUDES:
    getattr(WorkerState, _method).__qualname__ = f"WorkerState.{_method}"
    del globals()[_method]
del _method, _METHODS_FROM_INCLUDES

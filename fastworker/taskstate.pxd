# cython: language_level=3
"""C-level declarations of the compiled worker TaskState.

Other compiled units (the WorkerState) cimport these to read and write a task's
fields without going through Python attribute lookup.
"""

# The fifteen worker task states of distributed.worker_state_machine.TaskStateState,
# as a C enum so that state tests and transition dispatch are integer compares.
# TS_NONE stands for ``None`` in the ``previous`` and ``next`` fields.
cpdef enum TaskStateCode:
    TS_RELEASED = 0
    TS_WAITING
    TS_READY
    TS_CONSTRAINED
    TS_EXECUTING
    TS_LONG_RUNNING
    TS_MEMORY
    TS_ERROR
    TS_FETCH
    TS_FLIGHT
    TS_MISSING
    TS_CANCELLED
    TS_RESUMED
    TS_RESCHEDULED
    TS_FORGOTTEN
    TS_NONE

# Interned state names, indexed by TaskStateCode (TS_NONE maps to None).
cdef tuple STATE_NAMES

cdef TaskStateCode state_code(object name) except TS_NONE
cdef TaskStateCode optional_state_code(object name) except? TS_NONE


cdef class LiveTaskSet:
    pass


cdef class TaskState:
    cdef public object key
    cdef object _prefix
    cdef public Py_ssize_t run_id
    cdef public object run_spec
    # The five sets of tasks/workers are made on first use (see _unmade): most
    # tasks never hold anything in most of them, and every set the garbage
    # collector tracks makes its collections more frequent and longer.
    cdef set _dependencies
    cdef set _dependents
    cdef set _waiting_for_data
    cdef set _waiters
    cdef TaskStateCode _state
    cdef TaskStateCode _previous
    cdef TaskStateCode _next
    cdef public object priority
    cdef set _who_has
    # UNMADE_* bits: that set (or dict, list) is still to be made (its field holds
    # None meanwhile)
    cdef unsigned char _unmade
    cdef public object coming_from
    # resource_restrictions, startstops and metadata are made on first use too
    # (UNMADE_RESTRICTIONS, UNMADE_STARTSTOPS, UNMADE_METADATA): a task fetched from
    # a peer never uses them, and a computed task gets its restrictions from the event.
    cdef object _resource_restrictions
    cdef public object exception
    cdef public object traceback
    cdef public object exception_text
    cdef public object traceback_text
    cdef public object type
    cdef public Py_ssize_t suspicious_count
    cdef object _startstops
    cdef public object start_time
    cdef public object stop_time
    cdef object _metadata
    cdef public object nbytes
    cdef public object annotations
    cdef public object span_id
    cdef public bint done
    cdef object __weakref__
    # Membership in TaskState._instances (see LiveTaskSet); borrowed pointers.
    cdef bint _live
    # Creation number: the hash when deterministic hashing is on (differential tests).
    cdef Py_ssize_t _serial
    cdef void* _live_prev
    cdef void* _live_next

    cdef object get_prefix(self)
    cpdef Py_ssize_t get_nbytes(self) except? -1


cdef class TaskStateWithDuration(TaskState):
    # distributed 2024.11.0-2025.1.0 only (fastworker.compat.Features.taskstate_duration)
    cdef public object duration


# TaskState(key) with every other field at its default, without parsing arguments;
# of the class of the installed release (TaskStateWithDuration where it has one).
cdef TaskState new_task(object key)


cdef enum:
    UNMADE_DEPENDENCIES = 1
    UNMADE_DEPENDENTS = 2
    UNMADE_WAITING_FOR_DATA = 4
    UNMADE_WAITERS = 8
    UNMADE_WHO_HAS = 16
    UNMADE_RESTRICTIONS = 32
    UNMADE_STARTSTOPS = 64
    UNMADE_METADATA = 128
    UNMADE_ALL = 255


# The set itself, made now if it was still to be made: for code that adds to it.
cdef inline set made_dependencies(TaskState ts):
    if ts._unmade & UNMADE_DEPENDENCIES:
        ts._dependencies = set()
        ts._unmade &= ~UNMADE_DEPENDENCIES
    return ts._dependencies


cdef inline set made_dependents(TaskState ts):
    if ts._unmade & UNMADE_DEPENDENTS:
        ts._dependents = set()
        ts._unmade &= ~UNMADE_DEPENDENTS
    return ts._dependents


cdef inline set made_waiting_for_data(TaskState ts):
    if ts._unmade & UNMADE_WAITING_FOR_DATA:
        ts._waiting_for_data = set()
        ts._unmade &= ~UNMADE_WAITING_FOR_DATA
    return ts._waiting_for_data


cdef inline set made_waiters(TaskState ts):
    if ts._unmade & UNMADE_WAITERS:
        ts._waiters = set()
        ts._unmade &= ~UNMADE_WAITERS
    return ts._waiters


cdef inline set made_who_has(TaskState ts):
    if ts._unmade & UNMADE_WHO_HAS:
        ts._who_has = set()
        ts._unmade &= ~UNMADE_WHO_HAS
    return ts._who_has


cdef inline object made_resource_restrictions(TaskState ts):
    if ts._unmade & UNMADE_RESTRICTIONS:
        ts._resource_restrictions = {}
        ts._unmade &= ~UNMADE_RESTRICTIONS
    return ts._resource_restrictions


cdef inline object made_startstops(TaskState ts):
    if ts._unmade & UNMADE_STARTSTOPS:
        ts._startstops = []
        ts._unmade &= ~UNMADE_STARTSTOPS
    return ts._startstops


cdef inline object made_metadata(TaskState ts):
    if ts._unmade & UNMADE_METADATA:
        ts._metadata = {}
        ts._unmade &= ~UNMADE_METADATA
    return ts._metadata


cdef inline int set_resource_restrictions(TaskState ts, object value) except -1:
    ts._resource_restrictions = value
    ts._unmade &= ~UNMADE_RESTRICTIONS
    return 0

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
    cdef public set dependencies
    cdef public set dependents
    cdef public set waiting_for_data
    cdef public set waiters
    cdef TaskStateCode _state
    cdef TaskStateCode _previous
    cdef TaskStateCode _next
    cdef public object priority
    cdef public set who_has
    cdef public object coming_from
    cdef public object resource_restrictions
    cdef public object exception
    cdef public object traceback
    cdef public object exception_text
    cdef public object traceback_text
    cdef public object type
    cdef public Py_ssize_t suspicious_count
    cdef public list startstops
    cdef public object start_time
    cdef public object stop_time
    cdef public object metadata
    cdef public object nbytes
    cdef public object annotations
    cdef public object span_id
    cdef public bint done
    # Expected run time (s) from the worker's per-prefix estimate; not part of
    # stock's TaskState, so it is kept out of repr and _to_dict.
    cdef public object duration
    cdef object __weakref__
    # Membership in TaskState._instances (see LiveTaskSet); borrowed pointers.
    cdef bint _live
    # Creation number: the hash when deterministic hashing is on (differential tests).
    cdef Py_ssize_t _serial
    cdef void* _live_prev
    cdef void* _live_next

    cdef object get_prefix(self)
    cpdef Py_ssize_t get_nbytes(self) except? -1

# cython: language_level=3
"""C-level declarations of the compiled WorkerState."""
from fastworker.taskstate cimport TaskState


cdef class WorkerState:
    # --- attributes stock code reads and rebinds (Python-visible, re-read per use) ---
    cdef object _address
    cdef public Py_ssize_t nthreads
    cdef public object data
    cdef public object threads
    cdef public object plugins
    cdef public object total_resources
    cdef public object available_resources
    cdef public bint validate
    cdef public dict tasks
    cdef public bint running
    cdef public set waiting
    cdef public object has_what
    cdef public object data_needed
    cdef public Py_ssize_t fetch_count
    cdef public dict in_flight_workers
    cdef public set busy_workers
    cdef public object transfer_incoming_count_limit
    cdef public Py_ssize_t transfer_incoming_count_total
    cdef public object transfer_incoming_bytes_throttle_threshold
    cdef public object transfer_incoming_bytes
    cdef public set missing_dep_flight
    cdef public Py_ssize_t generation
    cdef public object ready
    cdef public object constrained
    cdef public set executing
    cdef public set in_flight_tasks
    cdef public object nbytes
    cdef public Py_ssize_t executed_count
    cdef public set long_running
    cdef public object transfer_message_bytes_limit
    cdef public object log
    cdef public object stimulus_log
    cdef public object task_counter
    cdef public Py_ssize_t transition_counter
    cdef public object transition_counter_max
    cdef public object transfer_incoming_bytes_limit
    cdef public dict actors
    cdef public object rng
    cdef object __weakref__

    # --- Python subclasses that override these are dispatched through the override ---
    cdef bint _py_transition
    cdef bint _py_handle_event
    cdef bint _py_transitions
    cdef bint _debug

    # --- the machine (the transitions, handlers and helpers are C functions of the
    # module, taking the WorkerState as self: see workerstate.pyx) ---
    cdef list _handle_stimuli(self, tuple stims)
    cdef tuple _handle_event_c(self, object ev)
    cdef list _transitions_c(self, object recommendations, object stimulus_id,
                             bint owned)
    cdef void _process_recs(self, dict recs, list instructions, dict initial_states,
                            object stimulus_id) except *
    cdef tuple _tr(self, TaskState ts, object finish, tuple args, object stimulus_id)
    cdef tuple _transition_c(self, TaskState ts, object finish, tuple args,
                             object stimulus_id)
    cdef void _notify_transition(self, object key, object start, object finish) except *

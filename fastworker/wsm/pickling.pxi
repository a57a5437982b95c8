# Pickling: a WorkerState pickles as all the attributes stock pickles (stock
# pickles every slot), restored by setattr on an instance made without __init__.
# Included by fastworker/workerstate.pyx; __reduce__/__getstate__/__setstate__ in
# the class body call these.

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


def _new_empty_state(cls):
    return cls.__new__(cls)


cdef dict _getstate(WorkerState self):
    state = {name: getattr(self, name) for name in _PICKLED if name != "address"}
    if self._address is not None:
        state["address"] = self._address
    return state


cdef int _setstate(WorkerState self, object state) except -1:
    for name, value in state.items():
        setattr(self, name, value)
    return 0

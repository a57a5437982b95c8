# Computing: which ready task runs next, and the resources it holds.
# Included by fastworker/workerstate.pyx.

cdef int _ensure_computing_into(WorkerState self, dict recs) except -1:
    """Recommend executing for the best ready tasks while threads are free, into
    ``recs`` (a dict the caller owns). The tasks count as executing (and hold their
    resources) at once; ready/constrained -> executing emits the Execute."""
    cdef TaskState ts
    if not self.running:
        return 0
    while len(self.executing) < self.nthreads:
        ts = _next_ready_task(self)
        if ts is None:
            break
        if self.validate:
            assert ts._state == TS_READY or ts._state == TS_CONSTRAINED
            assert ts not in recs
        recs[ts] = "executing"
        _acquire_resources(self, ts)
        self.executing.add(ts)
    return 0


cdef tuple _ensure_computing(WorkerState self):
    cdef dict recs = {}
    _ensure_computing_into(self, recs)
    return recs, _NO_INSTR


cdef TaskState _next_ready_task(WorkerState self):
    """Pop the task to run next: the better of the two queues' heads, where a
    constrained task only goes first if its resources are free. With only
    constrained tasks, the head waits for its resources and blocks the rest, as
    in stock."""
    cdef TaskState tsr, tsc
    ready = self.ready
    constrained = self.constrained
    if ready and constrained:
        tsr = _heap_peek(ready)
        tsc = _heap_peek(constrained)
        assert tsr.priority
        assert tsc.priority
        if tsc.priority < tsr.priority and _resource_restrictions_satisfied(self, tsc):
            return _heap_pop(constrained)
        return _heap_pop(ready)
    if ready:
        return _heap_pop(ready)
    if constrained:
        tsc = _heap_peek(constrained)
        if _resource_restrictions_satisfied(self, tsc):
            return _heap_pop(constrained)
    return None


cdef bint _resource_restrictions_satisfied(WorkerState self, TaskState ts) except -1:
    restrictions = _resource_restrictions(ts)
    if not restrictions:
        return True
    available = self.available_resources
    for resource, needed in restrictions.items():
        if not available[resource] >= needed:
            return False
    return True


cdef int _acquire_resources(WorkerState self, TaskState ts) except -1:
    restrictions = _resource_restrictions(ts)
    if restrictions:
        available = self.available_resources
        for resource, needed in restrictions.items():
            available[resource] -= needed
    return 0


cdef int _release_resources(WorkerState self, TaskState ts) except -1:
    restrictions = _resource_restrictions(ts)
    if restrictions:
        available = self.available_resources
        for resource, needed in restrictions.items():
            available[resource] += needed
    return 0

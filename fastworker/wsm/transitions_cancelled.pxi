# Transitions out of cancelled and resumed.
#
# A task that is running (executing, long-running) or being fetched (flight) cannot
# be stopped. When the scheduler releases it, it becomes ``cancelled`` (previous =
# what it was doing) and waits for the run or the transfer to end. When the
# scheduler then asks for it again, it becomes ``resumed`` (next = fetch or
# waiting, what the scheduler now expects) unless it can simply go back to what it
# was doing. ``done`` tells whether the run or transfer has ended meanwhile: the
# exit events of execute and gather_dep set it, and only they recommend the
# transitions that find it set.
# Included by fastworker/workerstate.pyx; the table is in wsm/transitions.pxi.

cdef tuple _transition_cancelled_released(WorkerState self, TaskState ts, tuple args,
                                          object stimulus_id):
    # Also cancelled -> error, memory, missing, rescheduled: the result of a run or
    # transfer nobody wants any more (args, the value or the error, are dropped).
    if not ts.done:
        return _NOTHING
    ts._previous = TS_NONE
    ts.done = False
    return _transition_generic_released(self, ts, _EMPTY_TUPLE, stimulus_id)


cdef tuple _transition_cancelled_fetch(WorkerState self, TaskState ts, tuple args,
                                       object stimulus_id):
    # See also _transition_cancelled_waiting, _transition_resumed_fetch.
    if ts._previous == TS_FLIGHT:
        if ts.done:
            # The transfer of a cancelled task just ended: drop what it brought,
            # and maybe forget the task.
            return {ts: "released"}, _NO_INSTR
        # The transfer is still on and is what the scheduler wants: as if the task
        # had never been cancelled.
        ts._state = TS_FLIGHT
        ts._previous = TS_NONE
        return _NOTHING
    assert _ran_in_thread(ts._previous)
    # No exit event of execute recommends fetch.
    assert not ts.done
    ts._state = TS_RESUMED
    ts._next = TS_FETCH
    return _NOTHING


cdef tuple _transition_cancelled_waiting(WorkerState self, TaskState ts, tuple args,
                                         object stimulus_id):
    # See also _transition_cancelled_fetch, _transition_cancelled_or_resumed_long_running,
    # _transition_resumed_fetch.
    # No exit event of gather_dep or execute recommends waiting.
    assert not ts.done
    if ts._previous == TS_EXECUTING:
        # Still running, which is what the scheduler wants: forget the cancellation.
        ts._state = TS_EXECUTING
        ts._previous = TS_NONE
        return _NOTHING
    if ts._previous == TS_LONG_RUNNING:
        # Likewise; and the scheduler, which thinks the task is new, learns now
        # that it seceded (twice, if it seceded before it was cancelled).
        ts._state = TS_LONG_RUNNING
        ts._previous = TS_NONE
        return {}, [_long_running_msg(ts, None, stimulus_id)]
    assert ts._previous == TS_FLIGHT
    ts._state = TS_RESUMED
    ts._next = TS_WAITING
    return _NOTHING


cdef tuple _transition_cancelled_or_resumed_long_running(WorkerState self, TaskState ts,
                                                         tuple args, object stimulus_id):
    # cancelled(executing or long-running) or resumed(executing or long-running ->
    # fetch) seceded (long-running again: secede() called twice). Unlike
    # executing -> long-running, no LongRunningMsg: for the scheduler the task is
    # gone (cancelled) or in memory elsewhere (resumed). If the task goes back to
    # waiting, _transition_cancelled_waiting sends it then.
    assert _ran_in_thread(ts._previous)
    ts._previous = TS_LONG_RUNNING
    self.executing.discard(ts)
    self.long_running.add(ts)
    return _ensure_computing(self)


cdef tuple _transition_resumed_error(WorkerState self, TaskState ts, tuple args,
                                     object stimulus_id):
    # The run or transfer that ended failed: drop the error, tell the scheduler
    # nothing, and go on to what the scheduler asked for since.
    cdef dict recs
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


cdef tuple _transition_resumed_rescheduled(WorkerState self, TaskState ts, tuple args,
                                           object stimulus_id):
    # The task raised Reschedule() but the scheduler meanwhile asked to fetch it
    # from elsewhere: go and fetch it, as _transition_resumed_error does.
    assert ts.done
    assert _ran_in_thread(ts._previous)
    assert ts._next == TS_FETCH
    ts._state = TS_RELEASED
    ts.done = False
    ts._previous = TS_NONE
    ts._next = TS_NONE
    return {ts: "fetch"}, _NO_INSTR


cdef tuple _transition_resumed_fetch(WorkerState self, TaskState ts, tuple args,
                                     object stimulus_id):
    # See also _transition_cancelled_fetch, _transition_cancelled_waiting,
    # _transition_flight_fetch.
    if ts._previous == TS_FLIGHT:
        if self.validate:
            assert ts._next == TS_WAITING
        if ts.done:
            # The transfer ended without the data (network failure, or the peer did
            # not have the key). Instead of trying another peer, compute the task,
            # as the scheduler asked.
            ts._state = TS_RELEASED
            ts.done = False
            ts._previous = TS_NONE
            ts._next = TS_NONE
            return {ts: "waiting"}, _NO_INSTR
        # Back where it started: forget the whole cancellation.
        ts._state = TS_FLIGHT
        ts._previous = TS_NONE
        ts._next = TS_NONE
    elif self.validate:
        assert _ran_in_thread(ts._previous)
        assert ts._next == TS_FETCH
        # No exit event of execute recommends fetch.
        assert not ts.done
    return _NOTHING


cdef tuple _transition_resumed_memory(WorkerState self, TaskState ts, tuple args,
                                      object stimulus_id):
    # The scheduler expects what ts.next says, the opposite of what just ended: a
    # run that ends while it expects a fetch is announced as a replica (add-keys),
    # a transfer that ends while it expects a computation as a finished task.
    cdef int msg_type
    if _ran_in_thread(ts._previous):
        assert ts._next == TS_FETCH
        msg_type = MSG_ADD_KEYS
    else:
        assert ts._previous == TS_FLIGHT
        assert ts._next == TS_WAITING
        msg_type = MSG_TASK_FINISHED
    ts._previous = TS_NONE
    ts._next = TS_NONE
    return _transition_to_memory(self, ts, args[0], msg_type, args[1], stimulus_id)


cdef tuple _transition_resumed_released(WorkerState self, TaskState ts, tuple args,
                                        object stimulus_id):
    # No exit event of execute or gather_dep recommends released.
    assert not ts.done
    ts._state = TS_CANCELLED
    ts._next = TS_NONE
    return _NOTHING

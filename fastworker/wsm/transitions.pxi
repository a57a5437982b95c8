# Transitions: one function per method of stock's WorkerState._TRANSITIONS_TABLE,
# named as stock names it, and the table that maps (start, finish) state codes to
# them. The cancelled and resumed states are in wsm/transitions_cancelled.pxi;
# _transition_c (workerstate.pyx) looks the pair up, runs the function, counts,
# logs and notifies plugins.
#
# Each function takes the task, the extra arguments of a tuple recommendation
# (("memory", value, run_id), ("error", exception, traceback, exception_text,
# traceback_text, run_id), ("flight", worker), ("long-running", compute_duration))
# and the stimulus id, and returns (recommendations, instructions); nothing to do
# is the shared immutable _NOTHING (wsm/helpers.pxi).
# Included by fastworker/workerstate.pyx.

# What _transition_to_memory tells the scheduler.
cdef enum MemoryMsg:
    MSG_NONE = 0         # nothing: scatter(), the scheduler does not know the key yet
    MSG_ADD_KEYS         # a replica arrived (AddKeysMsg)
    MSG_TASK_FINISHED    # the task ran here (TaskFinishedMsg)


ctypedef tuple (*Transition)(WorkerState self, TaskState ts, tuple args,
                             object stimulus_id)

# _TRANSITIONS[start][finish]; NULL: no direct transition (_transition_c then goes
# through released, as stock does). TS_NONE stands for a finish that is no state.
cdef Transition _TRANSITIONS[TS_NONE + 1][TS_NONE + 1]


cdef void _on(int start, int finish, Transition transition) noexcept:
    _TRANSITIONS[start][finish] = transition


def _transition_table():
    """The (start, finish) pairs that have a transition, for tests."""
    cdef int start, finish
    return {
        (_name(start), _name(finish))
        for start in range(TS_NONE)
        for finish in range(TS_NONE)
        if _TRANSITIONS[start][finish] != NULL
    }


# The table, in stock's order; tests/test_worker_state_transitions.py checks it
# against stock's _TRANSITIONS_TABLE, names included.
_on(TS_CANCELLED, TS_ERROR, _transition_cancelled_released)
_on(TS_CANCELLED, TS_FETCH, _transition_cancelled_fetch)
_on(TS_CANCELLED, TS_LONG_RUNNING, _transition_cancelled_or_resumed_long_running)
_on(TS_CANCELLED, TS_MEMORY, _transition_cancelled_released)
_on(TS_CANCELLED, TS_MISSING, _transition_cancelled_released)
_on(TS_CANCELLED, TS_RELEASED, _transition_cancelled_released)
_on(TS_CANCELLED, TS_RESCHEDULED, _transition_cancelled_released)
_on(TS_CANCELLED, TS_WAITING, _transition_cancelled_waiting)
_on(TS_RESUMED, TS_ERROR, _transition_resumed_error)
_on(TS_RESUMED, TS_FETCH, _transition_resumed_fetch)
_on(TS_RESUMED, TS_LONG_RUNNING, _transition_cancelled_or_resumed_long_running)
_on(TS_RESUMED, TS_MEMORY, _transition_resumed_memory)
_on(TS_RESUMED, TS_RELEASED, _transition_resumed_released)
_on(TS_RESUMED, TS_RESCHEDULED, _transition_resumed_rescheduled)
_on(TS_CONSTRAINED, TS_EXECUTING, _transition_constrained_executing)
_on(TS_CONSTRAINED, TS_RELEASED, _transition_generic_released)
_on(TS_ERROR, TS_RELEASED, _transition_generic_released)
_on(TS_EXECUTING, TS_ERROR, _transition_generic_error)
_on(TS_EXECUTING, TS_LONG_RUNNING, _transition_executing_long_running)
_on(TS_EXECUTING, TS_MEMORY, _transition_executing_memory)
_on(TS_EXECUTING, TS_RELEASED, _transition_executing_released)
_on(TS_EXECUTING, TS_RESCHEDULED, _transition_executing_rescheduled)
_on(TS_FETCH, TS_FLIGHT, _transition_fetch_flight)
_on(TS_FETCH, TS_MISSING, _transition_fetch_missing)
_on(TS_FETCH, TS_RELEASED, _transition_fetch_released)
_on(TS_FLIGHT, TS_ERROR, _transition_generic_error)
_on(TS_FLIGHT, TS_FETCH, _transition_flight_fetch)
_on(TS_FLIGHT, TS_MEMORY, _transition_flight_memory)
_on(TS_FLIGHT, TS_MISSING, _transition_flight_missing)
_on(TS_FLIGHT, TS_RELEASED, _transition_flight_released)
_on(TS_LONG_RUNNING, TS_ERROR, _transition_generic_error)
_on(TS_LONG_RUNNING, TS_MEMORY, _transition_executing_memory)
_on(TS_LONG_RUNNING, TS_RESCHEDULED, _transition_executing_rescheduled)
_on(TS_LONG_RUNNING, TS_RELEASED, _transition_executing_released)
_on(TS_MEMORY, TS_RELEASED, _transition_memory_released)
_on(TS_MISSING, TS_ERROR, _transition_generic_error)
_on(TS_MISSING, TS_FETCH, _transition_missing_fetch)
_on(TS_MISSING, TS_RELEASED, _transition_missing_released)
_on(TS_MISSING, TS_WAITING, _transition_missing_waiting)
_on(TS_READY, TS_EXECUTING, _transition_ready_executing)
_on(TS_READY, TS_RELEASED, _transition_generic_released)
_on(TS_RELEASED, TS_ERROR, _transition_generic_error)
_on(TS_RELEASED, TS_FETCH, _transition_released_fetch)
_on(TS_RELEASED, TS_FORGOTTEN, _transition_released_forgotten)
_on(TS_RELEASED, TS_MEMORY, _transition_released_memory)
_on(TS_RELEASED, TS_MISSING, _transition_generic_missing)
_on(TS_RELEASED, TS_WAITING, _transition_released_waiting)
_on(TS_WAITING, TS_CONSTRAINED, _transition_waiting_constrained)
_on(TS_WAITING, TS_READY, _transition_waiting_ready)
_on(TS_WAITING, TS_RELEASED, _transition_generic_released)


# --- generic: reached from several start states ----------------------------------------

cdef tuple _transition_generic_fetch(WorkerState self, TaskState ts, tuple args,
                                     object stimulus_id):
    if not _who_has(ts):
        return {ts: "missing"}, _NO_INSTR
    ts._state = TS_FETCH
    ts.done = False
    self.fetch_count += 1
    assert ts.priority
    data_needed = self.data_needed
    if _made_set(ts._unmade & UNMADE_WHO_HAS, ts._who_has):  # (a typed loop: no iterator)
        for w in ts._who_has:
            _heap_add(_queue_of(data_needed, w), ts)
    return _NOTHING


cdef tuple _transition_generic_missing(WorkerState self, TaskState ts, tuple args,
                                       object stimulus_id):
    if self.validate:
        assert not ts.who_has
    ts._state = TS_MISSING
    self.missing_dep_flight.add(ts)
    ts.done = False
    return _NOTHING


cdef tuple _transition_generic_released(WorkerState self, TaskState ts, tuple args,
                                        object stimulus_id):
    cdef TaskState dep
    cdef dict recs = {}
    _purge_state(self, ts)
    # A dependency nobody else waits for can go too, unless it is about to run,
    # running or holding data.
    if _made_set(ts._unmade & UNMADE_DEPENDENCIES, ts._dependencies):  # (a typed loop: no iterator)
        for dep in ts._dependencies:
            if not _waiters(dep) and not _is_unreleasable(dep._state):
                recs[dep] = "released"
    ts._state = TS_RELEASED
    if not _dependents(ts):
        recs[ts] = "forgotten"
    return recs, _NO_INSTR


cdef tuple _transition_generic_error(WorkerState self, TaskState ts, tuple args,
                                     object stimulus_id):
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


# --- released ----------------------------------------------------------------------------

cdef tuple _transition_released_fetch(WorkerState self, TaskState ts, tuple args,
                                      object stimulus_id):
    if self.validate:
        assert ts._state == TS_RELEASED
    return _transition_generic_fetch(self, ts, args, stimulus_id)


cdef tuple _transition_released_waiting(WorkerState self, TaskState ts, tuple args,
                                        object stimulus_id):
    cdef TaskState dep
    cdef dict recs = {}
    if self.validate:
        assert all(d.key in self.tasks for d in ts.dependencies)
    if not ts._unmade & UNMADE_WAITING_FOR_DATA:
        ts._waiting_for_data.clear()
    if _made_set(ts._unmade & UNMADE_DEPENDENCIES, ts._dependencies):  # (a typed loop: no iterator)
        for dep in ts._dependencies:
            if dep._state != TS_MEMORY:
                made_waiting_for_data(ts).add(dep)
                made_waiters(dep).add(ts)
                recs[dep] = "fetch"
    if not _waiting_for_data(ts):
        recs[ts] = "ready"
    ts._state = TS_WAITING
    self.waiting.add(ts)
    return recs, _NO_INSTR


cdef tuple _transition_released_memory(WorkerState self, TaskState ts, tuple args,
                                       object stimulus_id):
    # Only scatter() gets here. The scheduler does not know the key yet, so it is
    # told nothing.
    return _transition_to_memory(self, ts, args[0], MSG_NONE, _RUN_ID_SENTINEL, stimulus_id)


cdef tuple _transition_released_forgotten(WorkerState self, TaskState ts, tuple args,
                                          object stimulus_id):
    cdef TaskState dep
    cdef dict recs = {}
    # The scheduler releases the dependents first.
    if self.validate:
        assert not any(d.state != "forgotten" for d in ts.dependents)
    if _made_set(ts._unmade & UNMADE_DEPENDENCIES, ts._dependencies):  # (a typed loop: no iterator)
        for dep in ts._dependencies:
            if not dep._unmade & UNMADE_DEPENDENTS:
                dep._dependents.discard(ts)
            if dep._state == TS_RELEASED and not _dependents(dep):
                recs[dep] = "forgotten"
    _purge_state(self, ts)
    # Still marked, for whoever holds a reference to the task.
    ts._state = TS_FORGOTTEN
    self.tasks.pop(ts.key, None)
    return recs, _NO_INSTR


# --- waiting, ready, constrained -------------------------------------------------------

cdef int _validate_waiting_to_runnable(WorkerState self, TaskState ts) except -1:
    assert ts.state == "waiting"
    assert ts not in self.ready
    assert ts not in self.constrained
    assert not ts.waiting_for_data
    for dep in ts.dependencies:
        assert dep.key in self.data or dep.key in self.actors
        assert dep.state == "memory"
    return 0


cdef tuple _transition_waiting_ready(WorkerState self, TaskState ts, tuple args,
                                     object stimulus_id):
    if self.validate:
        _validate_waiting_to_runnable(self, ts)
    if _resource_restrictions(ts):
        return {ts: "constrained"}, _NO_INSTR
    ts._state = TS_READY
    assert ts.priority is not None
    self.waiting.remove(ts)
    _heap_add(self.ready, ts)
    return _ensure_computing(self)


cdef tuple _transition_waiting_constrained(WorkerState self, TaskState ts, tuple args,
                                           object stimulus_id):
    if self.validate:
        _validate_waiting_to_runnable(self, ts)
    ts._state = TS_CONSTRAINED
    self.waiting.remove(ts)
    _heap_add(self.constrained, ts)
    return _ensure_computing(self)


cdef int _validate_runnable_to_executing(WorkerState self, TaskState ts,
                                         int start) except -1:
    assert ts._state == start
    assert not ts.waiting_for_data
    assert ts.key not in self.data
    assert ts not in self.ready
    assert ts not in self.constrained
    for dep in ts.dependencies:
        assert dep.key in self.data or dep.key in self.actors
    return 0


cdef tuple _transition_ready_executing(WorkerState self, TaskState ts, tuple args,
                                       object stimulus_id):
    if self.validate:
        _validate_runnable_to_executing(self, ts, TS_READY)
    ts._state = TS_EXECUTING
    return {}, [_execute(ts.key, stimulus_id)]


cdef tuple _transition_constrained_executing(WorkerState self, TaskState ts, tuple args,
                                             object stimulus_id):
    # _ensure_computing already acquired the task's resources.
    if self.validate:
        _validate_runnable_to_executing(self, ts, TS_CONSTRAINED)
    ts._state = TS_EXECUTING
    return {}, [_execute(ts.key, stimulus_id)]


# --- executing, long-running -------------------------------------------------------------

cdef tuple _transition_executing_long_running(WorkerState self, TaskState ts, tuple args,
                                              object stimulus_id):
    # The task seceded: it no longer counts towards nthreads, so another can start.
    ts._state = TS_LONG_RUNNING
    self.executing.discard(ts)
    self.long_running.add(ts)
    smsg = _long_running_msg(ts, args[0], stimulus_id)
    return merge_recs_instructions(({}, [smsg]), _ensure_computing(self))


cdef tuple _transition_executing_memory(WorkerState self, TaskState ts, tuple args,
                                        object stimulus_id):
    # Normally an ExecuteSuccessEvent; scatter() can get here too.
    return _transition_to_memory(self, ts, args[0], MSG_TASK_FINISHED, args[1], stimulus_id)


cdef tuple _transition_executing_released(WorkerState self, TaskState ts, tuple args,
                                          object stimulus_id):
    # A running task cannot be stopped because the scheduler asks: it is cancelled,
    # and released when it completes.
    if self.validate:
        assert ts._state == TS_EXECUTING or ts._state == TS_LONG_RUNNING
        assert ts._next == TS_NONE
        assert not ts.done
    ts._previous = ts._state
    ts._state = TS_CANCELLED
    return _NOTHING


cdef tuple _transition_executing_rescheduled(WorkerState self, TaskState ts, tuple args,
                                             object stimulus_id):
    # Only a task that raised Reschedule() gets here (work stealing does not).
    # generic_released directly, not a recommendation to released: that would run
    # executing -> released, which does not expect ts.done.
    assert ts.done
    return merge_recs_instructions(
        ({}, [RescheduleMsg(key=ts.key, stimulus_id=stimulus_id)]),
        _transition_generic_released(self, ts, _EMPTY_TUPLE, stimulus_id),
    )


# --- fetch, flight, missing ----------------------------------------------------------------

cdef tuple _transition_fetch_flight(WorkerState self, TaskState ts, tuple args,
                                    object stimulus_id):
    if self.validate:
        assert ts._state == TS_FETCH
        assert ts.who_has
        # _ensure_communicating already took it out of every data_needed queue
        for w in ts.who_has:
            assert ts not in self.data_needed[w]
    ts.done = False
    ts._state = TS_FLIGHT
    ts.coming_from = args[0]
    self.in_flight_tasks.add(ts)
    self.fetch_count -= 1
    return _NOTHING


cdef tuple _transition_fetch_missing(WorkerState self, TaskState ts, tuple args,
                                     object stimulus_id):
    self.fetch_count -= 1
    return _transition_generic_missing(self, ts, args, stimulus_id)


cdef tuple _transition_fetch_released(WorkerState self, TaskState ts, tuple args,
                                      object stimulus_id):
    self.fetch_count -= 1
    return _transition_generic_released(self, ts, args, stimulus_id)


cdef tuple _transition_flight_fetch(WorkerState self, TaskState ts, tuple args,
                                    object stimulus_id):
    # Once the transfer is over the task can be fetched again; while it is still
    # running, nothing to do.
    if not ts.done:
        return _NOTHING
    return _transition_generic_fetch(self, ts, args, stimulus_id)


cdef tuple _transition_flight_memory(WorkerState self, TaskState ts, tuple args,
                                     object stimulus_id):
    # Normally a GatherDepSuccessEvent; scatter() can get here too.
    return _transition_to_memory(
        self, ts, args[0], MSG_ADD_KEYS, _RUN_ID_SENTINEL, stimulus_id
    )


cdef tuple _transition_flight_missing(WorkerState self, TaskState ts, tuple args,
                                      object stimulus_id):
    assert ts.done
    return _transition_generic_missing(self, ts, args, stimulus_id)


cdef tuple _transition_flight_released(WorkerState self, TaskState ts, tuple args,
                                       object stimulus_id):
    # No exit event of gather_dep recommends released: the transfer is still on.
    # The task waits for it in cancelled (see distributed PR #5046).
    assert not ts.done
    ts._previous = TS_FLIGHT
    ts._next = TS_NONE
    ts._state = TS_CANCELLED
    return _NOTHING


cdef tuple _transition_missing_fetch(WorkerState self, TaskState ts, tuple args,
                                     object stimulus_id):
    if self.validate:
        assert ts._state == TS_MISSING
    if not _who_has(ts):
        return _NOTHING
    self.missing_dep_flight.discard(ts)
    return _transition_generic_fetch(self, ts, args, stimulus_id)


cdef tuple _transition_missing_released(WorkerState self, TaskState ts, tuple args,
                                        object stimulus_id):
    self.missing_dep_flight.discard(ts)
    result = _transition_generic_released(self, ts, args, stimulus_id)
    assert ts.key in self.tasks
    return result


cdef tuple _transition_missing_waiting(WorkerState self, TaskState ts, tuple args,
                                       object stimulus_id):
    self.missing_dep_flight.discard(ts)
    _purge_state(self, ts)
    return _transition_released_waiting(self, ts, args, stimulus_id)


# --- memory ----------------------------------------------------------------------------------

cdef tuple _transition_memory_released(WorkerState self, TaskState ts, tuple args,
                                       object stimulus_id):
    assert ts.nbytes is not None
    self.nbytes -= ts.nbytes
    recs = _transition_generic_released(self, ts, args, stimulus_id)[0]
    return recs, [_release_worker_data_msg(ts.key, stimulus_id)]


cdef tuple _transition_to_memory(WorkerState self, TaskState ts, object value,
                                 int msg_type, object run_id, object stimulus_id):
    """Put a task's value in ``data`` (the only place that does) and the task in memory.

    Reached when a run ends well (from executing, long-running, or resumed from
    either), when a transfer ends well (from flight, or resumed from flight), and by
    scatter() (normally from released; scattering a key in any other state is a race
    stock does not guard against either).
    """
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
            _data_set(self.data, key, value)  # self.data[key] = value
        except Exception as e:
            # e.g. a SpillBuffer that spilled a value larger than its target at once
            # and failed to serialize it: the task errs instead.
            msg = error_message(e)
            return {ts: tuple(msg.values()) + (run_id,)}, _NO_INSTR
        stop = _now()
        if stop - start > 0.005:
            # data spilled this or other values to disk (or a third-party mapping
            # did other slow work): shown as a disk-write
            made_startstops(ts).append({"action": "disk-write", "start": start, "stop": stop})
    ts._state = TS_MEMORY
    if ts.nbytes is None:
        ts.nbytes = safe_sizeof(value)
    self.nbytes += ts.nbytes
    ts.type = type(value)
    if _made_set(ts._unmade & UNMADE_DEPENDENTS, ts._dependents):  # (a typed loop: no iterator)
        for dep in ts._dependents:
            if not dep._unmade & UNMADE_WAITING_FOR_DATA:
                dep._waiting_for_data.discard(ts)
            if not _waiting_for_data(dep) and dep._state == TS_WAITING:
                recs[dep] = "ready"
    _append_log(self.log, (key, "put-in-memory", stimulus_id, _now()))
    # The scheduler treats the two messages very differently: add-keys is only
    # accepted for keys already in memory elsewhere and triggers no transition.
    if msg_type == MSG_ADD_KEYS:
        instructions.append(_add_keys_msg([key], stimulus_id))
    elif msg_type == MSG_TASK_FINISHED:
        assert run_id != _RUN_ID_SENTINEL
        instructions.append(_get_task_finished_msg(self, ts, run_id, stimulus_id))
    return recs, instructions


# --- purging ---------------------------------------------------------------------------------

cdef int _purge_state(WorkerState self, TaskState ts) except -1:
    """Drop a task from every collection and reset its run fields."""
    cdef TaskState dep
    key = ts.key
    if self._debug:
        logger.debug("Purge task: %s", ts)
    _data_discard(self.data, key)  # if key in self.data: del self.data[key]
    self.actors.pop(key, None)
    threads = self.threads
    if type(threads) is dict:
        if PyDict_Contains(threads, key):
            del (<dict>threads)[key]
    else:
        threads.pop(key, None)
    if _who_has(ts):
        has_what = self.has_what
        data_needed = self.data_needed
        for worker in ts._who_has:
            _item_of(has_what, worker).discard(key)
            _heap_discard(_queue_of(data_needed, worker), ts)
        ts._who_has.clear()
    if _made_set(ts._unmade & UNMADE_DEPENDENCIES, ts._dependencies):  # (a typed loop: no iterator)
        for dep in ts._dependencies:
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

# Event handlers: one function per class registered on stock's
# WorkerState._handle_event, named as stock names it. Each takes the event and
# returns (recommendations, instructions); _handle_event_c (workerstate.pyx)
# dispatches through the table in wsm/events.pxi.
# Included by fastworker/workerstate.pyx.

# In stock's order; tests/test_worker_state_events.py checks them against stock's
# _handle_event registry, names included.
_on_event(UpdateDataEvent, _handle_update_data)
_on_event(FreeKeysEvent, _handle_free_keys)
_on_event(RemoveReplicasEvent, _handle_remove_replicas)
_on_event(AcquireReplicasEvent, _handle_acquire_replicas)
_on_event(ComputeTaskEvent, _handle_compute_task)
_on_event(GatherDepSuccessEvent, _handle_gather_dep_success)
_on_event(GatherDepBusyEvent, _handle_gather_dep_busy)
_on_event(GatherDepNetworkFailureEvent, _handle_gather_dep_network_failure)
_on_event(GatherDepFailureEvent, _handle_gather_dep_failure)
_on_event(RemoveWorkerEvent, _handle_remove_worker)
_on_event(SecedeEvent, _handle_secede)
_on_event(StealRequestEvent, _handle_steal_request)
_on_event(PauseEvent, _handle_pause)
_on_event(UnpauseEvent, _handle_unpause)
_on_event(RetryBusyWorkerEvent, _handle_retry_busy_worker)
_on_event(CancelComputeEvent, _handle_cancel_compute)
_on_event(ExecuteSuccessEvent, _handle_execute_success)
_on_event(ExecuteFailureEvent, _handle_execute_failure)
_on_event(RescheduleEvent, _handle_reschedule)
_on_event(FindMissingEvent, _handle_find_missing)
_on_event(RefreshWhoHasEvent, _handle_refresh_who_has)


# The fields the hottest handlers read (wsm/events.pxi: _EventFields).
cdef _EventFields _COMPUTE_FIELDS = _EventFields(ComputeTaskEvent, (
    "stimulus_id", "key", "run_id", "run_spec", "priority", "actor", "annotations",
    "span_id", "resource_restrictions", "who_has", "nbytes",
))
cdef enum:
    CT_SID, CT_KEY, CT_RUN_ID, CT_RUN_SPEC, CT_PRIORITY, CT_ACTOR, CT_ANNOTATIONS
    CT_SPAN_ID, CT_RESTRICTIONS, CT_WHO_HAS, CT_NBYTES

cdef _EventFields _EXEC_SUCCESS_FIELDS = _EventFields(ExecuteSuccessEvent, (
    "key", "start", "stop", "nbytes", "type", "value", "run_id",
))
cdef enum:
    ES_KEY, ES_START, ES_STOP, ES_NBYTES, ES_TYPE, ES_VALUE, ES_RUN_ID

cdef _EventFields _FREE_KEYS_FIELDS = _EventFields(FreeKeysEvent, ("keys", "stimulus_id"))
cdef _EventFields _ACQUIRE_FIELDS = _EventFields(
    AcquireReplicasEvent, ("who_has", "nbytes", "stimulus_id")
)
cdef _EventFields _GATHER_SUCCESS_FIELDS = _EventFields(
    GatherDepSuccessEvent, ("worker", "total_nbytes", "data", "stimulus_id")
)


cdef TaskState _new_task(WorkerState self, object key):
    cdef TaskState ts = new_task(key)
    self.tasks[key] = ts
    _count_new_task(self.task_counter, ts)
    return ts


cdef TaskState _ensure_task_exists(WorkerState self, object key, object priority,
                                   object stimulus_id):
    cdef TaskState ts = self.tasks.get(key)
    if ts is None:
        ts = _new_task(self, key)
    elif self._debug:
        logger.debug("Data task %s already known (stimulus_id=%s)", ts, stimulus_id)
    if not ts.priority:
        assert priority
        ts.priority = priority
    _append_log(self.log, (key, "ensure-task-exists", _name(ts._state), stimulus_id, _now()))
    return ts


# --- from the scheduler: data and replicas -------------------------------------------------

cdef tuple _handle_update_data(WorkerState self, object ev):
    # scatter(): the values arrive with the event.
    cdef TaskState ts
    cdef dict recs = {}
    sid = ev.stimulus_id
    for key, value in ev.data.items():
        ts = self.tasks.get(key)
        if ts is None:
            ts = _new_task(self, key)
        recs[ts] = ("memory", value, _RUN_ID_SENTINEL)
        _append_log(self.log, (key, "receive-from-scatter", _name(ts._state), sid, _now()))
    return recs, _NO_INSTR


cdef tuple _handle_free_keys(WorkerState self, object ev):
    # The scheduler no longer refers to these keys: the worker may release them.
    # That does not promise their memory back: a task that others here depend on
    # is released but not forgotten.
    cdef TaskState ts
    cdef dict recs = {}
    keys = _FREE_KEYS_FIELDS.get(ev, 0)
    _append_log(self.log, ("free-keys", keys, _FREE_KEYS_FIELDS.get(ev, 1), _now()))
    for key in keys:
        ts = self.tasks.get(key)
        if ts:
            recs[ts] = "released"
    return recs, _NO_INSTR


cdef tuple _handle_remove_replicas(WorkerState self, object ev):
    # The scheduler corrects a superfluous replica (e.g. data fetched for a task
    # released before it arrived). Only tasks in memory are released.
    cdef TaskState ts
    cdef dict recs = {}
    sid = ev.stimulus_id
    for key in ev.keys:
        ts = self.tasks.get(key)
        if ts is None or ts._state != TS_MEMORY:
            continue
        # A dependent that is running may be about to read the value: the scheduler
        # must never ask for this, and forgetting it would surface later as a
        # puzzling KeyError in execute.
        if _made_set(ts._unmade & UNMADE_DEPENDENTS, ts._dependents):  # (a typed loop: no iterator)
            for dep in ts._dependents:
                if dep.state in ("executing", "long-running"):
                    raise RuntimeError(
                        f"Cannot remove replica of {ts.key!r} while {dep.key!r} "
                        f"in state {dep.state!r}."
                    )
        _append_log(self.log, (ts.key, "remove-replica", sid, _now()))
        recs[ts] = "released"
    return recs, _NO_INSTR


cdef tuple _handle_acquire_replicas(WorkerState self, object ev):
    cdef TaskState ts
    cdef dict recs = {}
    who_has = _ACQUIRE_FIELDS.get(ev, 0)
    if self.validate:
        assert who_has.keys() == ev.nbytes.keys()
        assert all(who_has.values())
    sid = _ACQUIRE_FIELDS.get(ev, 2)
    for key, nbytes in _ACQUIRE_FIELDS.get(ev, 1).items():
        # Priority (1,): after the dependencies of computations at default or high
        # user priority, before those of low-priority ones (compute(priority=p)
        # arrives negated).
        ts = _ensure_task_exists(self, key, (1,), sid)
        if ts._state != TS_MEMORY:
            ts.nbytes = nbytes
            recs[ts] = "fetch"
    _update_who_has(self, who_has)
    return recs, _NO_INSTR


# --- from the scheduler: compute ------------------------------------------------------------

cdef tuple _handle_compute_task(WorkerState self, object ev):
    cdef TaskState ts, dep_ts
    cdef int s
    cdef _EventFields f = _COMPUTE_FIELDS
    sid = f.get(ev, CT_SID)
    key = f.get(ev, CT_KEY)
    ts = self.tasks.get(key)
    if ts is None:
        ts = _new_task(self, key)
    elif self._debug:
        logger.debug(
            "Asked to compute an already known task %s", {"task": ts, "stimulus_id": sid}
        )
    _append_log(self.log, (key, "compute-task", _name(ts._state), sid, _now()))
    run_id = f.get(ev, CT_RUN_ID)
    ts.run_id = run_id
    s = ts._state
    if s == TS_READY or s == TS_CONSTRAINED or s == TS_EXECUTING or s == TS_LONG_RUNNING \
            or s == TS_WAITING:
        return _NOTHING
    if s == TS_MEMORY:
        return {}, [_get_task_finished_msg(self, ts, run_id, sid)]
    if not (s == TS_RELEASED or s == TS_FETCH or s == TS_FLIGHT or s == TS_MISSING
            or s == TS_CANCELLED or s == TS_RESUMED or s == TS_ERROR):
        raise RuntimeError(
            f"Unexpected task state encountered for {ts}; stimulus_id={sid}; "
            f"story={self.story(ts)}"
        )
    ts.run_spec = f.get(ev, CT_RUN_SPEC)
    priority = f.get(ev, CT_PRIORITY) + (self.generation,)
    self.generation -= 1
    if f.get(ev, CT_ACTOR):
        self.actors[key] = None
    ts.exception = None
    ts.traceback = None
    ts.exception_text = ""
    ts.traceback_text = ""
    ts.priority = priority
    _compute_task_duration(ts, ev)
    ts.annotations = f.get(ev, CT_ANNOTATIONS)
    ts.span_id = f.get(ev, CT_SPAN_ID)
    # A task asked for again while it still runs (cancelled or resumed from a run)
    # keeps the restrictions it runs with, so that the resources it holds are
    # released correctly when it ends, even if the new ones differ.
    if not ((s == TS_CANCELLED or s == TS_RESUMED) and _ran_in_thread(ts._previous)):
        set_resource_restrictions(ts, f.get(ev, CT_RESTRICTIONS))
    who_has = f.get(ev, CT_WHO_HAS)
    dep_nbytes = f.get(ev, CT_NBYTES)
    if self.validate:
        assert who_has.keys() == dep_nbytes.keys()
        for dep_workers in who_has.values():
            assert dep_workers
            assert len(dep_workers) == len(set(dep_workers))
    for dep_key, nbytes in dep_nbytes.items():
        dep_ts = _ensure_task_exists(self, dep_key, priority, sid)
        if dep_ts._state != TS_MEMORY:
            dep_ts.nbytes = nbytes
        made_dependencies(ts).add(dep_ts)
        made_dependents(dep_ts).add(ts)
    _update_who_has(self, who_has)
    return {ts: "waiting"}, _NO_INSTR


cdef tuple _handle_steal_request(WorkerState self, object ev):
    cdef TaskState ts = self.tasks.get(ev.key)
    # The task may already be gone (stealing raced with a release): state None,
    # which the scheduler reads as already computing.
    state = _name(ts._state) if ts is not None else None
    smsg = StealResponseMsg(key=ev.key, state=state, stimulus_id=ev.stimulus_id)
    # Only a task that has not started may go; a constrained one holds no resources
    # yet (they are acquired on the way to executing).
    if ts is not None and _is_ready_or_waiting(ts._state):
        return {ts: "released"}, [smsg]
    return {}, [smsg]


cdef tuple _handle_cancel_compute(WorkerState self, object ev):
    # Best effort: only a task that has not started (waiting, ready, constrained).
    cdef TaskState ts = self.tasks.get(ev.key)
    if not ts or not _is_ready_or_waiting(ts._state):
        return _NOTHING
    _append_log(self.log, (ev.key, "cancel-compute", ev.stimulus_id, _now()))
    # The scheduler cannot have sent any dependent of a task it has not run yet.
    assert not ts.dependents
    return {ts: "released"}, _NO_INSTR


# --- the end of a run -----------------------------------------------------------------------

cdef TaskState _execute_done_common(WorkerState self, object ev, dict recs):
    """What every end of a run does: the task (executing, long-running, cancelled
    or resumed; after a scatter also memory or error) is done, frees its thread
    and resources, and the next ready tasks are recommended into ``recs`` (the
    handler's own dict, which the handler then adds the task's own recommendation
    to). See also _gather_dep_done_common."""
    # The key must still be there: released -> forgotten waits for the run to end.
    key = _EXEC_SUCCESS_FIELDS.get(ev, ES_KEY)
    cdef TaskState ts = self.tasks.get(key)
    assert ts, self.story(key)
    if self.validate:
        assert (ts in self.executing) != (ts in self.long_running)
    ts.done = True
    self.executed_count += 1
    _release_resources(self, ts)
    self.executing.discard(ts)
    self.long_running.discard(ts)
    _ensure_computing_into(self, recs)
    assert ts not in recs
    return ts


cdef tuple _handle_execute_success(WorkerState self, object ev):
    cdef dict recs = {}
    cdef TaskState ts = _execute_done_common(self, ev, recs)
    # The scheduler estimates occupancy from this: the run alone, without the time
    # spent in the thread pool or the event loop.
    cdef _EventFields f = _EXEC_SUCCESS_FIELDS
    made_startstops(ts).append(
        {"action": "compute", "start": f.get(ev, ES_START), "stop": f.get(ev, ES_STOP)}
    )
    ts.nbytes = f.get(ev, ES_NBYTES)
    ts.type = f.get(ev, ES_TYPE)
    recs[ts] = ("memory", f.get(ev, ES_VALUE), f.get(ev, ES_RUN_ID))
    return recs, _NO_INSTR


cdef tuple _handle_execute_failure(WorkerState self, object ev):
    cdef dict recs = {}
    cdef TaskState ts = _execute_done_common(self, ev, recs)
    if ev.start is not None and ev.stop is not None:
        made_startstops(ts).append({"action": "compute", "start": ev.start, "stop": ev.stop})
    recs[ts] = ("error", ev.exception, ev.traceback, ev.exception_text,
                ev.traceback_text, ev.run_id)
    return recs, _NO_INSTR


cdef tuple _handle_reschedule(WorkerState self, object ev):
    # The task raised Reschedule() (work stealing sends FreeKeysEvent instead).
    cdef dict recs = {}
    cdef TaskState ts = _execute_done_common(self, ev, recs)
    recs[ts] = "rescheduled"
    return recs, _NO_INSTR


cdef tuple _handle_secede(WorkerState self, object ev):
    ts = self.tasks.get(ev.key)
    if not ts:
        return _NOTHING
    return {ts: ("long-running", ev.compute_duration)}, _NO_INSTR


# --- the end of a transfer ------------------------------------------------------------------

cdef list _gather_dep_done_common(WorkerState self, object ev):
    """What every end of a transfer does: close the transfer from ev.worker; the
    tasks it carried (flight, cancelled or resumed; after a scatter also memory or
    error), done, in order. See also _execute_done_common."""
    cdef TaskState ts
    cdef list out = []
    self.transfer_incoming_bytes -= _GATHER_SUCCESS_FIELDS.get(ev, 1)
    keys = self.in_flight_workers.pop(_GATHER_SUCCESS_FIELDS.get(ev, 0))
    for key in keys:
        ts = self.tasks[key]
        ts.done = True
        ts.coming_from = None
        self.in_flight_tasks.remove(ts)
        out.append(ts)
    return out


cdef tuple _handle_gather_dep_success(WorkerState self, object ev):
    # The peer may have sent fewer keys than asked for: fetch the others elsewhere.
    cdef TaskState ts
    cdef dict recs = {}
    cdef _EventFields f = _GATHER_SUCCESS_FIELDS
    sid = f.get(ev, 3)
    for ts in _gather_dep_done_common(self, ev):
        data = f.get(ev, 2)
        if ts.key in data:
            recs[ts] = ("memory", data[ts.key], ts.run_id)
        else:
            worker = f.get(ev, 0)
            _append_log(self.log, (ts.key, "missing-dep", sid, _now()))
            if self.validate:
                assert ts._state != TS_FETCH
                assert ts not in self.data_needed[worker]
            if not ts._unmade & UNMADE_WHO_HAS:
                ts._who_has.discard(worker)
            if worker in self.has_what:
                self.has_what[worker].discard(ts.key)
            recs[ts] = "fetch"
    return recs, _NO_INSTR


cdef tuple _handle_gather_dep_busy(WorkerState self, object ev):
    # Leave a busy peer alone for a while; tasks with other holders are fetched
    # from those at once.
    cdef TaskState ts
    cdef dict recs = {}
    sid = ev.stimulus_id
    self.busy_workers.add(ev.worker)
    refresh_who_has = []
    for ts in _gather_dep_done_common(self, ev):
        recs[ts] = "fetch"
        if not _who_has(ts) - self.busy_workers:
            refresh_who_has.append(ts.key)
    instructions = [RetryBusyWorkerLater(worker=ev.worker, stimulus_id=sid)]
    if refresh_who_has:
        # Every known holder is busy: ask the scheduler whether there are others.
        instructions.append(RequestRefreshWhoHasMsg(keys=refresh_who_has, stimulus_id=sid))
    return recs, instructions


cdef tuple _handle_gather_dep_network_failure(WorkerState self, object ev):
    # The failure may be transient, but the peer is treated as dead (all its keys
    # forgotten, not just those asked for): the tasks are at once fetched from
    # another peer, or the scheduler is asked for one.
    cdef TaskState ts
    cdef dict recs = {}
    sid = ev.stimulus_id
    for ts in _gather_dep_done_common(self, ev):
        _append_log(self.log, (ts.key, "missing-dep", sid, _now()))
        recs[ts] = "fetch"
    _forget_peer(self, ev.worker, recs)
    return recs, _NO_INSTR


cdef tuple _handle_gather_dep_failure(WorkerState self, object ev):
    # Any other error (e.g. the data failed to deserialize): the tasks err.
    cdef TaskState ts
    cdef dict recs = {}
    for ts in _gather_dep_done_common(self, ev):
        recs[ts] = ("error", ev.exception, ev.traceback, ev.exception_text,
                    ev.traceback_text, ts.run_id)
    return recs, _NO_INSTR


cdef tuple _handle_remove_worker(WorkerState self, object ev):
    cdef dict recs = {}
    _forget_peer(self, ev.worker, recs)
    return recs, _NO_INSTR


cdef tuple _handle_retry_busy_worker(WorkerState self, object ev):
    self.busy_workers.discard(ev.worker)
    return _NOTHING


cdef tuple _handle_find_missing(WorkerState self, object ev):
    cdef TaskState ts
    if not self.missing_dep_flight:
        return _NOTHING
    if self.validate:
        for ts in self.missing_dep_flight:
            assert not ts.who_has, self.story(ts)
    smsg = RequestRefreshWhoHasMsg(
        keys=[ts.key for ts in self.missing_dep_flight], stimulus_id=ev.stimulus_id
    )
    return {}, [smsg]


cdef tuple _handle_refresh_who_has(WorkerState self, object ev):
    cdef TaskState ts
    cdef dict recs = {}
    _update_who_has(self, ev.who_has)
    for key in ev.who_has:
        ts = self.tasks.get(key)
        if not ts:
            continue
        if _who_has(ts) and ts._state == TS_MISSING:
            recs[ts] = "fetch"
        elif not _who_has(ts) and ts._state == TS_FETCH:
            recs[ts] = "missing"
        # A task in fetch with new holders needs nothing here: _transitions_c calls
        # _ensure_communicating after every stimulus, which may now gather it.
    return recs, _NO_INSTR


# --- pausing --------------------------------------------------------------------------------

cdef tuple _handle_pause(WorkerState self, object ev):
    # Start no new run or transfer; those under way go on.
    self.running = False
    return _NOTHING


cdef tuple _handle_unpause(WorkerState self, object ev):
    self.running = True
    return _ensure_computing(self)

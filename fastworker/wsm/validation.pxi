# Validation: the invariants of each task state and of the whole state, checked
# after every stimulus for the tasks it touched (validate=True) and by
# validate_state(). Python-visible methods of WorkerState (the class body binds
# these functions under the same names, so that subclasses can override them).
# Included by fastworker/workerstate.pyx.


def validate_task(WorkerState self, ts):
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


def _validate_dependents_not_runnable(WorkerState self, ts):
    for dep in ts.dependents:
        assert dep not in self.ready
        assert dep not in self.constrained


def _validate_task_executing(WorkerState self, ts):
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


def _validate_task_ready(WorkerState self, ts):
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


def _validate_task_waiting(WorkerState self, ts):
    assert ts.key not in self.data
    assert not ts.done
    assert ts in self.waiting
    assert ts.waiting_for_data
    assert ts.waiting_for_data == {
        dep for dep in ts.dependencies
        if dep.key not in self.data and dep.key not in self.actors
    }
    self._validate_dependents_not_runnable(ts)


def _validate_task_flight(WorkerState self, ts):
    assert ts.key not in self.data
    assert ts.key not in self.actors
    assert ts in self.in_flight_tasks
    self._validate_dependents_not_runnable(ts)
    assert ts.coming_from
    assert ts.coming_from in self.in_flight_workers
    assert ts.key in self.in_flight_workers[ts.coming_from]


def _validate_task_fetch(WorkerState self, ts):
    assert ts.key not in self.data
    assert ts.key not in self.actors
    assert self._address not in ts.who_has
    assert not ts.done
    assert ts.who_has
    for w in ts.who_has:
        assert ts.key in self.has_what[w]
        assert ts in self.data_needed[w]
    self._validate_dependents_not_runnable(ts)


def _validate_task_missing(WorkerState self, ts):
    assert ts.key not in self.data
    assert ts.key not in self.actors
    assert not ts.who_has
    assert not ts.done
    assert not any(ts.key in has_what for has_what in self.has_what.values())
    assert ts in self.missing_dep_flight
    self._validate_dependents_not_runnable(ts)


def _validate_task_released(WorkerState self, ts):
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


def validate_state(WorkerState self):
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


def _validate_resources(WorkerState self):
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

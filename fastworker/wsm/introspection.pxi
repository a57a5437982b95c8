# Introspection: stories and the debugging dict of cluster dumps. Python-visible
# methods of WorkerState (the class body binds these functions under the same names).
# Included by fastworker/workerstate.pyx.


def story(WorkerState self, *keys_or_tasks_or_stimuli):
    """The log entries that mention any of these keys, tasks or stimulus ids."""
    keys_or_stimuli = {
        e.key if isinstance(e, (TaskState, StockTaskState)) else e
        for e in keys_or_tasks_or_stimuli
    }
    return worker_story(keys_or_stimuli, self.log)


def stimulus_story(WorkerState self, *keys_or_tasks):
    """The logged stimuli that concern any of these keys or tasks."""
    keys = {e.key if isinstance(e, (TaskState, StockTaskState)) else e for e in keys_or_tasks}
    return [ev for ev in self.stimulus_log if getattr(ev, "key", None) in keys]


def _to_dict(WorkerState self, *, exclude=()):
    """Dictionary representation for debugging (cluster dumps), as stock's."""
    info = {
        "address": self.address,
        "nthreads": self.nthreads,
        "running": self.running,
        "ready": [ts.key for ts in self.ready.sorted()],
        "constrained": [ts.key for ts in self.constrained.sorted()],
        "data": dict.fromkeys(self.data),
        "data_needed": {w: [ts.key for ts in tss.sorted()] for w, tss in self.data_needed.items()},
        "executing": {ts.key for ts in self.executing},
        "has_what": dict(self.has_what),
        "long_running": {ts.key for ts in self.long_running},
        "in_flight_tasks": {ts.key for ts in self.in_flight_tasks},
        "in_flight_workers": self.in_flight_workers,
        "missing_dep_flight": [ts.key for ts in self.missing_dep_flight],
        "busy_workers": self.busy_workers,
        "log": self.log,
        "stimulus_log": self.stimulus_log,
        "transition_counter": self.transition_counter,
        "tasks": self.tasks,
        "task_counts": dict(self.task_counter.current_count()),
        "task_cumulative_elapsed": dict(self.task_counter.cumulative_elapsed()),
    }
    info = {k: v for k, v in info.items() if k not in exclude}
    return recursive_to_dict(info, exclude=exclude)

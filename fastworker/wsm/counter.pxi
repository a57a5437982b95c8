# TaskCounter: tasks per (prefix, state) and the task-seconds spent there, as
# distributed's TaskCounter reports them (heartbeats, metrics, cluster dumps).
# Included by fastworker/workerstate.pyx.

cdef class _PrefixCounts:
    """Per task prefix: how many tasks are in each state, and since when."""
    cdef Py_ssize_t n[16]
    cdef double since[16]      # when n last changed
    cdef double elapsed[16]    # task-seconds accumulated up to ``since``
    cdef bint seen[16]         # ever counted: shown by cumulative_elapsed()

    cdef inline void change(self, int state, Py_ssize_t delta, double now) noexcept:
        self.elapsed[state] += (now - self.since[state]) * self.n[state]
        self.since[state] = now
        self.n[state] += delta
        self.seen[state] = True

    cdef inline double elapsed_until(self, int state, double now) noexcept:
        return self.elapsed[state] + (now - self.since[state]) * self.n[state]


cdef class TaskCounter:
    """Counts tasks by (prefix, state) and the task-seconds spent there.

    Same API as distributed's ``TaskCounter`` (read by the Worker's heartbeat,
    metrics and cluster dumps): ``new_task``, ``transitions``, ``current_count`` and
    ``cumulative_elapsed``. Counts live in C arrays per prefix, and elapsed time is
    integrated per (prefix, state) when its count changes, so a stimulus costs
    O(tasks it touched) instead of O(all (prefix, state) pairs).
    """
    cdef dict _prefixes      # prefix -> _PrefixCounts
    cdef set _new_tasks

    def __init__(self):
        self._prefixes = {}
        self._new_tasks = set()

    cdef inline _PrefixCounts _counts_for(self, object prefix):
        counts = self._prefixes.get(prefix)
        if counts is None:
            counts = _PrefixCounts()
            self._prefixes[prefix] = counts
        return <_PrefixCounts>counts

    def current_count(self, by_prefix=True):
        """Tasks per (prefix, state), or per state if not ``by_prefix``."""
        cdef _PrefixCounts counts
        cdef int state
        out = Counter()
        for prefix, counts in self._prefixes.items():
            for state in range(<int>TS_NONE):
                if counts.n[state]:
                    if by_prefix:
                        out[prefix, _name(state)] = counts.n[state]
                    else:
                        out[_name(state)] += counts.n[state]
        return out

    @property
    def _current_count(self):
        return self.current_count()

    def cumulative_elapsed(self, by_prefix=True):
        """Task-seconds spent per (prefix, state), or per state."""
        cdef _PrefixCounts counts
        cdef int state
        cdef double now = _monotonic()
        out = defaultdict(float)
        for prefix, counts in self._prefixes.items():
            for state in range(<int>TS_NONE):
                if counts.seen[state]:
                    if by_prefix:
                        out[prefix, _name(state)] = counts.elapsed_until(state, now)
                    else:
                        out[_name(state)] += counts.elapsed_until(state, now)
        return out

    def new_task(self, ts):
        self._new_tasks.add(ts)

    def transitions(self, prev_states):
        """Account for the tasks whose state changed from ``prev_states``."""
        self.transitions_c(prev_states)

    cdef int transitions_c(self, dict prev_states) except -1:
        cdef TaskState ts
        cdef _PrefixCounts counts
        cdef int state
        if not prev_states and not self._new_tasks:
            return 0
        cdef double now = _monotonic()
        for ts, prev_state in prev_states.items():
            counts = self._counts_for(ts.get_prefix())
            if ts._state != TS_FORGOTTEN:
                counts.change(ts._state, 1, now)
            if ts in self._new_tasks:
                self._new_tasks.discard(ts)
            else:
                state = state_code(prev_state)
                assert counts.n[state] > 0
                counts.change(state, -1, now)
        for ts in self._new_tasks:
            self._counts_for(ts.get_prefix()).change(ts._state, 1, now)
        self._new_tasks.clear()
        return 0


cdef inline int _count_new_task(object counter, TaskState ts) except -1:
    if type(counter) is TaskCounter:
        (<TaskCounter>counter)._new_tasks.add(ts)
    else:
        counter.new_task(ts)
    return 0

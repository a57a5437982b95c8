# Fetching from peers: who holds what, which peer to gather from next, how much
# per transfer, and forgetting a peer that is gone.
# Included by fastworker/workerstate.pyx; the gather exits are in wsm/handlers.pxi.

cdef int _update_who_has(WorkerState self, object who_has) except -1:
    """Bring who_has, has_what and the data_needed queues in line with the
    scheduler's view of who holds which key."""
    cdef TaskState ts
    cdef set workers
    for key, holders in who_has.items():
        ts = self.tasks.get(key)
        if not ts:
            continue
        workers = set(holders)
        if self._address in workers:
            workers.remove(self._address)
            if ts._state != TS_MEMORY:
                logger.debug(
                    "Scheduler claims worker %s holds data for task %s, which is not true.",
                    self._address, ts,
                )
        old = _who_has(ts)
        if old == workers:
            continue
        if old:  # (a task's first holders: nothing to remove)
            for worker in old - workers:
                _item_of(self.has_what, worker).remove(key)
                if ts._state == TS_FETCH:
                    _heap_remove(_queue_of(self.data_needed, worker), ts)
        for worker in workers - old:
            _set_add(_item_of(self.has_what, worker), key)
            if ts._state == TS_FETCH:
                _heap_add(_queue_of(self.data_needed, worker), ts)
        ts._who_has = workers
        ts._unmade &= ~UNMADE_WHO_HAS
    return 0


cdef bint _should_throttle_incoming_transfers(WorkerState self) except -1:
    """Whether to start no new transfer: too many peers in flight while the bytes
    in flight pass the threshold, or the bytes in flight reach the limit."""
    reached_count_limit = len(self.in_flight_workers) >= self.transfer_incoming_count_limit
    reached_threshold = (
        self.transfer_incoming_bytes >= self.transfer_incoming_bytes_throttle_threshold
    )
    reached_bytes_limit = self.transfer_incoming_bytes >= self.transfer_incoming_bytes_limit
    return (reached_count_limit and reached_threshold) or reached_bytes_limit


cdef class _GatherOrder:
    """Peers to gather from, best first, as stock's _select_workers_for_gather yields them.

    Candidates are ranked by (top task priority, remote host, -queue length, seeded
    random draw); a candidate whose queue changed since it was ranked is re-ranked.
    Iterated lazily, because each gather changes other peers' queues.
    """
    cdef WorkerState ws
    cdef list heap
    cdef object current

    def __init__(self, WorkerState ws):
        self._init(ws)

    cdef int _init(self, WorkerState ws) except -1:
        self.ws = ws
        self.current = None
        data_needed = ws.data_needed
        if PyDict_Check(data_needed):
            self.heap = _rank_peers(ws, <dict>data_needed)
            return 0
        # data_needed rebound to a mapping that is no dict: stock's walk as written
        host = _host(ws.address)
        heap = []
        for worker, tasks in list(data_needed.items()):
            if not tasks:
                del data_needed[worker]
                continue
            if worker in ws.in_flight_workers or worker in ws.busy_workers:
                continue
            heap.append((
                _heap_peek(tasks).priority, _host(worker) != host, -len(tasks),
                ws.rng.random(), worker, tasks,
            ))
        heapify(heap)
        self.heap = heap
        return 0

    cdef bint empty(self) noexcept:
        return not self.heap

    cdef object next_c(self):
        """The next (worker, tasks) to gather from; None when there is none."""
        data_needed = self.ws.data_needed
        if self.current is not None:
            worker, tasks = self.current
            self.current = None
            if not _heap_len(tasks):
                tasks = None  # (so that the dropped queue can be reused)
                _drop_queue(data_needed, worker)
        heap = self.heap
        while heap:
            _, is_remote, ntasks_neg, rnd, worker, tasks = heappop(heap)
            if not _heap_len(tasks):
                tasks = None
                _drop_queue(data_needed, worker)
            elif -ntasks_neg != _heap_len(tasks):
                ntasks = _heap_len(tasks)
                heappush(heap, (_heap_peek(tasks).priority, is_remote, -ntasks, rnd, worker, tasks))
            else:
                self.current = (worker, tasks)
                return self.current
        return None

    def __iter__(self):
        return self

    def __next__(self):
        nxt = self.next_c()
        if nxt is None:
            raise StopIteration
        return nxt


cdef object _RANDOM_CLASS = random.Random
cdef object _RANDOM_RANDOM = random.Random.random


cdef object _random_draw(object rng):
    """random.Random.random itself (the C method, called with rng) when rng.random
    is it: a plain random.Random without an instance attribute ``random``; else
    None (then rng.random() is looked up and called each time)."""
    cdef PyObject** dictptr
    if type(rng) is not _RANDOM_CLASS:
        return None
    dictptr = _PyObject_GetDictPtr(rng)
    if dictptr is not NULL and dictptr[0] is not NULL:
        if type(<object>dictptr[0]) is not dict:
            return None
        if PyDict_GetItemWithError(<dict>dictptr[0], "random") is not NULL:
            return None
    return _RANDOM_RANDOM


cdef list _rank_peers(WorkerState ws, dict data_needed):
    """The candidates of _GatherOrder, heapified, from a dict data_needed.

    Stock walks a list of data_needed.items(), deleting the peers whose queue is
    empty and skipping those in flight or busy. The same walk in dict order without
    that list (one tuple per peer per stimulus): a stimulus that finds every peer in
    flight allocates nothing. The empty queues are deleted after the walk (the dict
    ends the same), the random draws are made in the same order.
    """
    cdef PyObject* pkey
    cdef PyObject* pvalue
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t ntasks
    cdef list heap = []
    cdef list empties = None
    cdef dict in_flight = ws.in_flight_workers
    cdef set busy = ws.busy_workers
    host = None
    rng = None
    draw = None
    while PyDict_Next(data_needed, &pos, &pkey, &pvalue):
        worker = <object>pkey
        tasks = <object>pvalue
        ntasks = _heap_len(tasks)
        if not ntasks:
            if empties is None:
                empties = []
            empties.append(worker)
            continue
        if worker in in_flight or worker in busy:
            continue
        if host is None:
            host = _host(ws._address if ws._address is not None else ws.address)
            rng = ws.rng
            draw = _random_draw(rng)
        top = _heap_peek(tasks)
        # _host and rng.random() run no code that touches data_needed
        heap.append((
            (<TaskState>top).priority if isinstance(top, TaskState) else top.priority,
            _host(worker) != host, -ntasks,
            draw(rng) if draw is not None else rng.random(), worker, tasks,
        ))
    if empties is not None:
        tasks = None
        for worker in empties:
            _drop_queue(data_needed, worker)
    if len(heap) > 1:
        heapify(heap)
    return heap


cdef tuple _ensure_communicating(WorkerState self, object stimulus_id):
    """Start transfers (GatherDep) from the best peers while not throttled.

    Called at the end of every stimulus (_transitions_c), recommendations or not:
    a new replica may make a task fetchable from a peer that is free."""
    cdef TaskState ts
    cdef list to_gather
    if not self.running or not self.data_needed:
        return _NOTHING
    if _should_throttle_incoming_transfers(self):
        return _NOTHING
    cdef _GatherOrder order = _select_workers_for_gather(self)
    if order.empty():
        # every peer with tasks to fetch is in flight or busy: nothing to do
        return _NOTHING
    cdef dict recs = {}
    cdef list instructions = []
    while True:
        nxt = order.next_c()
        if nxt is None:
            break
        worker, available = nxt
        assert worker != self._address
        to_gather = []
        message_nbytes = _select_keys_for_gather(self, available, to_gather)
        # The first task of a transfer always goes when nothing is in flight.
        assert to_gather or self.transfer_incoming_bytes
        if not to_gather:
            break
        to_gather_keys = {ts.key for ts in to_gather}
        if self._debug:
            logger.debug(
                "Gathering %d tasks from %s; %d more remain. Pending workers: %d; "
                "connections: %d/%d; busy: %d",
                len(to_gather), worker, len(available), len(self.data_needed),
                len(self.in_flight_workers), self.transfer_incoming_count_limit,
                len(self.busy_workers),
            )
        _append_log(self.log, ("gather-dependencies", worker, to_gather_keys, stimulus_id, _now()))
        for ts in to_gather:
            if self.validate:
                assert ts._state == TS_FETCH
                assert worker in ts.who_has
                assert ts not in recs
            recs[ts] = ("flight", worker)
        instructions.append(_gather_dep(worker, to_gather_keys, message_nbytes, stimulus_id))
        self.in_flight_workers[worker] = to_gather_keys
        self.transfer_incoming_count_total += 1
        self.transfer_incoming_bytes += message_nbytes
        if _should_throttle_incoming_transfers(self):
            break
    return recs, instructions


cdef _GatherOrder _select_workers_for_gather(WorkerState self):
    # Stock walks this as a generator, interleaved with the gathers it causes; the
    # candidates' order depends on queue lengths that those gathers change, so the
    # whole selection is replayed lazily through _GatherOrder below.
    # (made without a Python-level call: once per stimulus)
    cdef _GatherOrder order = _GatherOrder.__new__(_GatherOrder)
    order._init(self)
    return order


cdef object _select_keys_for_gather(WorkerState self, object available, list to_gather):
    """Move the best tasks of one peer's queue into ``to_gather``, within the
    transfer limits, taking each out of every peer's queue; return their bytes."""
    cdef TaskState ts
    message_nbytes = 0
    while available:
        ts = _heap_peek(available)
        if _task_exceeds_transfer_limits(self, ts, message_nbytes):
            break
        if _made_set(ts._unmade & UNMADE_WHO_HAS, ts._who_has):  # (a typed loop: no iterator)
            for w in ts._who_has:
                _heap_remove(_queue_of(self.data_needed, w), ts)
        to_gather.append(ts)
        message_nbytes += ts.get_nbytes()
    return message_nbytes


cdef bint _task_exceeds_transfer_limits(WorkerState self, TaskState ts,
                                        object message_nbytes) except -1:
    # The first task of a transfer always goes when nothing is in flight, however
    # large: else a task larger than the limits could never be fetched.
    if self.transfer_incoming_bytes == 0 and message_nbytes == 0:
        return False
    allowance = self.transfer_incoming_bytes_limit - self.transfer_incoming_bytes
    if message_nbytes != 0:
        allowance = min(allowance, self.transfer_message_bytes_limit) - message_nbytes
    return ts.get_nbytes() > allowance


cdef int _forget_peer(WorkerState self, object worker, dict recs) except -1:
    """A peer is gone: drop it from every who_has; tasks that only it held are
    recommended missing (overriding what recs said for them)."""
    cdef TaskState ts
    for ts in self.data_needed.pop(worker, ()):
        if self.validate:
            assert ts._state == TS_FETCH
            assert worker in ts.who_has
        if _who_has(ts) == {worker}:
            recs[ts] = "missing"
    for key in self.has_what.pop(worker, ()):
        ts = self.tasks[key]
        made_who_has(ts).remove(worker)
    return 0

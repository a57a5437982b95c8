# Instruction builders. Instructions are distributed's own dataclasses. Their
# generated __init__ only stores the fields in slots, so the hot ones are made by
# allocating the instance and storing each field at its slot's offset
# (includes/slots.h), without a Python frame or attribute lookups; if a release
# gives one a real __init__, it is called instead (checked at import).
# Included by fastworker/workerstate.pyx.

cdef bint _plain_dataclass(object cls, tuple fields):
    """Whether cls(**fields) only stores its fields (no custom __init__/__post_init__)."""
    return (
        dataclasses.is_dataclass(cls)
        and tuple(f.name for f in dataclasses.fields(cls)) == fields
        and not hasattr(cls, "__post_init__")
        and getattr(cls.__init__, "__qualname__", "") == f"{cls.__qualname__}.__init__"
    )


cdef object _plain_slots(object cls, tuple fields):
    """The slot offsets of fields, in this order, when cls(**fields) only stores them in
    plain slots of an instance made by object.__new__; else None (call the class)."""
    if not _plain_dataclass(cls, fields) or cls.__new__ is not object.__new__:
        return None
    return _slot_offsets(cls, fields)


cdef inline object _two_slots(object cls, tuple offsets, object stimulus_id, object value):
    """An instance of the plain slotted dataclass ``cls`` with its (stimulus_id,
    value) slots written at ``offsets``."""
    out = fw_alloc(cls)
    fw_put(out, offsets[0], stimulus_id)
    fw_put(out, offsets[1], value)
    return out


cdef object _EXECUTE_SLOTS = _plain_slots(Execute, ("stimulus_id", "key"))


cdef inline object _execute(object key, object stimulus_id):
    if _EXECUTE_SLOTS is None:
        return Execute(key=key, stimulus_id=stimulus_id)
    return _two_slots(Execute, <tuple>_EXECUTE_SLOTS, stimulus_id, key)


cdef object _RELEASE_DATA_SLOTS = _plain_slots(ReleaseWorkerDataMsg, ("stimulus_id", "key"))


cdef inline object _release_worker_data_msg(object key, object stimulus_id):
    if _RELEASE_DATA_SLOTS is None:
        return ReleaseWorkerDataMsg(key=key, stimulus_id=stimulus_id)
    return _two_slots(ReleaseWorkerDataMsg, <tuple>_RELEASE_DATA_SLOTS, stimulus_id, key)


cdef object _ADD_KEYS_SLOTS = _plain_slots(AddKeysMsg, ("stimulus_id", "keys"))


cdef inline object _add_keys_msg(object keys, object stimulus_id):
    if _ADD_KEYS_SLOTS is None:
        return AddKeysMsg(keys=keys, stimulus_id=stimulus_id)
    return _two_slots(AddKeysMsg, <tuple>_ADD_KEYS_SLOTS, stimulus_id, keys)


cdef object _GATHER_DEP_SLOTS = _plain_slots(
    GatherDep, ("stimulus_id", "worker", "to_gather", "total_nbytes")
)


cdef inline object _gather_dep(object worker, object to_gather, object total_nbytes,
                               object stimulus_id):
    if _GATHER_DEP_SLOTS is None:
        return GatherDep(
            worker=worker, to_gather=to_gather, total_nbytes=total_nbytes,
            stimulus_id=stimulus_id,
        )
    cdef tuple offsets = _GATHER_DEP_SLOTS
    out = fw_alloc(GatherDep)
    fw_put(out, offsets[0], stimulus_id)
    fw_put(out, offsets[1], worker)
    fw_put(out, offsets[2], to_gather)
    fw_put(out, offsets[3], total_nbytes)
    return out


# TaskFinishedMsg carries pickle.dumps(type) (which goes through inspect.getmodule)
# and typename(type); for builtin types neither ever changes, so both are kept.
cdef dict _TYPE_INFO = {}


cdef tuple _type_info(object typ):
    info = _TYPE_INFO.get(typ)
    if info is not None:
        return <tuple>info
    try:
        pickled = pickle.dumps(typ)
    except Exception:
        # Some types cannot be pickled (a _thread.lock, say): stock then sends the
        # pickled name instead.
        pickled = pickle.dumps(typename(typ))
    info = (pickled, typename(typ))
    if getattr(typ, "__module__", None) == "builtins":
        _TYPE_INFO[typ] = info
    return <tuple>info


cdef tuple _TASK_FINISHED_FIELDS = (
    "stimulus_id", "key", "run_id", "nbytes", "type", "typename", "metadata", "thread",
    "startstops",
)
cdef object _TASK_FINISHED_SLOTS = _plain_slots(TaskFinishedMsg, _TASK_FINISHED_FIELDS)


cdef object _task_finished_msg(object key, object run_id, object nbytes, object typ,
                               object metadata, object thread, object startstops,
                               object stimulus_id):
    pickled, name = _type_info(typ)
    if _TASK_FINISHED_SLOTS is None:
        return TaskFinishedMsg(
            key=key, run_id=run_id, nbytes=nbytes, type=pickled, typename=name,
            metadata=metadata, thread=thread, startstops=startstops,
            stimulus_id=stimulus_id,
        )
    cdef tuple offsets = _TASK_FINISHED_SLOTS
    out = fw_alloc(TaskFinishedMsg)
    fw_put(out, offsets[0], stimulus_id)
    fw_put(out, offsets[1], key)
    fw_put(out, offsets[2], run_id)
    fw_put(out, offsets[3], nbytes)
    fw_put(out, offsets[4], pickled)
    fw_put(out, offsets[5], name)
    fw_put(out, offsets[6], metadata)
    fw_put(out, offsets[7], thread)
    fw_put(out, offsets[8], startstops)
    return out


# _get_task_finished_msg: stock's asserts ``ts.nbytes is not None`` also when not
# validating from 2026.6.0 on, before only under ``validate``. One function per
# release group, chosen at import (Features.finished_msg_asserts_nbytes).
cdef object _get_task_finished_msg_asserting(WorkerState self, TaskState ts, object run_id,
                                             object stimulus_id):
    if self.validate:
        assert ts._state == TS_MEMORY
        assert ts.key in self.data or ts.key in self.actors
        assert ts.type is not None
    assert ts.nbytes is not None
    return _task_finished_msg(
        ts.key, run_id, ts.nbytes, ts.type, made_metadata(ts), self.threads.get(ts.key),
        made_startstops(ts), stimulus_id,
    )


cdef object _get_task_finished_msg_validating(WorkerState self, TaskState ts, object run_id,
                                              object stimulus_id):
    if self.validate:
        assert ts._state == TS_MEMORY
        assert ts.key in self.data or ts.key in self.actors
        assert ts.type is not None
        assert ts.nbytes is not None
    return _task_finished_msg(
        ts.key, run_id, ts.nbytes, ts.type, made_metadata(ts), self.threads.get(ts.key),
        made_startstops(ts), stimulus_id,
    )


cdef object (*_get_task_finished_msg)(WorkerState, TaskState, object, object)
if _FEATURES.finished_msg_asserts_nbytes:
    _get_task_finished_msg = _get_task_finished_msg_asserting
else:
    _get_task_finished_msg = _get_task_finished_msg_validating


# LongRunningMsg has a run_id from 2025.2.0 on (Features.long_running_run_id).
cdef object _long_running_msg_with_run_id(TaskState ts, object compute_duration,
                                          object stimulus_id):
    return LongRunningMsg(
        key=ts.key, run_id=ts.run_id, compute_duration=compute_duration,
        stimulus_id=stimulus_id,
    )


cdef object _long_running_msg_without_run_id(TaskState ts, object compute_duration,
                                             object stimulus_id):
    return LongRunningMsg(
        key=ts.key, compute_duration=compute_duration, stimulus_id=stimulus_id
    )


cdef object (*_long_running_msg)(TaskState, object, object)
if _FEATURES.long_running_run_id:
    _long_running_msg = _long_running_msg_with_run_id
else:
    _long_running_msg = _long_running_msg_without_run_id


# compute-task sets TaskState.duration from the event where both have it
# (until 2025.1.0, Features.taskstate_duration).
cdef int _set_duration(TaskState ts, object ev) except -1:
    (<TaskStateWithDuration>ts).duration = ev.duration
    return 0


cdef int _no_duration(TaskState ts, object ev) except -1:
    return 0


cdef int (*_compute_task_duration)(TaskState, object) except -1
if _FEATURES.taskstate_duration:
    _compute_task_duration = _set_duration
else:
    _compute_task_duration = _no_duration


def _fast_paths():
    """Which instructions are built slot by slot (True) rather than through their
    dataclass __init__; both give equal objects. For tests and diagnostics."""
    return {
        "Execute": _EXECUTE_SLOTS is not None,
        "TaskFinishedMsg": _TASK_FINISHED_SLOTS is not None,
        "ReleaseWorkerDataMsg": _RELEASE_DATA_SLOTS is not None,
        "AddKeysMsg": _ADD_KEYS_SLOTS is not None,
        "GatherDep": _GATHER_DEP_SLOTS is not None,
    }

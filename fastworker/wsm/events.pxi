# Events: the handler table, and the copies of events kept in the stimulus log.
# Included by fastworker/workerstate.pyx; the handlers are in wsm/handlers.pxi.

# --- the handler table -----------------------------------------------------------------
# Stock registers one _handle_<event> method per event class on a
# singledispatchmethod. Here each registered class gets a small code (its index in
# _HANDLERS), and an event's class is mapped to its code once: subclasses are
# resolved through the MRO as singledispatch resolves them, and cached.
ctypedef tuple (*Handler)(WorkerState self, object ev)

cdef enum:
    MAX_EVENTS = 32
cdef Handler _HANDLERS[MAX_EVENTS]       # code -> handler; code 0: no handler
cdef dict _EVENT_CODES = {}              # registered event class -> code
cdef dict _RESOLVED_EVENT_CODES = {}     # any event class seen -> code (0: none)


cdef int _on_event(object cls, Handler handler) except -1:
    """Register ``handler`` for events of class ``cls`` (and its subclasses)."""
    cdef int code = len(_EVENT_CODES) + 1
    assert code < MAX_EVENTS
    _EVENT_CODES[cls] = code
    _RESOLVED_EVENT_CODES[cls] = code
    _HANDLERS[code] = handler
    return 0


cdef int _event_code(object cls) except -1:
    code = _RESOLVED_EVENT_CODES.get(cls)
    if code is not None:
        return code
    for base in cls.__mro__[1:]:
        code = _EVENT_CODES.get(base)
        if code is not None:
            _RESOLVED_EVENT_CODES[cls] = code
            return code
    return 0


def _handled_event_classes():
    """The event classes that have a handler, for tests."""
    return list(_EVENT_CODES)


# --- reading events' fields -------------------------------------------------------------
# Events are slotted dataclasses. A handler reads the fields of the event classes
# it handles most through an _EventFields of that class: straight from the slot
# when the event is exactly that class and the slot is set, else through getattr
# (subclasses, unset slots: the same value or the same AttributeError).

cdef enum:
    MAX_EVENT_FIELDS = 16


@cython.final
cdef class _EventFields:
    cdef object cls
    cdef tuple names
    cdef bint direct
    cdef Py_ssize_t offsets[MAX_EVENT_FIELDS]

    def __init__(self, cls, tuple names):
        assert len(names) <= MAX_EVENT_FIELDS
        self.cls = cls
        self.names = names
        offsets = _slot_offsets(cls, names)
        self.direct = offsets is not None
        if self.direct:
            for i, offset in enumerate(offsets):
                self.offsets[i] = offset

    cdef inline object get(self, object ev, int i):
        cdef PyObject* value
        if self.direct and type(ev) is self.cls:
            value = fw_peek_slot(ev, self.offsets[i])
            if value is not NULL:
                return <object>value
        return getattr(ev, <str>self.names[i])


def _event_fields_direct():
    """Which event classes' fields are read from their slots, for tests."""
    return {
        f.cls.__name__: f.direct
        for f in (_COMPUTE_FIELDS, _EXEC_SUCCESS_FIELDS, _FREE_KEYS_FIELDS,
                  _ACQUIRE_FIELDS, _GATHER_SUCCESS_FIELDS)
    }


# --- stimulus log entries ------------------------------------------------------------
# Stock logs ``stim.to_loggable(handled=...)``: the event itself, or for four event
# classes a ``copy.copy`` with the bulky payload blanked. copy.copy of a slotted
# dataclass goes through __reduce_ex__ and copyreg; the same shallow copy is made
# here slot by slot. Classes whose to_loggable is not one of the known ones (user
# subclasses) are asked to make their own entry.
cdef enum LoggableKind:
    LOG_NONE = -1        # FindMissingEvent: not logged
    LOG_OWN = 0          # call stim.to_loggable
    LOG_IN_PLACE         # StateMachineEvent.to_loggable: set handled, log the event
    LOG_NO_RUN_SPEC      # ComputeTaskEvent: copy, run_spec = None
    LOG_NO_VALUE         # ExecuteSuccessEvent: copy, value = None
    LOG_DATA_KEYS        # GatherDepSuccessEvent / UpdateDataEvent: copy, data values None

cdef dict _LOGGABLE = {}  # event class -> (LoggableKind, slot names, slot offsets or None)


cdef tuple _loggable_kind(object cls):
    method = cls.to_loggable
    if method is StateMachineEvent.to_loggable:
        kind = LOG_IN_PLACE
    elif method is ComputeTaskEvent.to_loggable and cls._clean is ComputeTaskEvent._clean:
        kind = LOG_NO_RUN_SPEC
    elif method is ExecuteSuccessEvent.to_loggable:
        kind = LOG_NO_VALUE
    elif method is GatherDepSuccessEvent.to_loggable or method is UpdateDataEvent.to_loggable:
        kind = LOG_DATA_KEYS
    else:
        kind = LOG_OWN
    # copy.copy of these objects: a new instance with the slots that are set
    if cls.__dictoffset__ or cls.__new__ is not StateMachineEvent.__new__:
        kind = LOG_OWN  # an instance __dict__ or its own __new__: let it copy itself
    if issubclass(cls, FindMissingEvent):
        kind = LOG_NONE
    slots = tuple(copyreg._slotnames(cls))
    offsets = _slot_offsets(cls, slots)
    # the slots that logging writes, written at their offsets when all are plain
    cdef Py_ssize_t handled_at = -1, cleared_at = -1
    if offsets is not None and "handled" in slots:
        handled_at = offsets[slots.index("handled")]
        cleared = (
            "run_spec" if kind == LOG_NO_RUN_SPEC else "value" if kind == LOG_NO_VALUE else None
        )
        if cleared is not None:
            if cleared in slots:
                cleared_at = offsets[slots.index(cleared)]
            else:
                handled_at = -1
    entry = (kind, slots, offsets, handled_at, cleared_at)
    _LOGGABLE[cls] = entry
    return entry


cdef object _slot_offsets(object cls, tuple slots):
    """The offsets of cls's slots when getattr/setattr on them only read and write
    the slot itself (plain member descriptors, object's attribute access); else
    None, and instances are copied slot by slot through getattr/setattr."""
    if (
        cls.__getattribute__ is not object.__getattribute__
        or cls.__setattr__ is not object.__setattr__
        or getattr(cls, "__getattr__", None) is not None
    ):
        return None
    offsets = []
    for name in slots:
        for base in cls.__mro__:
            if name in base.__dict__:
                descr = base.__dict__[name]
                break
        else:
            return None
        offset = fw_slot_offset(descr)
        if offset < 0:
            return None
        offsets.append(offset)
    return tuple(offsets)


cdef object _shallow_copy(object obj, tuple entry):
    # As copy.copy: a new instance (StateMachineEvent.__new__ only presets
    # ``handled``, which is copied below like every other slot), then the set slots.
    offsets = entry[2]
    if offsets is not None:
        return fw_copy_slots(obj, <tuple>offsets)
    cls = type(obj)
    out = object.__new__(cls)
    for name in <tuple>entry[1]:
        try:
            value = getattr(obj, name)
        except AttributeError:
            continue
        setattr(out, name, value)
    return out


cdef object _to_loggable(object stim, object handled):
    cls = type(stim)
    entry = _LOGGABLE.get(cls)
    if entry is None:
        entry = _loggable_kind(cls)
    cdef int kind = (<tuple>entry)[0]
    cdef Py_ssize_t handled_at = (<tuple>entry)[3]
    if kind == LOG_NONE:
        return None
    if kind == LOG_IN_PLACE:
        if handled_at >= 0:
            fw_put(stim, handled_at, handled)
        else:
            stim.handled = handled
        return stim
    if kind == LOG_OWN:
        return stim.to_loggable(handled=handled)
    out = _shallow_copy(stim, <tuple>entry)
    if handled_at >= 0 and kind != LOG_DATA_KEYS:
        # (the same writes as below, at the slots' offsets)
        fw_put(out, (<tuple>entry)[4], None)
        fw_put(out, handled_at, handled)
        return out
    if kind == LOG_NO_RUN_SPEC:
        out.run_spec = None
        out.handled = handled
    elif kind == LOG_NO_VALUE:
        out.handled = handled
        out.value = None
    else:
        out.handled = handled
        out.data = dict.fromkeys(stim.data)
    return out

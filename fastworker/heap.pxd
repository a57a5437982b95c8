# cython: language_level=3
"""C-level declarations of :class:`fastworker.heap.PriorityHeapSet`.

A compiled WorkerState cimports this to drive its ``ready``, ``constrained`` and
``data_needed`` queues without Python-level method dispatch::

    from fastworker.heap cimport PriorityHeapSet

    cdef PriorityHeapSet ready = PriorityHeapSet()
    ready.push(ts)
    if ready.size():
        ts = ready.pop_c()
"""
from cpython.object cimport PyObject

# Priorities that are tuples of at most FAST_ITEMS exact ints (fitting a C long long)
# and/or exact non-NaN floats are copied into the entry and compared in C.
cdef enum:
    FAST_ITEMS = 6

# HeapEntry.kind: how the key of an entry can be compared.
cdef enum:
    KIND_SLOW = 0     # only through PyObject_RichCompare
    KIND_TUPLE = 1    # a tuple of FAST_ITEMS or fewer C numbers
    KIND_SCALAR = 2   # a single C number (the key is an int or float, not a tuple)

cdef union FastNum:
    long long i
    double d

# One heap entry: the key, the element and the insertion counter (tie breaker).
# ``ref`` is a strong reference to the element, except after a compaction found the
# element not to be a member: then it is a weakref to it (``weak`` is set), so that
# the heap no longer keeps it alive, exactly as the stock HeapSet never does.
cdef struct HeapEntry:
    PyObject* key
    PyObject* ref
    long long inc
    unsigned char kind
    unsigned char nfast     # number of items in vals (KIND_TUPLE / KIND_SCALAR)
    unsigned char fmask     # bit j set: vals[j] is a double, else a long long
    unsigned char weak
    FastNum vals[FAST_ITEMS]


cdef class PriorityHeapSet:
    # Heap array of entries, ordered by (key, inc) exactly like heapq orders the
    # (key, inc, weakref) tuples of the stock HeapSet.
    cdef HeapEntry* _entries
    cdef Py_ssize_t _n
    cdef Py_ssize_t _cap
    # Membership set (the stock ``_data``): an entry is live iff its element is in it.
    cdef set _members
    cdef object _keyfunc
    # True when the key is operator.attrgetter("priority"): read ``.priority`` directly.
    cdef bint _priority_key
    cdef long long _counter
    cdef bint _is_sorted
    # Non-zero while the entries array must not be resized or reordered (a comparison
    # or membership test may run arbitrary Python code).
    cdef int _busy
    # Compaction: run once there are at least ``_compact_at`` entries and more than
    # twice as many entries as members. ``_compact_min`` < 0 disables compaction.
    cdef Py_ssize_t _compact_at
    cdef Py_ssize_t _compact_min

    # C API for compiled callers. Same semantics as add / pop / peek / ``in`` /
    # len / discard / clear.
    cdef int push(self, object ts) except -1
    cdef object pop_c(self)
    cdef object peek_c(self)
    cdef bint contains_c(self, object ts) except -1
    cdef Py_ssize_t size(self) noexcept
    cdef int discard_c(self, object ts) except -1
    cdef int clear_c(self) except -1
    # Back to the state of a new PriorityHeapSet() if empty and idle (reuse).
    cdef bint reset_fresh(self) except -1

    # Internals.
    cdef int _set_key(self, object key) except -1
    cdef int _check_idle(self) except -1
    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef int _append_entry(self, object key, object elem, long long inc) except -1
    cdef int _heappop_entry(self, HeapEntry* out) except -1
    cdef int _reorder(self, bint full_sort) except -1
    cdef int _sort(self) except -1
    cdef int _heapify(self) except -1
    cdef int _maybe_compact(self) except -1
    cdef int _compact(self) except -1
    cdef bint _take(self, object value) except -1
    cdef void _release_all(self) noexcept

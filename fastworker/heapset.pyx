# cython: language_level=3, boundscheck=False, wraparound=False
# cython: embedsignature=True, binding=True
"""Compiled drop-in for :class:`distributed.collections.HeapSet`.

A set whose ``pop`` returns the element with the smallest key; ties go first in,
first out. The worker state machine keeps its ``ready`` and ``constrained`` queues
and each peer's ``data_needed`` queue in one, keyed by task priority.

Behaves as stock's HeapSet, quirks included, because the order in which tasks run
and are fetched depends on them:

- the key is read when an element is added; re-adding a present element is a no-op;
- ``discard`` is lazy: the heap entry stays until it surfaces, so an element that
  is discarded and added again has two entries and surfaces at the better one;
- the heap is emptied when the last element goes.

The heap is a C array of (key, insertion number, element) entries with heapq's
exact sift algorithms, so elements surface in stock's order. Entries hold strong
references (stock holds weakrefs); stale entries are dropped when they surface,
when the set empties, or, when they outnumber live ones, by a compaction that keeps
every entry of a present element, so the order of ``pop`` is unchanged.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject, PyObject_RichCompareBool, Py_EQ, Py_LT
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

import itertools
import operator
from collections.abc import MutableSet, Set

from fastworker.taskstate cimport TaskState

__all__ = ["HeapSet", "PRIORITY"]

#: ``operator.attrgetter("priority")``: pass this very object as ``key`` for the
#: fast path (any equal attrgetter works too, found by its repr).
PRIORITY = operator.attrgetter("priority")
cdef object _PRIORITY_GETTER_REPR = repr(PRIORITY)


cdef extern from "Python.h":
    bint PyTuple_CheckExact(object)
    bint PyLong_CheckExact(object)
    bint PyFloat_CheckExact(object)


cdef int _item_lt(object a, object b, bint* equal) except -1:
    """Compare two tuple items as tuple comparison does: equal? else a < b."""
    cdef double x, y
    if a is b:
        equal[0] = True
        return 0
    if PyFloat_CheckExact(a) and PyFloat_CheckExact(b):
        x = <double>a
        y = <double>b
        if x == y:
            equal[0] = True
            return 0
        if x == x and y == y:  # no NaN: plain C comparison is exact
            equal[0] = False
            return x < y
    elif PyLong_CheckExact(a) and PyLong_CheckExact(b):
        # Python ints compare exactly; let CPython do it (handles big ints)
        pass
    if PyObject_RichCompareBool(a, b, Py_EQ):
        equal[0] = True
        return 0
    equal[0] = False
    return PyObject_RichCompareBool(a, b, Py_LT)


cdef int _key_lt(object a, object b, bint* equal) except -1:
    """a < b for two keys, and whether they are equal, as tuple comparison decides."""
    cdef Py_ssize_t i, n, na, nb
    cdef int lt
    if a is b:
        equal[0] = True
        return 0
    if PyTuple_CheckExact(a) and PyTuple_CheckExact(b):
        na = PyTuple_GET_SIZE(a)
        nb = PyTuple_GET_SIZE(b)
        n = na if na < nb else nb
        for i in range(n):
            lt = _item_lt(<object>PyTuple_GET_ITEM(a, i), <object>PyTuple_GET_ITEM(b, i), equal)
            if not equal[0]:
                return lt
        equal[0] = na == nb
        return na < nb
    if PyObject_RichCompareBool(a, b, Py_EQ):
        equal[0] = True
        return 0
    equal[0] = False
    return PyObject_RichCompareBool(a, b, Py_LT)


cdef inline int _entry_lt(HeapEntry* a, HeapEntry* b) except -1:
    """(key, inc) < (key, inc): as stock's heap compares its (key, inc, ref) tuples."""
    cdef bint equal = False
    cdef int lt = _key_lt(<object>a.key, <object>b.key, &equal)
    if equal:
        return a.inc < b.inc
    return lt


def _unpickle(key, inc, heap):
    cdef HeapSet self = HeapSet(key=key)
    self._inc = inc
    for k, i, v in heap:
        self._append(k, i, v)
        self._data.add(v)
    self._heapify()
    self._sorted = not heap
    return self


@cython.final
cdef class HeapSet:
    """A set whose ``pop`` returns the smallest element by ``key``; ties FIFO.

    Same interface and behaviour as :class:`distributed.collections.HeapSet`.
    """

    def __cinit__(self):
        self._data = set()
        self._heap = NULL
        self._size = 0
        self._capacity = 0
        self._inc = 0
        self._sorted = True

    def __init__(self, *, key):
        self.key = key
        # The state machine's queues are keyed by attrgetter("priority"): read the
        # field directly from a compiled task instead of calling the getter.
        self._by_priority = key is PRIORITY or (
            type(key) is operator.attrgetter and repr(key) == _PRIORITY_GETTER_REPR
        )

    def __dealloc__(self):
        self._truncate(0)
        PyMem_Free(self._heap)

    # --- the C array of entries ------------------------------------------------------

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t capacity
        cdef HeapEntry* grown
        if n <= self._capacity:
            return 0
        capacity = max(n, 2 * self._capacity, 16)
        grown = <HeapEntry*>PyMem_Realloc(self._heap, capacity * sizeof(HeapEntry))
        if grown is NULL:
            raise MemoryError()
        self._heap = grown
        self._capacity = capacity
        return 0

    cdef int _append(self, object key, Py_ssize_t inc, object value) except -1:
        self._reserve(self._size + 1)
        Py_INCREF(key)
        Py_INCREF(value)
        self._heap[self._size].key = <PyObject*>key
        self._heap[self._size].inc = inc
        self._heap[self._size].value = <PyObject*>value
        self._size += 1
        return 0

    cdef void _truncate(self, Py_ssize_t n) noexcept:
        cdef HeapEntry e
        while self._size > n:
            self._size -= 1
            e = self._heap[self._size]
            Py_XDECREF(e.key)
            Py_XDECREF(e.value)

    # heapq's algorithms, step for step, so that equal inputs give equal layouts.

    cdef int _siftdown(self, Py_ssize_t startpos, Py_ssize_t pos) except -1:
        cdef HeapEntry newitem = self._heap[pos]
        cdef Py_ssize_t parentpos
        while pos > startpos:
            parentpos = (pos - 1) >> 1
            if _entry_lt(&newitem, &self._heap[parentpos]):
                self._heap[pos] = self._heap[parentpos]
                pos = parentpos
                continue
            break
        self._heap[pos] = newitem
        return 0

    cdef int _siftup(self, Py_ssize_t pos) except -1:
        cdef Py_ssize_t endpos = self._size
        cdef Py_ssize_t startpos = pos
        cdef HeapEntry newitem = self._heap[pos]
        cdef Py_ssize_t childpos = 2 * pos + 1
        cdef Py_ssize_t rightpos
        while childpos < endpos:
            rightpos = childpos + 1
            if rightpos < endpos and not _entry_lt(&self._heap[childpos], &self._heap[rightpos]):
                childpos = rightpos
            self._heap[pos] = self._heap[childpos]
            pos = childpos
            childpos = 2 * pos + 1
        self._heap[pos] = newitem
        return self._siftdown(startpos, pos)

    cdef int _heapify(self) except -1:
        cdef Py_ssize_t i
        for i in reversed(range(self._size // 2)):
            self._siftup(i)
        return 0

    cdef HeapEntry _heappop(self) except *:
        """Remove the smallest entry; the caller owns its references."""
        cdef HeapEntry last, top
        self._size -= 1
        last = self._heap[self._size]
        if self._size:
            top = self._heap[0]
            self._heap[0] = last
            self._siftup(0)
            return top
        return last

    cdef int _compact(self) except -1:
        """Drop entries of elements no longer present (see the module docstring)."""
        cdef Py_ssize_t i, kept = 0
        cdef HeapEntry e
        for i in range(self._size):
            e = self._heap[i]
            if <object>e.value in self._data:
                self._heap[kept] = e
                kept += 1
            else:
                Py_DECREF(<object>e.key)
                Py_DECREF(<object>e.value)
        self._size = kept
        self._heapify()
        self._sorted = False
        return 0

    # --- C-level interface for the compiled WorkerState -----------------------------

    cdef int push(self, object value) except -1:
        if value in self._data:
            return 0
        if self._by_priority and type(value) is TaskState:
            k = (<TaskState>value).priority
        else:
            k = self.key(value)
        self._append(k, self._inc, value)
        self._siftdown(0, self._size - 1)
        self._sorted = False
        self._data.add(value)
        self._inc += 1
        return 0

    cdef int discard_c(self, object value) except -1:
        cdef Py_ssize_t live
        self._data.discard(value)
        live = len(self._data)
        if not live:
            self._truncate(0)
            self._sorted = True
        elif self._size > 1024 and self._size > 2 * live:
            self._compact()
        return 0

    cdef object peek_c(self):
        cdef HeapEntry e
        if not self._data:
            raise KeyError("peek into empty set")
        while True:
            value = <object>self._heap[0].value
            if value in self._data:
                return value
            e = self._heappop()
            self._sorted = False
            Py_DECREF(<object>e.key)
            Py_DECREF(<object>e.value)

    cdef object pop_c(self):
        cdef HeapEntry e
        if not self._data:
            raise KeyError("pop from an empty set")
        while True:
            e = self._heappop()
            self._sorted = False
            value = <object>e.value
            Py_DECREF(<object>e.key)
            Py_DECREF(value)  # `value` holds its own reference now
            if value in self._data:
                self._data.discard(value)
                if not self._data:
                    self._truncate(0)
                    self._sorted = True
                return value

    # --- Python interface (stock HeapSet's) ------------------------------------------

    def __repr__(self):
        return f"<{type(self).__name__}: {len(self._data)} items>"

    def __reduce__(self):
        cdef Py_ssize_t i
        heap = [
            (<object>self._heap[i].key, self._heap[i].inc, <object>self._heap[i].value)
            for i in range(self._size)
            if <object>self._heap[i].value in self._data
        ]
        return _unpickle, (self.key, self._inc, heap)

    def __contains__(self, value):
        return value in self._data

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        """All elements, in no particular order."""
        return iter(self._data)

    def __eq__(self, other):
        if isinstance(other, (HeapSet, Set)):
            return len(self._data) == len(other) and all(v in other for v in self._data)
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    def add(self, value):
        """Add an element (no-op if present: its key is not read again)."""
        self.push(value)

    def discard(self, value):
        """Remove an element if present (its heap entry goes lazily)."""
        self.discard_c(value)

    def remove(self, value):
        """Remove an element; KeyError if absent."""
        if value not in self._data:
            raise KeyError(value)
        self.discard_c(value)

    def pop(self):
        """Remove and return the smallest element; KeyError if empty."""
        return self.pop_c()

    def peek(self):
        """The smallest element, not removed; KeyError if empty."""
        return self.peek_c()

    def peekn(self, n):
        """Iterate over the n smallest elements without removing them."""
        if n <= 0 or not self._data:
            return iter(())
        if n == 1:
            return iter((self.peek_c(),))
        return itertools.islice(self.sorted(), n)

    def peekright(self):
        """One of the largest elements (not necessarily the largest), not removed."""
        cdef HeapEntry e
        if not self._data:
            raise KeyError("peek into empty set")
        while True:
            value = <object>self._heap[self._size - 1].value
            if value in self._data:
                return value
            self._size -= 1
            e = self._heap[self._size]
            Py_DECREF(<object>e.key)
            Py_DECREF(<object>e.value)

    def popright(self):
        """Remove and return one of the largest elements (not necessarily the largest)."""
        cdef HeapEntry e
        if not self._data:
            raise KeyError("pop from an empty set")
        while True:
            self._size -= 1
            e = self._heap[self._size]
            value = <object>e.value
            Py_DECREF(<object>e.key)
            Py_DECREF(value)
            if value in self._data:
                self._data.discard(value)
                if not self._data:
                    self._truncate(0)
                    self._sorted = True
                return value

    def sorted(self):
        """All elements from smallest to largest (by key, then insertion order)."""
        cdef Py_ssize_t i
        if not self._sorted:
            # A sorted array is a valid heap: sort in place, as stock does.
            entries = [
                (<object>self._heap[i].key, self._heap[i].inc, <object>self._heap[i].value)
                for i in range(self._size)
            ]
            entries.sort(key=_entry_sort_key)
            self._truncate(0)
            for k, inc, v in entries:
                self._append(k, inc, v)
            self._sorted = True
        seen = set()
        out = []
        for i in range(self._size):
            value = <object>self._heap[i].value
            if value in self._data and value not in seen:
                out.append(value)
                seen.add(value)
        return iter(out)

    def clear(self):
        """Remove every element."""
        self._data.clear()
        self._truncate(0)
        self._sorted = True

    def isdisjoint(self, other):
        return self._data.isdisjoint(other)


def _entry_sort_key(entry):
    return entry[0], entry[1]


MutableSet.register(HeapSet)

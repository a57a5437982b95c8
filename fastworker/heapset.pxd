# cython: language_level=3
"""C-level declarations of the compiled HeapSet (ready/constrained/data_needed queues)."""
from cpython.object cimport PyObject


cdef struct HeapEntry:
    PyObject* key       # the element's sort key (its priority), owned reference
    Py_ssize_t inc      # insertion counter: ties go first-in-first-out
    PyObject* value     # the element, owned reference


cdef class HeapSet:
    cdef readonly object key
    cdef set _data
    cdef HeapEntry* _heap
    cdef Py_ssize_t _size
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _inc
    cdef bint _sorted
    cdef bint _by_priority

    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef int _append(self, object key, Py_ssize_t inc, object value) except -1
    cdef void _truncate(self, Py_ssize_t n) noexcept
    cdef int _siftdown(self, Py_ssize_t startpos, Py_ssize_t pos) except -1
    cdef int _siftup(self, Py_ssize_t pos) except -1
    cdef int _heapify(self) except -1
    cdef HeapEntry _heappop(self) except *
    cdef int _compact(self) except -1

    cdef int push(self, object value) except -1
    cdef object peek_c(self)
    cdef object pop_c(self)
    cdef int discard_c(self, object value) except -1
    cdef inline Py_ssize_t size(self):
        return len(self._data)

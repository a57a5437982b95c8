# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, binding=True
"""Compiled drop-in for ``distributed.collections.HeapSet(key=attrgetter("priority"))``.

:class:`PriorityHeapSet` is the priority queue of the worker state machine (``ready``,
``constrained`` and the per-peer ``data_needed`` queues). It behaves like the stock
``HeapSet`` of distributed 2026.8.0, quirks included:

* ``add`` of a member is a no-op; the key is not read again.
* ``discard`` / ``remove`` are lazy: the element leaves the membership set only, and
  its heap entry goes stale. When the set becomes empty the heap is emptied.
* ``peek`` / ``pop`` skip (and drop) stale entries at the top of the heap.
* An entry is *live* iff its element is a member, so an element that is discarded
  and added again has two entries and surfaces at the better of its old and new key.
* Ties are broken by insertion order: each entry carries the value of a counter that
  only ever grows (``clear`` does not reset it).

How it differs inside:

* The heap is a C array of :c:type:`HeapEntry` structs, sifted by a C transcription
  of :mod:`heapq` (same algorithm, hence the same layout as the stock heap list).
* Keys that are tuples of up to ``FAST_ITEMS`` exact ints (fitting a C ``long long``)
  and/or exact non-NaN floats -- or a single such number -- are copied into the
  entry and compared in C, exactly as Python compares them (lexicographic, shorter
  prefix first, exact int/float comparison). Any other key (big ints, NaN, strings,
  nested tuples, ...) is compared with ``PyObject_RichCompareBool`` the way
  ``heapq`` compares the stock ``(key, counter, weakref)`` tuples.
* Entries hold strong references (no weakref is created per entry). To never keep a
  discarded element alive for good, the heap is *compacted* once it holds more than
  twice as many entries as members: entries whose element is not a member switch to
  a weak reference to it, and entries whose element has then died are dropped.
  See :meth:`PriorityHeapSet._compact` for why this cannot change any result.

Assumptions: the key is ``operator.attrgetter("priority")`` (the default); it is
then read as ``element.priority`` directly. Any other key callable is called as the
stock HeapSet does, and still gets the C comparison when its keys qualify. Keys must
be totally ordered (as tuples of non-NaN numbers are), elements hashable and
weakref-able (as the stock HeapSet requires).
"""
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport Py_EQ, Py_LT, PyObject
from cpython.set cimport PySet_Add, PySet_Clear, PySet_Contains, PySet_Discard, PySet_GET_SIZE
from cpython.weakref cimport PyWeakref_NewRef
from libc.string cimport memcpy

from fastworker.typeslots cimport (
    SlotsTypeObject as fw_PyTypeObject,
    traverseproc as fw_traverseproc,
    visitproc as fw_visitproc,
)

import weakref
from collections.abc import MutableSet, Set
from itertools import islice
from operator import attrgetter
from types import GenericAlias

__all__ = ["PriorityHeapSet"]


cdef extern from "Python.h":
    # Raw-pointer variants of a few C-API calls: no reference counting or error
    # checking is added by Cython around them.
    void fw_incref "Py_INCREF"(PyObject*)
    void fw_decref "Py_DECREF"(PyObject*)
    bint fw_tuple_exact "PyTuple_CheckExact"(PyObject*)
    Py_ssize_t fw_tuple_size "PyTuple_GET_SIZE"(PyObject*)
    PyObject* fw_tuple_item "PyTuple_GET_ITEM"(PyObject*, Py_ssize_t)
    bint fw_long_exact "PyLong_CheckExact"(PyObject*)
    bint fw_float_exact "PyFloat_CheckExact"(PyObject*)
    double fw_float_value "PyFloat_AS_DOUBLE"(PyObject*)
    long long fw_as_longlong "PyLong_AsLongLongAndOverflow"(PyObject*, int*)
    int fw_richcompare_bool "PyObject_RichCompareBool"(PyObject*, PyObject*, int)
    bint fw_exception_matches "PyErr_ExceptionMatches"(PyObject*)
    void fw_clear_error "PyErr_Clear"()
    PyObject* fw_no_memory "PyErr_NoMemory"()
    PyObject* fw_PyExc_Exception "PyExc_Exception"


cdef extern from *:
    """
    /* Does the element's type support weak references? (what weakref.ref checks) */
    static int fw_supports_weakrefs(PyObject *o) {
        return Py_TYPE(o)->tp_weaklistoffset != 0;
    }

    /* Borrowed referent of a weakref, Py_None once it is dead. */
    static PyObject *fw_weakref_peek(PyObject *ref) {
    #if PY_VERSION_HEX >= 0x030D0000
        PyObject *obj = NULL;
        if (PyWeakref_GetRef(ref, &obj) == 1) {
            /* alive: its referent holds other strong references */
            Py_DECREF(obj);
            return obj;
        }
        PyErr_Clear();
        return Py_None;
    #else
        return PyWeakref_GET_OBJECT(ref);
    #endif
    }
    """
    bint fw_supports_weakrefs(PyObject*)
    PyObject* fw_weakref_peek(PyObject*)


# Default minimum number of entries before a compaction (amortises its O(n) cost).
cdef Py_ssize_t _DEFAULT_COMPACT_MIN = 64
# An emptied heap keeps an entries buffer of up to this many slots for reuse.
cdef Py_ssize_t _KEEP_CAPACITY = 32
cdef Py_ssize_t _MIN_CAPACITY = 8

cdef object _PRIORITY_GETTER = attrgetter("priority")


cdef bint _is_priority_getter(object key):
    """Whether ``key`` is (equivalent to) ``operator.attrgetter("priority")``."""
    if type(key) is not attrgetter:
        return False
    try:
        return key.__reduce__() == (attrgetter, ("priority",))
    except Exception:
        return False


# --------------------------------------------------------------------------------
# Keys: C encoding and comparison
# --------------------------------------------------------------------------------

cdef inline bint _encode_number(PyObject* item, HeapEntry* e, int j) noexcept:
    """Store ``item`` in ``e.vals[j]`` if it is an exact int fitting a long long or an
    exact non-NaN float. Never raises."""
    cdef int overflow = 0
    cdef long long v
    cdef double d
    if fw_long_exact(item):
        v = fw_as_longlong(item, &overflow)
        if overflow:
            return False
        e.vals[j].i = v
        return True
    if fw_float_exact(item):
        d = fw_float_value(item)
        if d != d:  # NaN: Python's == / < on it are not a total order
            return False
        e.vals[j].d = d
        e.fmask |= <unsigned char>(1 << j)
        return True
    return False


cdef inline void _encode_key(HeapEntry* e, PyObject* key) noexcept:
    """Set e.kind / nfast / fmask / vals from ``key``."""
    cdef Py_ssize_t n, j
    e.kind = KIND_SLOW
    e.nfast = 0
    e.fmask = 0
    if fw_tuple_exact(key):
        n = fw_tuple_size(key)
        if n > FAST_ITEMS:
            return
        for j in range(n):
            if not _encode_number(fw_tuple_item(key, j), e, <int>j):
                e.fmask = 0
                return
        e.nfast = <unsigned char>n
        e.kind = KIND_TUPLE
    elif _encode_number(key, e, 0):
        e.nfast = 1
        e.kind = KIND_SCALAR
    else:
        e.fmask = 0


cdef inline int _cmp_longlong_double(long long i, double d) noexcept nogil:
    """Exact three-way comparison of a C long long with a non-NaN double, as Python
    compares an int with a float."""
    cdef long long t
    cdef double frac
    if d >= 9223372036854775808.0:  # 2**63 and above, +inf
        return -1
    if d < -9223372036854775808.0:  # below -2**63, -inf
        return 1
    t = <long long>d  # truncates toward zero, exact in this range
    if i < t:
        return -1
    if i > t:
        return 1
    frac = d - <double>t  # exact: t is d without its fractional part
    if frac > 0.0:
        return -1
    if frac < 0.0:
        return 1
    return 0


cdef inline int _cmp_fast(const HeapEntry* a, const HeapEntry* b) noexcept nogil:
    """Three-way comparison of two C-encoded keys of the same kind."""
    cdef int j, m, c
    cdef long long x, y
    cdef double p, q
    cdef unsigned int fa, fb
    m = a.nfast if a.nfast < b.nfast else b.nfast
    if (a.fmask | b.fmask) == 0:
        # all ints: the common case for worker priorities
        for j in range(m):
            x = a.vals[j].i
            y = b.vals[j].i
            if x != y:
                return -1 if x < y else 1
    else:
        for j in range(m):
            fa = (a.fmask >> j) & 1
            fb = (b.fmask >> j) & 1
            if fa == 0 and fb == 0:
                x = a.vals[j].i
                y = b.vals[j].i
                if x != y:
                    return -1 if x < y else 1
            elif fa and fb:
                p = a.vals[j].d
                q = b.vals[j].d
                if p != q:
                    return -1 if p < q else 1
            elif fb:
                c = _cmp_longlong_double(a.vals[j].i, b.vals[j].d)
                if c:
                    return c
            else:
                c = _cmp_longlong_double(b.vals[j].i, a.vals[j].d)
                if c:
                    return -c
    # equal prefix: the shorter tuple sorts first
    return (a.nfast > b.nfast) - (a.nfast < b.nfast)


cdef inline int _slow_lt(const HeapEntry* a, const HeapEntry* b) noexcept:
    """``(a.key, a.inc) < (b.key, b.inc)`` evaluated as tuple comparison does it.

    Returns -1 with a Python exception set on error.
    """
    cdef int r = fw_richcompare_bool(a.key, b.key, Py_EQ)
    if r < 0:
        return -1
    if r:
        return a.inc < b.inc
    return fw_richcompare_bool(a.key, b.key, Py_LT)


cdef inline int _lt(const HeapEntry* a, const HeapEntry* b) noexcept:
    """Strict heap order of two entries: by key, then by insertion counter.

    Returns 1, 0, or -1 with a Python exception set.
    """
    cdef int c
    if a.kind & b.kind:  # both C-encoded, and of the same kind (tuple / scalar)
        c = _cmp_fast(a, b)
        if c != 0:
            return c < 0
        return a.inc < b.inc
    return _slow_lt(a, b)


# --------------------------------------------------------------------------------
# heapq in C. Same algorithms as CPython's _heapq (hence the same layout). They run
# with the owner's ``_busy`` flag raised. On error (-1, Python exception set) the
# array still holds each entry exactly once.
# --------------------------------------------------------------------------------

cdef int _siftdown(HeapEntry* arr, Py_ssize_t startpos, Py_ssize_t pos) noexcept:
    """Move arr[pos] up toward startpos until its parent is not greater."""
    cdef HeapEntry newitem = arr[pos]
    cdef Py_ssize_t parentpos
    cdef int lt
    while pos > startpos:
        parentpos = (pos - 1) >> 1
        lt = _lt(&newitem, &arr[parentpos])
        if lt <= 0:
            if lt < 0:
                arr[pos] = newitem
                return -1
            break
        arr[pos] = arr[parentpos]
        pos = parentpos
    arr[pos] = newitem
    return 0


cdef int _siftup(HeapEntry* arr, Py_ssize_t endpos, Py_ssize_t pos) noexcept:
    """Bubble the smaller child up to a leaf from pos, then sift arr[pos]'s old entry
    back down into place (heapq's bottom-up variant)."""
    cdef Py_ssize_t startpos = pos
    cdef Py_ssize_t limit = endpos >> 1
    cdef Py_ssize_t childpos
    cdef HeapEntry newitem = arr[pos]
    cdef int lt
    while pos < limit:
        childpos = 2 * pos + 1
        if childpos + 1 < endpos:
            lt = _lt(&arr[childpos], &arr[childpos + 1])
            if lt < 0:
                arr[pos] = newitem
                return -1
            if not lt:
                childpos += 1
        arr[pos] = arr[childpos]
        pos = childpos
    arr[pos] = newitem
    return _siftdown(arr, startpos, pos)


cdef int _heapify_array(HeapEntry* arr, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i = (n >> 1) - 1
    while i >= 0:
        if _siftup(arr, n, i) < 0:
            return -1
        i -= 1
    return 0


cdef int _merge_pass(HeapEntry* src, HeapEntry* dst, Py_ssize_t n,
                     Py_ssize_t width) noexcept:
    """Merge the sorted runs of length ``width`` of src into dst."""
    cdef Py_ssize_t lo = 0, mid, hi, i, j, k
    cdef int lt
    while lo < n:
        mid = lo + width if lo + width < n else n
        hi = lo + 2 * width if lo + 2 * width < n else n
        i = lo
        j = mid
        k = lo
        while i < mid and j < hi:
            lt = _lt(&src[j], &src[i])
            if lt < 0:
                return -1
            if lt:
                dst[k] = src[j]
                j += 1
            else:
                dst[k] = src[i]
                i += 1
            k += 1
        if i < mid:
            memcpy(&dst[k], &src[i], (mid - i) * sizeof(HeapEntry))
        elif j < hi:
            memcpy(&dst[k], &src[j], (hi - j) * sizeof(HeapEntry))
        lo = hi
    return 0


cdef int _sort_array(HeapEntry* arr, Py_ssize_t n) noexcept:
    """Sort ascending (bottom-up merge sort). Keys are unique (key, counter) pairs,
    so the result is the same permutation as ``list.sort`` gives the stock heap."""
    cdef HeapEntry* tmp
    cdef HeapEntry* src
    cdef HeapEntry* dst
    cdef HeapEntry* swap
    cdef Py_ssize_t width = 1
    cdef int r = 0
    if n < 2:
        return 0
    tmp = <HeapEntry*>PyMem_Malloc(n * sizeof(HeapEntry))
    if tmp is NULL:
        fw_no_memory()
        return -1
    src = arr
    dst = tmp
    while width < n:
        if _merge_pass(src, dst, n, width) < 0:
            r = -1  # src is still a complete permutation: keep it
            break
        swap = src
        src = dst
        dst = swap
        width *= 2
    if src != arr:
        memcpy(arr, src, n * sizeof(HeapEntry))
    PyMem_Free(tmp)
    return r


cdef inline object _entry_value(const HeapEntry* e):
    """New reference to the element of an entry, None if its weakref is dead."""
    if e.weak:
        return <object>fw_weakref_peek(e.ref)
    return <object>e.ref


cdef inline void _release_entry(HeapEntry* e) noexcept:
    fw_decref(e.key)
    fw_decref(e.ref)


cdef inline bint _entry_dead(const HeapEntry* e) noexcept:
    return e.weak != 0 and fw_weakref_peek(e.ref) == <PyObject*>None


# --------------------------------------------------------------------------------
# The class
# --------------------------------------------------------------------------------

cdef class PriorityHeapSet:
    """A set-like whose ``pop`` returns the element with the smallest key, ties broken
    by oldest first: a compiled ``distributed.collections.HeapSet``.

    Parameters
    ----------
    key: Callable, optional
        Sorting key of an element. Defaults to ``operator.attrgetter("priority")``,
        the only key the worker uses and the one with a dedicated fast path (the
        attribute is read directly). Any other callable is called like the stock
        HeapSet calls it.

    Elements must be hashable and weak-referenceable; keys must not change while an
    element is in the set (see the stock HeapSet for what happens if they do).
    """

    def __cinit__(self, *args, **kwargs):
        self._entries = NULL
        self._n = 0
        self._cap = 0
        self._members = set()
        self._keyfunc = _PRIORITY_GETTER
        self._priority_key = True
        self._counter = 0
        self._is_sorted = True
        self._busy = 0
        self._compact_min = _DEFAULT_COMPACT_MIN
        self._compact_at = _DEFAULT_COMPACT_MIN

    def __init__(self, *, key=None):
        self._check_idle()
        self._set_key(key)
        self._members = set()
        self._counter = 0
        self._is_sorted = True
        self._compact_at = self._compact_min
        self._release_all()

    def __dealloc__(self):
        self._release_all()
        PyMem_Free(self._entries)
        self._entries = NULL

    # ---- C API ------------------------------------------------------------------

    cdef int push(self, object ts) except -1:
        """``add``: push ``ts`` unless it is a member (its key is then not read)."""
        cdef object key
        if PySet_Contains(self._members, ts):
            return 0
        self._check_idle()
        if self._priority_key:
            key = ts.priority
        else:
            key = self._keyfunc(ts)
        if not fw_supports_weakrefs(<PyObject*>ts):
            weakref.ref(ts)  # raises the stock HeapSet's TypeError
        self._append_entry(key, ts, self._counter)
        self._busy += 1
        # As heapq.heappush: if a comparison raises, the entry stays in the heap but
        # the element does not become a member and the counter does not advance.
        if _siftdown(self._entries, 0, self._n - 1) < 0:
            self._busy -= 1
            return -1
        self._busy -= 1
        self._is_sorted = False
        PySet_Add(self._members, ts)
        self._counter += 1
        if self._n >= self._compact_at:
            self._maybe_compact()
        return 0

    cdef bint _take(self, object value) except -1:
        """If ``value`` (just removed from the entries) is a member, remove it from
        the members too, as pop does; then clear or compact as needed."""
        if not PySet_Contains(self._members, value):
            return False
        PySet_Discard(self._members, value)
        if PySet_GET_SIZE(self._members) == 0:
            self.clear_c()
        elif self._n >= self._compact_at:
            self._maybe_compact()
        return True

    cdef object pop_c(self):
        """``pop``: remove and return the smallest member. KeyError if empty."""
        cdef HeapEntry e
        cdef object value
        if PySet_GET_SIZE(self._members) == 0:
            raise KeyError("pop from an empty set")
        self._check_idle()
        while True:
            self._heappop_entry(&e)
            self._is_sorted = False
            value = _entry_value(&e)
            _release_entry(&e)
            if self._take(value):
                return value

    cdef object peek_c(self):
        """``peek``: the smallest member, dropping stale entries on top of the heap."""
        cdef HeapEntry e
        cdef object value
        if PySet_GET_SIZE(self._members) == 0:
            raise KeyError("peek into empty set")
        while True:
            if self._n == 0:
                raise IndexError("list index out of range")
            value = _entry_value(&self._entries[0])
            if PySet_Contains(self._members, value):
                return value
            self._check_idle()
            self._heappop_entry(&e)
            _release_entry(&e)
            self._is_sorted = False

    cdef bint contains_c(self, object ts) except -1:
        """``ts in self``."""
        return PySet_Contains(self._members, ts)

    cdef Py_ssize_t size(self) noexcept:
        """``len(self)``."""
        return PySet_GET_SIZE(self._members)

    cdef int discard_c(self, object ts) except -1:
        """``discard``: lazy; the heap is emptied when the set becomes empty."""
        self._check_idle()
        PySet_Discard(self._members, ts)
        if PySet_GET_SIZE(self._members) == 0:
            self.clear_c()
        elif self._n >= self._compact_at:
            self._maybe_compact()
        return 0

    cdef bint reset_fresh(self) except -1:
        """Make an empty heap (no member) exactly what ``PriorityHeapSet()`` makes,
        counter and key included, keeping its entries buffer; False (nothing done)
        if it is not empty or is in use. For compiled callers that reuse queues."""
        if self._busy or PySet_GET_SIZE(self._members):
            return False
        self._release_all()
        if self._n or PySet_GET_SIZE(self._members):
            return False  # a finalizer run by the releases used the heap again
        self._keyfunc = _PRIORITY_GETTER
        self._priority_key = True
        self._counter = 0
        self._is_sorted = True
        self._compact_min = _DEFAULT_COMPACT_MIN
        self._compact_at = _DEFAULT_COMPACT_MIN
        return True

    cdef int clear_c(self) except -1:
        """``clear``: empty the set and the heap. The counter is not reset."""
        self._check_idle()
        PySet_Clear(self._members)
        self._is_sorted = True
        self._compact_at = self._compact_min
        self._release_all()
        return 0

    # ---- internals --------------------------------------------------------------

    cdef int _set_key(self, object key) except -1:
        if key is None or key is _PRIORITY_GETTER:
            # the default: no need to ask the getter what it gets
            self._keyfunc = _PRIORITY_GETTER
            self._priority_key = True
            return 0
        self._keyfunc = key
        self._priority_key = _is_priority_getter(key)
        return 0

    cdef int _check_idle(self) except -1:
        if self._busy:
            raise RuntimeError(
                "PriorityHeapSet modified while comparing keys or testing membership"
            )
        return 0

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef HeapEntry* arr
        if n <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap else _MIN_CAPACITY
        if cap < n:
            cap = n
        arr = <HeapEntry*>PyMem_Realloc(self._entries, cap * sizeof(HeapEntry))
        if arr is NULL:
            raise MemoryError()
        self._entries = arr
        self._cap = cap
        return 0

    cdef int _append_entry(self, object key, object elem, long long inc) except -1:
        cdef HeapEntry* e
        self._reserve(self._n + 1)
        e = &self._entries[self._n]
        _encode_key(e, <PyObject*>key)
        fw_incref(<PyObject*>key)
        fw_incref(<PyObject*>elem)
        e.key = <PyObject*>key
        e.ref = <PyObject*>elem
        e.inc = inc
        e.weak = 0
        self._n += 1
        return 0

    cdef int _heappop_entry(self, HeapEntry* out) except -1:
        """heapq.heappop into ``out`` (whose references the caller then owns)."""
        cdef Py_ssize_t n = self._n
        cdef HeapEntry* arr = self._entries
        if n == 0:
            raise IndexError("index out of range")
        n -= 1
        self._n = n
        out[0] = arr[0]
        if n == 0:
            return 0
        arr[0] = arr[n]
        self._busy += 1
        if _siftup(arr, n, 0) < 0:
            self._busy -= 1
            _release_entry(out)  # as heapq.heappop, the popped item is lost
            return -1
        self._busy -= 1
        return 0

    cdef int _reorder(self, bint full_sort) except -1:
        """Sort the entries (a sorted array is a valid heap) or just heapify them,
        with the array marked busy while comparisons may run Python code."""
        cdef int rc
        self._check_idle()
        self._busy += 1
        rc = (_sort_array if full_sort else _heapify_array)(self._entries, self._n)
        self._busy -= 1
        if rc < 0:
            return -1
        if full_sort:
            self._is_sorted = True
        return 0

    cdef int _sort(self) except -1:
        return self._reorder(True)

    cdef int _heapify(self) except -1:
        return self._reorder(False)

    cdef int _maybe_compact(self) except -1:
        if (
            self._compact_min >= 0
            and self._n >= self._compact_at
            and self._n > 2 * PySet_GET_SIZE(self._members)
            and not self._busy
        ):
            return self._compact()
        return 0

    cdef int _compact(self) except -1:
        """Stop holding elements that are not members; drop entries of dead ones.

        Why no result can change. Compare our entries with the stock heap's
        ``(key, counter, weakref)`` entries. Before any compaction they are the same
        multiset, in the same layout. An entry matters only while its element is
        alive: the stock heap skips an entry whose weakref is dead, as it skips any
        entry whose element is not a member. ``pop``, ``peek``, ``sorted``, ``peekn``,
        ``len``, ``in`` and pickling depend only on the members and on the order of
        the (key, counter) pairs of the entries of live elements, which is a strict
        total order (counters are unique), not on where entries sit in the array.

        Pass 1 replaces the strong reference of each non-member's entry with a weak
        one: that entry is now exactly the stock one (alive while the element is,
        live again if it is re-added). Pass 2 drops entries whose element has died,
        which the stock heap would skip, and re-heapifies the rest: a valid heap of
        the same entries of alive elements, i.e. the same results. (An array that
        was sorted stays sorted after dropping entries, so is kept as it is.)

        Only ``peekright`` / ``popright``, which return "one of the largest" elements
        by array position, may pick another element than the stock heap after a
        compaction dropped entries. Until the first such compaction our layout is
        the stock one, entry for entry.

        A compaction is an optimisation: if a key comparison or membership test
        raises an Exception, it is abandoned (the heap is left valid) and the error
        is cleared, since the stock heap would not have raised there.
        """
        cdef Py_ssize_t i, j, n, ndead, cap
        cdef HeapEntry* arr
        cdef HeapEntry* fresh
        cdef object elem, ref
        cdef list released
        cdef bint failed = False
        if self._busy:
            return 0

        # Pass 1: entries of non-members hold their element weakly from now on.
        # The strong references move to ``released`` and are dropped after the loop,
        # so that finalizers never run while the array is being walked.
        released = []
        self._busy += 1
        try:
            i = 0
            while i < self._n:
                if not self._entries[i].weak:
                    elem = <object>self._entries[i].ref
                    if not PySet_Contains(self._members, elem):
                        ref = PyWeakref_NewRef(elem, None)
                        released.append(elem)
                        fw_incref(<PyObject*>ref)
                        fw_decref(self._entries[i].ref)
                        self._entries[i].ref = <PyObject*>ref
                        self._entries[i].weak = 1
                i += 1
        except Exception:
            failed = True
        finally:
            self._busy -= 1
        elem = ref = None
        released = None  # non-members nothing else references die here
        if failed or self._busy:
            self._compact_at = max(self._compact_min, 2 * self._n)
            return 0

        # Pass 2: drop the entries whose element is dead.
        n = self._n
        arr = self._entries
        ndead = 0
        for i in range(n):
            if _entry_dead(&arr[i]):
                ndead += 1
        if ndead == 0:
            self._compact_at = max(self._compact_min, 2 * n)
            return 0
        cap = n - ndead
        if cap < _MIN_CAPACITY:
            cap = _MIN_CAPACITY
        fresh = <HeapEntry*>PyMem_Malloc(cap * sizeof(HeapEntry))
        if fresh is NULL:
            raise MemoryError()
        j = 0
        for i in range(n):
            if _entry_dead(&arr[i]):
                arr[i].weak = 2  # marks the entries dropped from ``arr``
            else:
                fresh[j] = arr[i]
                j += 1
        if not self._is_sorted and j > 1:
            self._busy += 1
            if _heapify_array(fresh, j) < 0:
                self._busy -= 1
                PyMem_Free(fresh)
                for i in range(n):
                    if arr[i].weak == 2:
                        arr[i].weak = 1
                self._compact_at = max(self._compact_min, 2 * n)
                if fw_exception_matches(fw_PyExc_Exception):
                    fw_clear_error()
                    return 0
                return -1
            self._busy -= 1
        self._entries = fresh
        self._n = j
        self._cap = cap
        self._compact_at = max(self._compact_min, 2 * j)
        for i in range(n):
            if arr[i].weak == 2:
                _release_entry(&arr[i])
        PyMem_Free(arr)
        return 0

    cdef void _release_all(self) noexcept:
        """Drop all entries. The buffer is detached first: finalizers run by the
        releases may use the heap again."""
        cdef HeapEntry* arr = self._entries
        cdef Py_ssize_t n = self._n, cap = self._cap, i
        self._entries = NULL
        self._n = 0
        self._cap = 0
        for i in range(n):
            _release_entry(&arr[i])
        if self._entries is NULL and cap <= _KEEP_CAPACITY:
            self._entries = arr  # reuse a small buffer
            self._cap = cap
        else:
            PyMem_Free(arr)

    # ---- Python API (stock HeapSet) ---------------------------------------------

    def __repr__(self):
        return f"<{type(self).__name__}: {len(self)} items>"

    def __reduce__(self):
        """Pickle the live entries (key, counter, element), as the stock HeapSet."""
        cdef list heap = []
        cdef Py_ssize_t i = 0
        cdef object key, value
        cdef long long inc
        while i < self._n:
            key = <object>self._entries[i].key
            inc = self._entries[i].inc
            value = _entry_value(&self._entries[i])
            i += 1
            if PySet_Contains(self._members, value):
                heap.append((key, inc, value))
        return _unpickle, (self._keyfunc, self._counter, heap)

    @staticmethod
    def _unpickle(key, inc, heap):
        """Rebuild a PriorityHeapSet from ``__reduce__``'s arguments."""
        return _unpickle(key, inc, heap)

    def __contains__(self, value):
        return PySet_Contains(self._members, value)

    def __len__(self):
        return PySet_GET_SIZE(self._members)

    def __iter__(self):
        """Iterate over all elements. This is an O(n) operation which returns the
        elements in pseudo-random order (that of the membership set)."""
        return iter(self._members)

    def add(self, value):
        """Add an element; a no-op if it is already a member."""
        self.push(value)

    def discard(self, value):
        """Remove an element if it is a member (lazily: its heap entry goes stale)."""
        self.discard_c(value)

    def remove(self, value):
        """Remove an element; KeyError if it is not a member."""
        return MutableSet.remove(self, value)

    def peek(self):
        """Return the smallest element without removing it"""
        return self.peek_c()

    def pop(self):
        """Remove and return the smallest element. KeyError if empty."""
        return self.pop_c()

    def peekn(self, n):
        """Iterate over the n smallest elements without removing them.
        This is O(1) for n == 1; O(n*logn) otherwise.
        """
        if n <= 0 or not self:
            return
        if n == 1:
            yield self.peek()
        else:
            yield from islice(self.sorted(), n)

    def peekright(self):
        """Return one of the largest elements (not necessarily the largest!) without
        removing it. It's guaranteed that ``self.peekright() >= self.peek()``.
        """
        cdef HeapEntry e
        cdef object value
        if PySet_GET_SIZE(self._members) == 0:
            raise KeyError("peek into empty set")
        while True:
            if self._n == 0:
                raise IndexError("list index out of range")
            value = _entry_value(&self._entries[self._n - 1])
            if PySet_Contains(self._members, value):
                return value
            self._check_idle()
            if self._n == 0:
                raise IndexError("list assignment index out of range")
            self._n -= 1
            e = self._entries[self._n]
            _release_entry(&e)

    def popright(self):
        """Remove and return one of the largest elements (not necessarily the largest!)
        It's guaranteed that ``self.popright() >= self.peek()``.
        """
        cdef HeapEntry e
        cdef object value
        if PySet_GET_SIZE(self._members) == 0:
            raise KeyError("pop from an empty set")
        self._check_idle()
        while True:
            if self._n == 0:
                raise IndexError("pop from empty list")
            self._n -= 1
            e = self._entries[self._n]
            value = _entry_value(&e)
            _release_entry(&e)
            if self._take(value):
                return value

    def sorted(self):
        """Iterate over all elements. This is an O(n*logn) operation which returns the
        elements in order, from smallest to largest according to the key and insertion
        order.
        """
        cdef Py_ssize_t i = 0
        cdef object value
        cdef set seen
        if not self._is_sorted:
            self._sort()  # a sorted array is a valid heap
        seen = set()
        while i < self._n:
            value = _entry_value(&self._entries[i])
            i += 1
            if PySet_Contains(self._members, value) and not PySet_Contains(seen, value):
                yield value
                seen.add(value)

    def clear(self):
        """Remove all elements."""
        self.clear_c()

    @property
    def key(self):
        """The sorting key callable."""
        return self._keyfunc

    @key.setter
    def key(self, value):
        self._set_key(value)

    # Introspection of the stock HeapSet's private slots, for tests and debugging.

    @property
    def _data(self):
        """The membership set (the object itself, as the stock ``_data``)."""
        return self._members

    @property
    def _heap(self):
        """Snapshot of the heap as the stock ``_heap``: [(key, counter, weakref)]."""
        cdef list out = []
        cdef Py_ssize_t i = 0
        cdef object key, ref
        cdef long long inc
        while i < self._n:
            key = <object>self._entries[i].key
            inc = self._entries[i].inc
            if self._entries[i].weak:
                ref = <object>self._entries[i].ref
            else:
                ref = weakref.ref(<object>self._entries[i].ref)
            i += 1
            out.append((key, inc, ref))
        return out

    @property
    def _inc(self):
        """The insertion counter."""
        return self._counter

    @property
    def _sorted(self):
        """Whether the heap array is known to be sorted."""
        return self._is_sorted

    @property
    def _compact_threshold(self):
        """Minimum number of heap entries before a compaction; -1: never compact."""
        return self._compact_min

    @_compact_threshold.setter
    def _compact_threshold(self, Py_ssize_t value):
        self._compact_min = -1 if value < 0 else value
        self._compact_at = self._compact_min

    def _force_compact(self):
        """Compact now (normally done automatically, see ``_compact``)."""
        self._compact()

    def __sizeof__(self):
        return object.__sizeof__(self) + self._cap * sizeof(HeapEntry)

    # ---- collections.abc.MutableSet mixins (the stock HeapSet inherits them) -----

    def __class_getitem__(cls, item):
        return GenericAlias(cls, item)

    @classmethod
    def _from_iterable(cls, it):
        return cls(it)

    def _hash(self):
        return Set._hash(self)

    def isdisjoint(self, other):
        """Return True if two sets have a null intersection."""
        return Set.isdisjoint(self, other)

    def __le__(self, other):
        return Set.__le__(self, other)

    def __lt__(self, other):
        return Set.__lt__(self, other)

    def __ge__(self, other):
        return Set.__ge__(self, other)

    def __gt__(self, other):
        return Set.__gt__(self, other)

    def __eq__(self, other):
        return Set.__eq__(self, other)

    def __and__(self, other):
        return Set.__and__(self, other)

    def __rand__(self, other):
        return Set.__rand__(self, other)

    def __or__(self, other):
        return Set.__or__(self, other)

    def __ror__(self, other):
        return Set.__ror__(self, other)

    def __sub__(self, other):
        return Set.__sub__(self, other)

    def __rsub__(self, other):
        return Set.__rsub__(self, other)

    def __xor__(self, other):
        return Set.__xor__(self, other)

    def __rxor__(self, other):
        return Set.__rxor__(self, other)

    def __ior__(self, it):
        return MutableSet.__ior__(self, it)

    def __iand__(self, it):
        return MutableSet.__iand__(self, it)

    def __ixor__(self, it):
        return MutableSet.__ixor__(self, it)

    def __isub__(self, it):
        return MutableSet.__isub__(self, it)


MutableSet.register(PriorityHeapSet)


def _unpickle(key, inc, heap):
    """Rebuild a PriorityHeapSet from the arguments returned by ``__reduce__``."""
    cdef PriorityHeapSet self = PriorityHeapSet.__new__(PriorityHeapSet)
    self._set_key(key)
    self._members = {v for _, _, v in heap}
    self._counter = inc
    for k, i, v in heap:
        if not fw_supports_weakrefs(<PyObject*>v):
            weakref.ref(v)
        self._append_entry(k, v, i)
    self._heapify()
    self._is_sorted = not heap
    return self


# --------------------------------------------------------------------------------
# Garbage collection: the entries array holds references Cython does not know
# about. Report them to the collector (else a cycle through an element would never
# be freed) and drop them when the collector breaks a cycle.
# --------------------------------------------------------------------------------

cdef fw_traverseproc _cython_traverse = NULL


cdef int _traverse_entries(PriorityHeapSet self, fw_visitproc visit, void* arg) noexcept:
    cdef Py_ssize_t i
    cdef int r
    # While sifting or sorting, an entry may be out of the array or in it twice:
    # report none then (reporting fewer references is always safe).
    if self._busy:
        return 0
    for i in range(self._n):
        r = visit(self._entries[i].key, arg)
        if r:
            return r
        r = visit(self._entries[i].ref, arg)
        if r:
            return r
    return 0


cdef int _heap_traverse(PyObject* o, fw_visitproc visit, void* arg) noexcept:
    cdef int r = _traverse_entries(<PriorityHeapSet>o, visit, arg)
    if r:
        return r
    if _cython_traverse is not NULL:
        return _cython_traverse(o, visit, arg)
    return 0


cdef int _heap_clear(PyObject* o) noexcept:
    # Unlike Cython's own tp_clear this keeps the attributes usable (no None in the
    # typed ``_members`` slot): the set is just emptied.
    cdef PriorityHeapSet self = <PriorityHeapSet>o
    if not self._busy:
        PySet_Clear(self._members)
        self._is_sorted = True
        self._release_all()
    return 0


cdef fw_PyTypeObject* _heap_type = <fw_PyTypeObject*>PriorityHeapSet
_cython_traverse = _heap_type.tp_traverse
_heap_type.tp_traverse = _heap_traverse
_heap_type.tp_clear = _heap_clear

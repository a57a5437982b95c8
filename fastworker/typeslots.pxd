# cython: language_level=3
"""Type-object slots that fastworker's compiled units fill in themselves after the
class is created (the garbage collector's traversal and clear, the hash), declared
as plain C function pointers, without the exception clauses Cython would add."""
from cpython.object cimport PyObject

cdef extern from "Python.h":
    ctypedef int (*visitproc)(PyObject*, void*) noexcept
    ctypedef int (*traverseproc)(PyObject*, visitproc, void*) noexcept
    ctypedef int (*inquiry)(PyObject*) noexcept
    ctypedef Py_hash_t (*hashfunc)(PyObject*) noexcept
    ctypedef struct SlotsTypeObject "PyTypeObject":
        traverseproc tp_traverse
        inquiry tp_clear
        hashfunc tp_hash

/* fastworker: what the __weakref__ attribute of a Python class shows.
 *
 * Extension types that support weak references get no __weakref__ attribute;
 * TaskState shows one (stock's dataclass lists it as a field, which
 * dataclasses.asdict reads). Declared for Cython in fastworker/taskstate.pyx.
 */
#ifndef FASTWORKER_WEAKREFS_H
#define FASTWORKER_WEAKREFS_H

#include <Python.h>

/* The first weak reference to obj (new reference), or None: as __weakref__. */
static PyObject *fw_weakrefs(PyObject *obj) {
    Py_ssize_t offset = Py_TYPE(obj)->tp_weaklistoffset;
    PyObject *head = offset > 0 ? *(PyObject **)((char *)obj + offset) : NULL;
    if (head == NULL) head = Py_None;
    Py_INCREF(head);
    return head;
}

#endif /* FASTWORKER_WEAKREFS_H */

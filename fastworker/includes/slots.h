/* fastworker: direct access to the object slots of plain __slots__ classes.
 *
 * distributed's events and instructions are slotted dataclasses whose generated
 * __init__ only stores each field in its slot. The worker state machine makes
 * (and, for the stimulus log, shallow-copies) such objects by writing the slots
 * at their offsets, which it reads once per class from the member descriptors.
 * Declared for Cython in fastworker/workerstate.pyx (cdef extern from).
 */
#ifndef FASTWORKER_SLOTS_H
#define FASTWORKER_SLOTS_H

#include <Python.h>
#include <structmember.h>

/* The offset of a plain object slot (what __slots__ makes: T_OBJECT_EX,
   writable) behind member descriptor descr; -1 for any other descriptor. */
static Py_ssize_t fw_slot_offset(PyObject *descr) {
    PyMemberDef *m;
    if (Py_TYPE(descr) != &PyMemberDescr_Type) return -1;
    m = ((PyMemberDescrObject *)descr)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return -1;
    return m->offset;
}

/* copy.copy of an instance whose state is only object slots at these offsets:
   a new instance of the same class, and every slot that is set, shared. */
static PyObject *fw_copy_slots(PyObject *obj, PyObject *offsets) {
    PyTypeObject *tp = Py_TYPE(obj);
    Py_ssize_t i, n = PyTuple_GET_SIZE(offsets);
    PyObject *out = tp->tp_alloc(tp, 0);
    if (out == NULL) return NULL;
    for (i = 0; i < n; i++) {
        Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(offsets, i));
        PyObject *v = *(PyObject **)((char *)obj + off);
        Py_XINCREF(v);
        *(PyObject **)((char *)out + off) = v;
    }
    return out;
}

/* A new, empty instance of cls (its slots unset), as object.__new__(cls). */
static PyObject *fw_alloc(PyObject *cls) {
    PyTypeObject *tp = (PyTypeObject *)cls;
    return tp->tp_alloc(tp, 0);
}

/* As setattr on a plain object slot: store v (new reference), drop the old value. */
static void fw_put(PyObject *obj, Py_ssize_t offset, PyObject *v) {
    PyObject **slot = (PyObject **)((char *)obj + offset);
    PyObject *old = *slot;
    Py_INCREF(v);
    *slot = v;
    Py_XDECREF(old);
}

/* The object in a plain object slot (borrowed), NULL while the slot is unset. */
static PyObject *fw_peek_slot(PyObject *obj, Py_ssize_t offset) {
    return *(PyObject **)((char *)obj + offset);
}

#endif /* FASTWORKER_SLOTS_H */

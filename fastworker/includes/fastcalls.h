/* fastworker: direct calls of a few builtin methods the state machine calls on
 * every stimulus, where the receiver is exactly the builtin type.
 *
 * deque.append: the WorkerState's ``log`` and ``stimulus_log`` are
 * collections.deque; ``log.append(entry)`` from compiled code is a method lookup
 * and a vectorcall each time. The C function behind deque's own ``append``
 * method descriptor is looked up once and called directly: the same function
 * the method call ends in. Declared for Cython in fastworker/workerstate.pyx.
 */
#ifndef FASTWORKER_FASTCALLS_H
#define FASTWORKER_FASTCALLS_H

#include <Python.h>

static PyTypeObject *fw_deque_type = NULL;
static PyCFunction fw_deque_append_fn = NULL;

/* Remember deque's append (its type and its "append" method descriptor); 1 when
   it is a METH_O C method that can be called directly, else 0 (not used). */
static int fw_init_deque_append(PyObject *deque_type, PyObject *append_descr) {
    PyMethodDef *m;
    if (!PyType_Check(deque_type) || Py_TYPE(append_descr) != &PyMethodDescr_Type)
        return 0;
    m = ((PyMethodDescrObject *)append_descr)->d_method;
    if ((m->ml_flags & ~METH_COEXIST) != METH_O) return 0;
    fw_deque_type = (PyTypeObject *)deque_type;
    fw_deque_append_fn = m->ml_meth;
    return 1;
}

/* seq is exactly a collections.deque whose append can be called directly */
static int fw_is_deque(PyObject *seq) {
    return fw_deque_append_fn != NULL && Py_TYPE(seq) == fw_deque_type;
}

/* deque.append(seq, item) for a seq that fw_is_deque; -1 with an exception set */
static int fw_deque_append(PyObject *seq, PyObject *item) {
    PyObject *r = fw_deque_append_fn(seq, item);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

#endif /* FASTWORKER_FASTCALLS_H */

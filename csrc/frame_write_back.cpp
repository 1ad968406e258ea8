#include "frame_write_back.h"

#include <frameobject.h>

namespace nnsight_fast {
namespace {

// write_back(frame, values): assigns `values` (a dict) to variables of a running frame
// (the caller of a trace): a module's or class's namespace directly; a function's
// variables through its f_locals snapshot, which is emptied afterwards (it would hold
// what the variables held until something reads f_locals again).
PyObject* write_back(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyFrame_Check(args[0]) || !PyDict_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "write_back(frame, values: dict)");
    return nullptr;
  }
  if (PyDict_GET_SIZE(args[1]) == 0) Py_RETURN_NONE;
  auto* frame = reinterpret_cast<PyFrameObject*>(args[0]);
#if PY_VERSION_HEX >= 0x030B0000
  PyObject* names = PyFrame_GetLocals(frame);
#else
  PyObject* names = PyObject_GetAttrString(args[0], "f_locals");
#endif
  if (names == nullptr) return nullptr;
  int status = PyDict_Check(names) ? PyDict_Update(names, args[1]) : -2;
  if (status == -2) {  // a write-through proxy of the variables (Python 3.13)
    PyObject* updated = PyObject_CallMethod(names, "update", "O", args[1]);
    status = updated != nullptr ? 0 : -1;
    Py_XDECREF(updated);
  }
#if PY_VERSION_HEX < 0x030D0000
  PyCodeObject* code = PyFrame_GetCode(frame);
  const bool optimized = (code->co_flags & CO_OPTIMIZED) != 0;
  Py_DECREF(code);
  if (status == 0 && optimized && PyDict_Check(names)) {
    PyFrame_LocalsToFast(frame, 0);
    if (PyErr_Occurred()) status = -1;
    PyDict_Clear(names);
  }
#endif
  Py_DECREF(names);
  if (status < 0) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef functions[] = {
    {"write_back", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(write_back)), METH_FASTCALL,
     "write_back(frame, values): assigns values (a dict) to variables of a running frame."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool add_frame_write_back(PyObject* module) { return PyModule_AddFunctions(module, functions) == 0; }

}  // namespace nnsight_fast

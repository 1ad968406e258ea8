// A C function that binds like a method when set as a class attribute:
//
//   PyMethodDef def = {"block_enter", block_enter, METH_O, "..."};   // block_enter(module, self)
//   add_method_function(module, &def);     // Python: class Block: __enter__ = _native.block_enter
//
// `instance.attr(...)` then calls the C function with the instance first, with no Python frame.
#pragma once

#include <Python.h>

namespace nnsight_fast {

inline bool add_method_function(PyObject* module, PyMethodDef* def) {
  PyObject* function = PyCFunction_New(def, nullptr);
  PyObject* method = function != nullptr ? PyInstanceMethod_New(function) : nullptr;
  Py_XDECREF(function);
  if (method == nullptr) return false;
  if (PyModule_AddObject(module, def->ml_name, method) < 0) {
    Py_DECREF(method);
    return false;
  }
  return true;
}

}  // namespace nnsight_fast

// Adding the extension's C types and method-like functions to the `_native` module.
//
//   add_type(module, MyType, "MyType")        // PyType_Ready, then `_native.MyType`
//   PyMethodDef def = {"block_enter", block_enter, METH_O, "..."};   // block_enter(module, self)
//   add_method_function(module, &def);        // Python: class Block: __enter__ = _native.block_enter
//
// A method function, set as a class attribute, binds like a method: `instance.attr(...)`
// calls the C function with the instance first, with no Python frame.
#pragma once

#include <Python.h>

namespace nnsight_fast {

inline bool add_type(PyObject* module, PyTypeObject& type, const char* name) {
  if (PyType_Ready(&type) < 0) return false;
  Py_INCREF(&type);
  if (PyModule_AddObject(module, name, reinterpret_cast<PyObject*>(&type)) < 0) {
    Py_DECREF(&type);
    return false;
  }
  return true;
}

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

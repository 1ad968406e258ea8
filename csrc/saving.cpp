#include "saving.h"

#include "handoff.h"

namespace nnsight_fast {
namespace {

PyObject* g_save_outside = nullptr;  // save(value) where no body runs (Python)
PyObject* s_tracer = nullptr;        // "tracer"
PyObject* s_record_save = nullptr;   // "record_save"
PyObject* s_saves_into = nullptr;    // "saves_into"

PyObject* save(PyObject*, PyObject* value) {
  PyObject* mediator = current_mediator();  // borrowed
  if (mediator == nullptr) {
    if (g_save_outside == nullptr) {
      PyErr_SetString(PyExc_RuntimeError, "configure_save() was not called");
      return nullptr;
    }
    return PyObject_CallOneArg(g_save_outside, value);
  }
  PyObject* into = PyObject_GetAttr(mediator, s_saves_into);  // id(value) -> value, or None
  if (into == nullptr) return nullptr;
  if (PyDict_CheckExact(into)) {
    PyObject* key = PyLong_FromVoidPtr(value);
    const int stored = key != nullptr ? PyDict_SetItem(into, key, value) : -1;
    Py_XDECREF(key);
    Py_DECREF(into);
    return stored == 0 ? Py_NewRef(value) : nullptr;
  }
  Py_DECREF(into);
  PyObject* tracer = PyObject_GetAttr(mediator, s_tracer);
  if (tracer == nullptr) return nullptr;
  PyObject* recorded = PyObject_CallMethodOneArg(tracer, s_record_save, value);
  Py_DECREF(tracer);
  if (recorded == nullptr) return nullptr;
  Py_DECREF(recorded);
  return Py_NewRef(value);
}

PyObject* configure_save(PyObject*, PyObject* save_outside) {
  Py_XSETREF(g_save_outside, Py_NewRef(save_outside));
  Py_RETURN_NONE;
}

// pick_saved(namespaces, saved): {name: value} for each namespace item whose value is saved.
PyObject* pick_saved(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyList_Check(args[0]) || !PyDict_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "pick_saved(namespaces: list, saved: dict)");
    return nullptr;
  }
  PyObject* saved = args[1];
  PyObject* picked = PyDict_New();
  if (picked == nullptr) return nullptr;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[0]); ++i) {
    PyObject* namespace_ = PyList_GET_ITEM(args[0], i);
    if (!PyDict_Check(namespace_)) continue;
    Py_ssize_t position = 0;
    PyObject *name, *value;
    while (PyDict_Next(namespace_, &position, &name, &value)) {
      PyObject* key = PyLong_FromVoidPtr(value);
      PyObject* found = key != nullptr ? PyDict_GetItemWithError(saved, key) : nullptr;  // borrowed
      Py_XDECREF(key);
      if (found == value ? PyDict_SetItem(picked, name, value) < 0 : PyErr_Occurred() != nullptr) {
        Py_DECREF(picked);
        return nullptr;
      }
    }
  }
  return picked;
}

PyMethodDef save_def = {"save", save, METH_O, "save(value): keeps value (and the variable holding it) after the trace; returns it."};

PyMethodDef functions[] = {
    {"configure_save", configure_save, METH_O, "configure_save(save_outside_bodies): save() where no body runs."},
    {"pick_saved", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(pick_saved)), METH_FASTCALL,
     "pick_saved(namespaces, saved): {name: value} of the namespaces' values saved (saved: id -> value)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool add_saving(PyObject* module) {
  s_tracer = PyUnicode_InternFromString("tracer");
  s_record_save = PyUnicode_InternFromString("record_save");
  s_saves_into = PyUnicode_InternFromString("saves_into");
  if (s_tracer == nullptr || s_record_save == nullptr || s_saves_into == nullptr) return false;
  PyObject* function = PyCFunction_New(&save_def, nullptr);
  PyObject* method = function != nullptr ? PyInstanceMethod_New(function) : nullptr;
  const bool ok = method != nullptr && PyModule_AddObject(module, "save", Py_NewRef(function)) == 0 &&
                  PyModule_AddObject(module, "save_method", Py_NewRef(method)) == 0 &&
                  PyModule_AddFunctions(module, functions) == 0;
  Py_XDECREF(function);
  Py_XDECREF(method);
  return ok;
}

}  // namespace nnsight_fast

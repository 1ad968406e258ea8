#include "module_call.h"

#include <cstddef>

#include "module_objects.h"
namespace nnsight_fast {
namespace {

PyObject* g_module_name = nullptr;  // "_module", interned
PyObject* g_hook_name = nullptr;    // "hook", interned

struct ModuleCallObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  PyObject* fallback;  // fallback(envoy, *args, **kwargs) for calls with options
};

bool passes_option(PyObject* kwnames) {
  if (kwnames == nullptr) return false;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); ++i) {
    PyObject* name = PyTuple_GET_ITEM(kwnames, i);
    if (name == g_hook_name || PyUnicode_Compare(name, g_hook_name) == 0) return true;
  }
  return false;
}

// Called unbound, as Python calls a type's `__call__`: args[0] is the Envoy.
PyObject* module_call_vectorcall(PyObject* callable, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* self = reinterpret_cast<ModuleCallObject*>(callable);
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs < 1) {
    PyErr_SetString(PyExc_TypeError, "an Envoy's __call__ needs the Envoy");
    return nullptr;
  }
  if (passes_option(kwnames)) return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
  PyObject* module = PyObject_GetAttr(args[0], g_module_name);
  if (module == nullptr) return nullptr;
  PyObject* result =
      PyObject_Vectorcall(module, args + 1, static_cast<size_t>(nargs - 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
  Py_DECREF(module);
  return result;
}

// As an attribute of an instance: a bound method (what `envoy.__call__` gives).
PyObject* module_call_get(PyObject* self, PyObject* instance, PyObject*) {
  if (instance == nullptr || instance == Py_None) return Py_NewRef(self);
  return PyMethod_New(self, instance);
}

PyObject* module_call_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject* fallback = nullptr;
  if (!PyArg_ParseTuple(args, "O:ModuleCall", &fallback)) return nullptr;
  if (!PyCallable_Check(fallback)) {
    PyErr_SetString(PyExc_TypeError, "ModuleCall(fallback): fallback must be callable");
    return nullptr;
  }
  auto* self = reinterpret_cast<ModuleCallObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->vectorcall = module_call_vectorcall;
  self->fallback = Py_NewRef(fallback);
  return reinterpret_cast<PyObject*>(self);
}

int module_call_traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(reinterpret_cast<ModuleCallObject*>(self)->fallback);
  return 0;
}

int module_call_clear(PyObject* self) {
  Py_CLEAR(reinterpret_cast<ModuleCallObject*>(self)->fallback);
  return 0;
}

void module_call_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  module_call_clear(self);
  Py_TYPE(self)->tp_free(self);
}

PyObject* module_call_fallback(PyObject* self, void*) {
  return Py_NewRef(reinterpret_cast<ModuleCallObject*>(self)->fallback);
}

PyGetSetDef module_call_getset[] = {
    {"fallback", module_call_fallback, nullptr, "The Python function for calls with options (hook=)", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject ModuleCallType = {PyVarObject_HEAD_INIT(nullptr, 0)};

}  // namespace

bool add_module_call_type(PyObject* module) {
  g_module_name = PyUnicode_InternFromString("_module");
  g_hook_name = PyUnicode_InternFromString("hook");
  if (g_module_name == nullptr || g_hook_name == nullptr) return false;
  ModuleCallType.tp_name = "nnsight_fast._native.ModuleCall";
  ModuleCallType.tp_basicsize = sizeof(ModuleCallObject);
  ModuleCallType.tp_flags =
      Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR;
  ModuleCallType.tp_doc = "An Envoy's __call__: calls the wrapped module (options go to a Python fallback).";
  ModuleCallType.tp_vectorcall_offset = offsetof(ModuleCallObject, vectorcall);
  ModuleCallType.tp_call = PyVectorcall_Call;
  ModuleCallType.tp_descr_get = module_call_get;
  ModuleCallType.tp_new = module_call_new;
  ModuleCallType.tp_traverse = module_call_traverse;
  ModuleCallType.tp_clear = module_call_clear;
  ModuleCallType.tp_dealloc = module_call_dealloc;
  ModuleCallType.tp_getset = module_call_getset;
  return add_type(module, ModuleCallType, "ModuleCall");
}

}  // namespace nnsight_fast

#include "fall_through.h"

#include "module_objects.h"
namespace nnsight_fast {
namespace {

PyObject* s_missing_attribute = nullptr;  // "_missing_attribute"

PyObject* fall_through_getattro(PyObject* self, PyObject* name) {
  // Suppressed: a missing name returns nullptr with no AttributeError made (formatting
  // one costs more than the whole lookup).
  PyObject* found = _PyObject_GenericGetAttrWithDict(self, name, nullptr, 1);
  if (found != nullptr || PyErr_Occurred()) return found;
  if (PyUnicode_Check(name) && PyUnicode_Compare(name, s_missing_attribute) == 0) {
    PyErr_Format(PyExc_AttributeError, "'%.100s' defines no _missing_attribute", Py_TYPE(self)->tp_name);
    return nullptr;
  }
  return PyObject_CallMethodOneArg(self, s_missing_attribute, name);
}

PyTypeObject FallThroughType = {PyVarObject_HEAD_INIT(nullptr, 0)};

}  // namespace

bool add_fall_through_type(PyObject* module) {
  s_missing_attribute = PyUnicode_InternFromString("_missing_attribute");
  if (s_missing_attribute == nullptr) return false;
  FallThroughType.tp_name = "nnsight_fast._native.FallThrough";
  FallThroughType.tp_basicsize = sizeof(PyObject);
  FallThroughType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE;
  FallThroughType.tp_doc = "A base class whose missing attributes come from self._missing_attribute(name).";
  FallThroughType.tp_getattro = fall_through_getattro;
  return add_type(module, FallThroughType, "FallThrough");
}

}  // namespace nnsight_fast

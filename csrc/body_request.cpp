#include "body_request.h"

#include <c10/core/GradMode.h>

#include "handoff.h"
#include "module_objects.h"

namespace nnsight_fast {
namespace {

// Interned attribute names of a Mediator and of a ValueAccess (an Envoy).
PyObject* s_iteration = nullptr;
PyObject* s_offsets = nullptr;
PyObject* s_bases = nullptr;
PyObject* s_deferred = nullptr;
PyObject* s_run_deferred = nullptr;
PyObject* s_raise_pending_error = nullptr;
PyObject* s_history = nullptr;
PyObject* s_handoff = nullptr;
PyObject* s_backward_of = nullptr;
PyObject* s_path = nullptr;
PyObject* s_step = nullptr;
PyObject* g_next_outside = nullptr;  // next(place, step) where no body runs (Python: raises its error)

bool intern_all() {
  struct Name {
    PyObject** slot;
    const char* text;
  };
  const Name names[] = {{&s_iteration, "iteration"},       {&s_offsets, "_offsets"},
                        {&s_bases, "_bases"},              {&s_deferred, "_deferred"},
                        {&s_run_deferred, "_run_deferred"}, {&s_raise_pending_error, "_raise_pending_error"},
                        {&s_history, "history"},           {&s_handoff, "_handoff"},
                        {&s_backward_of, "backward_of"},   {&s_path, "path"},
                        {&s_step, "step"}};
  for (const Name& name : names) {
    *name.slot = PyUnicode_InternFromString(name.text);
    if (*name.slot == nullptr) return false;
  }
  return true;
}

// An int attribute of `object` (-1 with an error set when it is missing or not an int).
int64_t int_attribute(PyObject* object, PyObject* name) {
  PyObject* value = PyObject_GetAttr(object, name);
  if (value == nullptr) return -1;
  const int64_t result = PyLong_AsLongLong(value);
  Py_DECREF(value);
  return result;
}

// Calls `mediator.<name>()`; false with an error set when it raised.
bool call_method(PyObject* mediator, PyObject* name) {
  PyObject* result = PyObject_CallMethodNoArgs(mediator, name);
  Py_XDECREF(result);
  return result != nullptr;
}

// What backward blocks read: while grad mode is on, the value served at (location, occurrence).
bool remember_for_backward(PyObject* mediator, int location, int64_t occurrence, PyObject* value) {
  if (!c10::GradMode::is_enabled()) return true;  // only a run that builds a graph can have backward blocks
  PyObject* where = PyLong_FromLong(location);
  PyObject* when = where != nullptr ? PyLong_FromLongLong(occurrence) : nullptr;
  PyObject* key = when != nullptr ? PyTuple_Pack(2, where, when) : nullptr;
  Py_XDECREF(where);
  Py_XDECREF(when);
  if (key == nullptr) return false;
  PyObject* history = PyObject_GetAttr(mediator, s_history);
  const bool ok = history != nullptr && PyObject_SetItem(history, key, value) == 0;
  Py_XDECREF(history);
  Py_DECREF(key);
  return ok;
}

// The wait ended with Cancelled: the error the model side chose instead (Mediator.cancel), if any.
PyObject* cancelled(PyObject* mediator) {
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  if (!call_method(mediator, s_raise_pending_error)) {  // it raised the chosen error
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return nullptr;
  }
  PyErr_Restore(type, value, traceback);
  return nullptr;
}

// ValueRead: a data descriptor for `ValueAccess.output`.
struct ValueReadObject {
  PyObject_HEAD
  PyObject* location_name;  // the instance attribute holding the location, e.g. "_output_location"
  PyObject* getter;         // getter(instance): the whole read in Python (rare cases)
  PyObject* setter;         // setter(instance, value)
};

PyObject* value_read_get(PyObject* self_object, PyObject* instance, PyObject*) {
  auto* self = reinterpret_cast<ValueReadObject*>(self_object);
  if (instance == nullptr || instance == Py_None) return Py_NewRef(self_object);
  PyObject* mediator = current_mediator();
  if (mediator == nullptr) return PyObject_CallOneArg(self->getter, instance);  // outside a body: its error
  PyObject* backward_of = PyObject_GetAttr(mediator, s_backward_of);
  if (backward_of == nullptr) return nullptr;
  const bool in_backward = backward_of != Py_None;
  Py_DECREF(backward_of);
  if (in_backward) return PyObject_CallOneArg(self->getter, instance);  // the forward's history
  // Generic lookups: they skip the Envoy's __getattr__ (the module's own attributes)
  PyObject* location_object = PyObject_GenericGetAttr(instance, self->location_name);
  PyObject* path = location_object != nullptr ? PyObject_GenericGetAttr(instance, s_path) : nullptr;
  if (path == nullptr) {  // kept elsewhere by this kind of place: the Python read finds it
    Py_XDECREF(location_object);
    PyErr_Clear();
    return PyObject_CallOneArg(self->getter, instance);
  }
  const long location = PyLong_AsLong(location_object);
  Py_DECREF(location_object);
  const int64_t occurrence = location == -1 && PyErr_Occurred() ? -1 : occurrence_of(mediator, path);
  Py_DECREF(path);
  if (occurrence < 0 && PyErr_Occurred()) return nullptr;
  return mediator_request(mediator, static_cast<int>(location), occurrence);
}

int value_read_set(PyObject* self_object, PyObject* instance, PyObject* value) {
  auto* self = reinterpret_cast<ValueReadObject*>(self_object);
  if (value == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete a traced value");
    return -1;
  }
  PyObject* result = PyObject_CallFunctionObjArgs(self->setter, instance, value, nullptr);
  Py_XDECREF(result);
  return result != nullptr ? 0 : -1;
}

PyObject* value_read_new(PyTypeObject* type, PyObject* args, PyObject*) {
  PyObject *location_name, *getter, *setter;
  if (!PyArg_ParseTuple(args, "UOO:ValueRead", &location_name, &getter, &setter)) return nullptr;
  auto* self = reinterpret_cast<ValueReadObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  Py_INCREF(location_name);
  PyUnicode_InternInPlace(&location_name);
  self->location_name = location_name;
  self->getter = Py_NewRef(getter);
  self->setter = Py_NewRef(setter);
  return reinterpret_cast<PyObject*>(self);
}

int value_read_traverse(PyObject* self_object, visitproc visit, void* arg) {
  auto* self = reinterpret_cast<ValueReadObject*>(self_object);
  Py_VISIT(self->getter);
  Py_VISIT(self->setter);
  return 0;
}

int value_read_clear(PyObject* self_object) {
  auto* self = reinterpret_cast<ValueReadObject*>(self_object);
  Py_CLEAR(self->location_name);
  Py_CLEAR(self->getter);
  Py_CLEAR(self->setter);
  return 0;
}

void value_read_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  value_read_clear(self);
  Py_TYPE(self)->tp_free(self);
}

PyObject* value_read_doc(PyObject* self, void*) {
  return PyObject_GetAttrString(reinterpret_cast<ValueReadObject*>(self)->getter, "__doc__");
}

PyGetSetDef value_read_getset[] = {{"__doc__", value_read_doc, nullptr, nullptr, nullptr},
                                   {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject ValueReadType = {PyVarObject_HEAD_INIT(nullptr, 0)};

}  // namespace

int64_t occurrence_of(PyObject* mediator, PyObject* path) {
  const int64_t iteration = int_attribute(mediator, s_iteration);
  if (iteration == -1 && PyErr_Occurred()) return -1;
  PyObject* offsets = PyObject_GetAttr(mediator, s_offsets);
  if (offsets == nullptr) return -1;
  int64_t offset = 0;
  if (PyDict_Check(offsets) && PyDict_GET_SIZE(offsets) != 0) {
    PyObject* found = PyDict_GetItemWithError(offsets, path);  // borrowed
    if (found != nullptr) offset = PyLong_AsLongLong(found);
  }
  Py_DECREF(offsets);
  if (PyErr_Occurred()) return -1;
  return iteration + offset;
}

bool run_deferred_actions(PyObject* mediator) {
  PyObject* deferred = PyObject_GetAttr(mediator, s_deferred);
  if (deferred == nullptr) return false;
  const bool has_deferred = deferred != Py_None;
  Py_DECREF(deferred);
  return !has_deferred || call_method(mediator, s_run_deferred);
}

namespace {

PyObject* request_through(PyObject* mediator, PyObject* handoff_object, int location, int64_t occurrence) {
  Handoff* handoff = handoff_of(handoff_object);
  if (handoff == nullptr) return nullptr;
  if (PyObject* last = handoff->last_value(location, occurrence)) return Py_NewRef(last);
  handoff->count_request();

  if (!run_deferred_actions(mediator)) return nullptr;

  PyObject* value = handoff->request(location, occurrence);
  if (value == nullptr) {
    return PyErr_ExceptionMatches(cancelled_type()) ? cancelled(mediator) : nullptr;
  }
  handoff->remember_last(location, occurrence, value);
  if (!remember_for_backward(mediator, location, occurrence, value)) {
    Py_DECREF(value);
    return nullptr;
  }
  return value;
}

}  // namespace

PyObject* mediator_request(PyObject* mediator, int location, int64_t occurrence) {
  PyObject* bases = PyObject_GetAttr(mediator, s_bases);  // visits before a late-joining body joined
  if (bases == nullptr) return nullptr;
  if (bases != Py_None && PyList_Check(bases) && location < PyList_GET_SIZE(bases)) {
    occurrence += PyLong_AsLongLong(PyList_GET_ITEM(bases, location));
  }
  Py_DECREF(bases);
  if (PyErr_Occurred()) return nullptr;

  PyObject* handoff_object = PyObject_GetAttr(mediator, s_handoff);
  if (handoff_object == nullptr) return nullptr;
  PyObject* value = request_through(mediator, handoff_object, location, occurrence);
  Py_DECREF(handoff_object);
  return value;
}

namespace {

// ValueAccess.next(step=1): later values of this place refer to the call `step` calls
// further on, in the running body (its `_offsets`, path -> calls further on). Returns the place.
PyObject* place_next(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  const Py_ssize_t keywords = kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0;
  PyObject* step = nargs >= 2 ? args[1] : Py_None;
  if (nargs < 1 || nargs + keywords > 2 ||
      (keywords == 1 && PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_step) != 0)) {
    PyErr_SetString(PyExc_TypeError, "next(step=1)");
    return nullptr;
  }
  if (keywords == 1) step = args[nargs];
  PyObject* place = args[0];
  PyObject* mediator = current_mediator();
  if (mediator == nullptr) {
    PyObject* call[] = {place, step == Py_None ? nullptr : step};
    return PyObject_Vectorcall(g_next_outside, call, step == Py_None ? 1 : 2, nullptr);
  }
  const long long calls = step == Py_None ? 1 : PyLong_AsLongLong(step);
  if (calls == -1 && PyErr_Occurred()) return nullptr;
  PyObject* path = PyObject_GenericGetAttr(place, s_path);
  if (path == nullptr) return nullptr;
  PyObject* offsets = PyObject_GetAttr(mediator, s_offsets);
  bool ok = offsets != nullptr;
  if (ok && !PyDict_CheckExact(offsets)) {  // the first next() of this body
    Py_DECREF(offsets);
    offsets = PyDict_New();
    ok = offsets != nullptr && PyObject_SetAttr(mediator, s_offsets, offsets) == 0;
  }
  if (ok) {
    PyObject* before = PyDict_GetItemWithError(offsets, path);  // borrowed
    const long long now = (before != nullptr ? PyLong_AsLongLong(before) : 0) + calls;
    PyObject* after = PyErr_Occurred() ? nullptr : PyLong_FromLongLong(now);
    ok = after != nullptr && PyDict_SetItem(offsets, path, after) == 0;
    Py_XDECREF(after);
  }
  Py_XDECREF(offsets);
  Py_DECREF(path);
  return ok ? Py_NewRef(place) : nullptr;
}

PyObject* set_next_fallback(PyObject*, PyObject* fallback) {
  Py_XSETREF(g_next_outside, Py_NewRef(fallback));
  Py_RETURN_NONE;
}

PyMethodDef place_next_def = {"place_next", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(place_next)),
                              METH_FASTCALL | METH_KEYWORDS,
                              "ValueAccess.next(step=1): later values refer to the call `step` calls further on."};
PyMethodDef next_functions[] = {
    {"set_next_fallback", set_next_fallback, METH_O, "set_next_fallback(fn): next(place, step) where no body runs."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

bool add_value_read_type(PyObject* module) {
  if (!intern_all()) return false;
  if (!add_method_function(module, &place_next_def) || PyModule_AddFunctions(module, next_functions) < 0) return false;
  ValueReadType.tp_name = "nnsight_fast._native.ValueRead";
  ValueReadType.tp_basicsize = sizeof(ValueReadObject);
  ValueReadType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;
  ValueReadType.tp_doc =
      "ValueRead(location_attribute, getter, setter): a traced value as a data descriptor; reads run in C.";
  ValueReadType.tp_descr_get = value_read_get;
  ValueReadType.tp_descr_set = value_read_set;
  ValueReadType.tp_new = value_read_new;
  ValueReadType.tp_traverse = value_read_traverse;
  ValueReadType.tp_clear = value_read_clear;
  ValueReadType.tp_dealloc = value_read_dealloc;
  ValueReadType.tp_getset = value_read_getset;
  return add_type(module, ValueReadType, "ValueRead");
}

}  // namespace nnsight_fast

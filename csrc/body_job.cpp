#include "body_job.h"

#include "body_request.h"
#include "handoff.h"
#include "module_objects.h"

namespace nnsight_fast {
namespace {

PyObject* s_body = nullptr;          // "_body"
PyObject* s_collect = nullptr;       // "_collect"
PyObject* s_run = nullptr;           // "run"
PyObject* s_deferred = nullptr;      // "_deferred"
PyObject* s_error = nullptr;         // "error"
PyObject* s_handoff = nullptr;       // "_handoff"
PyObject* s_namespace = nullptr;     // "_namespace"

// Runs the body and its deferred actions; nullptr with the error set when either failed.
PyObject* run_body(PyObject* mediator) {
  PyObject* body = PyObject_GetAttr(mediator, s_body);
  PyObject* collect = body != nullptr ? PyObject_GetAttr(mediator, s_collect) : nullptr;
  PyObject* result = collect != nullptr ? PyObject_CallMethodOneArg(body, s_run, collect) : nullptr;
  Py_XDECREF(body);
  Py_XDECREF(collect);
  if (result == nullptr) return nullptr;
  Py_DECREF(result);
  if (!run_deferred_actions(mediator)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* mediator_job(PyObject*, PyObject* mediator) {
  set_current_mediator(mediator);  // borrowed: the mediator outlives its job
  PyObject* ran = run_body(mediator);
  bool failed = ran == nullptr;
  Py_XDECREF(ran);
  PyObject *type = nullptr, *value = nullptr, *traceback = nullptr;
  if (failed) {  // every failure goes back to the model side, as mediator.error
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != nullptr && traceback != nullptr) PyException_SetTraceback(value, traceback);
  }
  set_current_mediator(nullptr);
  bool ok = PyObject_SetAttr(mediator, s_deferred, Py_None) == 0;
  PyObject* handoff_object = ok ? PyObject_GetAttr(mediator, s_handoff) : nullptr;
  Handoff* handoff = handoff_object != nullptr ? handoff_of(handoff_object) : nullptr;
  if (handoff != nullptr) handoff->forget_last();  // no served value kept past the body
  ok = handoff != nullptr;
  Py_XDECREF(handoff_object);
  if (ok && failed) ok = PyObject_SetAttr(mediator, s_error, value) == 0;
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(traceback);
  if (!ok) return nullptr;
  return PyBool_FromLong(failed);
}

// keep_namespace(mediator, namespace): the body's locals when it ends (body.run's collect).
PyObject* keep_namespace(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "keep_namespace(mediator, namespace)");
    return nullptr;
  }
  if (PyObject_SetAttr(args[0], s_namespace, args[1]) < 0) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef mediator_job_def = {"mediator_job", mediator_job, METH_O,
                                "Mediator._job: runs the body and its deferred actions; True when it failed."};
PyMethodDef keep_namespace_def = {"keep_namespace",
                                  reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(keep_namespace)),
                                  METH_FASTCALL, "Mediator._collect: keeps the body's locals when it ends."};

}  // namespace

bool add_body_job(PyObject* module) {
  struct Name {
    PyObject** slot;
    const char* text;
  } names[] = {{&s_body, "_body"},         {&s_collect, "_collect"}, {&s_run, "run"},
               {&s_deferred, "_deferred"}, {&s_error, "error"},      {&s_handoff, "_handoff"},
               {&s_namespace, "_namespace"}};
  for (const Name& name : names) {
    *name.slot = PyUnicode_InternFromString(name.text);
    if (*name.slot == nullptr) return false;
  }
  return add_method_function(module, &mediator_job_def) && add_method_function(module, &keep_namespace_def);
}

}  // namespace nnsight_fast

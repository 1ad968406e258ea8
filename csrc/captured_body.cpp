#include "captured_body.h"

#include <structmember.h>

#include <cstddef>

#include "module_objects.h"
namespace nnsight_fast {
namespace {

PyObject* g_loop_end = nullptr;  // LoopEnd, the body function's second parameter

struct BodyObject {
  PyObject_HEAD
  PyObject* function;   // __traced_block__(collect, LoopEnd, *arguments)
  PyObject* arguments;  // tuple: the caller's values of the names the body reads
  PyObject* frame;      // the caller's frame (None for a body made elsewhere)
};

PyTypeObject BodyType = {PyVarObject_HEAD_INIT(nullptr, 0)};

}  // namespace

PyObject* new_captured_body(PyObject* function, PyObject* arguments, PyObject* frame) {
  auto* body = PyObject_GC_New(BodyObject, &BodyType);
  if (body == nullptr) return nullptr;
  body->function = Py_NewRef(function);
  body->arguments = Py_NewRef(arguments);
  body->frame = Py_NewRef(frame);
  PyObject_GC_Track(body);
  return reinterpret_cast<PyObject*>(body);
}

void set_loop_end(PyObject* loop_end) { Py_XSETREF(g_loop_end, Py_NewRef(loop_end)); }

namespace {

PyObject* body_new(PyTypeObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"function", "arguments", "frame", nullptr};
  PyObject* function = nullptr;
  PyObject* arguments = nullptr;
  PyObject* frame = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!|O:CapturedBody", const_cast<char**>(keywords), &function,
                                   &PyTuple_Type, &arguments, &frame))
    return nullptr;
  return new_captured_body(function, arguments, frame);
}

// body.run(collect): the body's function called as function(collect, LoopEnd, *arguments);
// `collect` receives the body's locals when it ends, however it ends.
PyObject* body_run(PyObject* self, PyObject* collect) {
  auto* body = reinterpret_cast<BodyObject*>(self);
  const Py_ssize_t count = PyTuple_GET_SIZE(body->arguments);
  constexpr Py_ssize_t kInline = 16;
  PyObject* inline_args[kInline + 3];
  PyObject** args = inline_args;
  if (count > kInline) {
    args = PyMem_New(PyObject*, count + 3);
    if (args == nullptr) return PyErr_NoMemory();
  }
  args[1] = collect;
  args[2] = g_loop_end;
  for (Py_ssize_t i = 0; i < count; ++i) args[3 + i] = PyTuple_GET_ITEM(body->arguments, i);
  PyObject* result =
      PyObject_Vectorcall(body->function, args + 1, static_cast<size_t>(count + 2) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                          nullptr);
  if (args != inline_args) PyMem_Free(args);
  return result;
}

int body_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* body = reinterpret_cast<BodyObject*>(self);
  Py_VISIT(body->function);
  Py_VISIT(body->arguments);
  Py_VISIT(body->frame);
  return 0;
}

int body_clear(PyObject* self) {
  auto* body = reinterpret_cast<BodyObject*>(self);
  Py_CLEAR(body->function);
  Py_CLEAR(body->arguments);
  Py_CLEAR(body->frame);
  return 0;
}

void body_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  body_clear(self);
  Py_TYPE(self)->tp_free(self);
}

PyMethodDef body_methods[] = {
    {"run", body_run, METH_O, "run(collect): runs the body; collect(locals) when it ends, however it ends."},
    {nullptr, nullptr, 0, nullptr}};

PyMemberDef body_members[] = {
    {"function", T_OBJECT, offsetof(BodyObject, function), READONLY, "The compiled body: (collect, LoopEnd, *arguments)"},
    {"arguments", T_OBJECT, offsetof(BodyObject, arguments), READONLY, "The values of the names it reads"},
    {"frame", T_OBJECT, offsetof(BodyObject, frame), READONLY, "The frame of the `with` statement (or None)"},
    {nullptr, 0, 0, 0, nullptr}};

}  // namespace

bool add_captured_body_type(PyObject* module) {
  BodyType.tp_name = "nnsight_fast._native.CapturedBody";
  BodyType.tp_basicsize = sizeof(BodyObject);
  BodyType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;
  BodyType.tp_doc = "CapturedBody(function, arguments, frame=None): a compiled `with` body, bound to its values.";
  BodyType.tp_new = body_new;
  BodyType.tp_traverse = body_traverse;
  BodyType.tp_clear = body_clear;
  BodyType.tp_dealloc = body_dealloc;
  BodyType.tp_methods = body_methods;
  BodyType.tp_members = body_members;
  return add_type(module, BodyType, "CapturedBody");
}

}  // namespace nnsight_fast

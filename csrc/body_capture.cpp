#include "body_capture.h"

#include "captured_body.h"
#include "module_objects.h"

#include <frameobject.h>
#include <structmember.h>

#include <cstddef>
#include <functional>
#include <unordered_map>
#include <utility>

namespace nnsight_fast {
namespace {

PyObject* g_find_site = nullptr;   // find_site(filename, line) -> site (Python)
PyObject* g_drop_context = nullptr;  // drop_context(failure, skip): unchains a body's error from SkipBody
PyObject* g_default_entered = nullptr;  // CapturedBlock.entered (returns the block itself)
PyObject* s_capture = nullptr;     // "_capture"
PyObject* s_entered = nullptr;     // "entered"
PyObject* s_run_block = nullptr;   // "run_block"
PyObject* g_skip_error = nullptr;  // SkipBody
int g_nop = -1;                    // the NOP opcode (dis.opmap["NOP"])

// One `with` statement as a code object and the line of its header: what begin_capture
// needs of its site, read once. The entry holds the code, so its address is not reused.
struct Site {
  PyObject* code;
  PyObject* site;
  PyObject* names;     // tuple of the names the body uses
  PyObject* compiled;  // dict: (parameters, late) -> body code
  PyObject* compile;   // site.compile(parameters, late) -> body code
  int body_line;
};

struct SiteKey {
  PyObject* code;
  int line;
  bool operator==(const SiteKey& other) const { return code == other.code && line == other.line; }
};

struct SiteKeyHash {
  size_t operator()(const SiteKey& key) const {
    return std::hash<const void*>()(key.code) ^ (static_cast<size_t>(key.line) * 0x9E3779B97F4A7C15ull);
  }
};

std::unordered_map<SiteKey, Site, SiteKeyHash>* g_sites = nullptr;

// ---- Capture ----

struct CaptureObject {
  PyObject_HEAD
  PyFrameObject* frame;       // the frame running the `with` statement
  const Site* site;
  PyObject* previous_trace;   // the thread's trace object before arming (None: none); fallback path
  PyObject* previous_local;   // the frame's own trace function before arming; fallback path
  bool armed;
  bool on_thread;             // armed as the thread's C trace function (no trace function was set)
};

PyTypeObject CaptureType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// True when the frame's current instruction is a NOP: a statement compiled to one
// (`pass`, `try:`, a docstring) sits before the range Python's `with` guards; the next
// line is inside it. A body of NOPs only runs as it is (it does nothing).
bool at_nop(PyFrameObject* frame) {
#if PY_VERSION_HEX >= 0x030B0000
  const int lasti = PyFrame_GetLasti(frame);
  PyCodeObject* code = PyFrame_GetCode(frame);
  PyObject* bytes = PyCode_GetCode(code);
  Py_DECREF(code);
#else
  const int lasti = frame->f_lasti * 2;
  PyObject* bytes = Py_NewRef(frame->f_code->co_code);
#endif
  if (bytes == nullptr) {
    PyErr_Clear();
    return false;
  }
  const bool nop = lasti >= 0 && lasti < PyBytes_GET_SIZE(bytes) &&
                   static_cast<unsigned char>(PyBytes_AS_STRING(bytes)[lasti]) == g_nop;
  Py_DECREF(bytes);
  return nop;
}

// A line starts in the captured frame: raise SkipBody once it is a body line (not a NOP).
int skip_line(CaptureObject* capture, PyFrameObject* frame) {
  if (PyFrame_GetLineNumber(frame) < capture->site->body_line || at_nop(frame)) return 0;
  PyErr_SetNone(g_skip_error);
  return -1;
}

// The thread's trace function while a body is skipped (no Python call per event).
int skip_trace(PyObject* object, PyFrameObject* frame, int what, PyObject*) {
  auto* capture = reinterpret_cast<CaptureObject*>(object);
  if (what != PyTrace_LINE || frame != capture->frame) return 0;
  return skip_line(capture, frame);
}

// The frame's trace function while a debugger's is the thread's: capture(frame, event, arg).
PyObject* capture_call(PyObject* self, PyObject* args, PyObject*) {
  auto* capture = reinterpret_cast<CaptureObject*>(self);
  PyObject* frame = nullptr;
  PyObject* event = nullptr;
  PyObject* arg = nullptr;
  if (!PyArg_UnpackTuple(args, "capture", 3, 3, &frame, &event, &arg)) return nullptr;
  if (frame == reinterpret_cast<PyObject*>(capture->frame) && PyUnicode_Check(event) &&
      PyUnicode_CompareWithASCIIString(event, "line") == 0 && skip_line(capture, capture->frame) < 0)
    return nullptr;
  return Py_NewRef(self);
}

bool set_sys_trace(PyObject* trace) {
  PyObject* settrace = PySys_GetObject("settrace");  // borrowed
  if (settrace == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "sys.settrace is missing");
    return false;
  }
  PyObject* result = PyObject_CallOneArg(settrace, trace);
  if (result == nullptr) return false;
  Py_DECREF(result);
  return true;
}

bool arm(CaptureObject* capture) {
  PyThreadState* state = PyThreadState_Get();
  Py_tracefunc current = state->c_tracefunc;
  if (current == skip_trace) {  // a capture armed and never disarmed (its block failed before the body)
    PyEval_SetTrace(nullptr, nullptr);
    current = nullptr;
  }
  if (current == nullptr) {
    PyEval_SetTrace(skip_trace, reinterpret_cast<PyObject*>(capture));
    capture->on_thread = true;
    capture->armed = true;
    return !PyErr_Occurred();
  }
  // A debugger's (or coverage's) trace function: keep it on the thread, and make this
  // capture the frame's own trace function (raising from it drops the thread's: disarm
  // puts it back).
  PyObject* previous = state->c_traceobj != nullptr ? state->c_traceobj : Py_None;
  capture->previous_trace = Py_NewRef(previous);
  capture->previous_local = PyObject_GetAttrString(reinterpret_cast<PyObject*>(capture->frame), "f_trace");
  if (capture->previous_local == nullptr) return false;
  if (!set_sys_trace(previous)) return false;
  if (PyObject_SetAttrString(reinterpret_cast<PyObject*>(capture->frame), "f_trace",
                             reinterpret_cast<PyObject*>(capture)) < 0)
    return false;
  capture->armed = true;
  return true;
}

bool disarm(CaptureObject* capture) {
  if (!capture->armed) return true;
  capture->armed = false;
  if (capture->on_thread) {
    PyThreadState* state = PyThreadState_Get();
    if (state->c_tracefunc == skip_trace && state->c_traceobj == reinterpret_cast<PyObject*>(capture))
      PyEval_SetTrace(nullptr, nullptr);
    return !PyErr_Occurred();
  }
  bool ok = PyObject_SetAttrString(reinterpret_cast<PyObject*>(capture->frame), "f_trace", capture->previous_local) == 0;
  ok = set_sys_trace(capture->previous_trace) && ok;
  Py_CLEAR(capture->previous_local);
  Py_CLEAR(capture->previous_trace);
  return ok;
}

const Site* site_of(PyFrameObject* frame) {
  PyCodeObject* code = PyFrame_GetCode(frame);
  const int line = PyFrame_GetLineNumber(frame);
  const SiteKey key{reinterpret_cast<PyObject*>(code), line};
  auto found = g_sites->find(key);
  if (found != g_sites->end()) {
    Py_DECREF(code);
    return &found->second;
  }
  PyObject* line_object = PyLong_FromLong(line);
  PyObject* site = line_object == nullptr ? nullptr
      : PyObject_CallFunctionObjArgs(g_find_site, code->co_filename, line_object, nullptr);
  Py_XDECREF(line_object);
  if (site == nullptr) {
    Py_DECREF(code);
    return nullptr;
  }
  Site entry{reinterpret_cast<PyObject*>(code), site, PyObject_GetAttrString(site, "names"),
             PyObject_GetAttrString(site, "compiled"), PyObject_GetAttrString(site, "compile"), 0};
  PyObject* body_line = PyObject_GetAttrString(site, "body_line");
  if (body_line != nullptr) {
    entry.body_line = static_cast<int>(PyLong_AsLong(body_line));
    Py_DECREF(body_line);
  }
  if (entry.names == nullptr || entry.compiled == nullptr || entry.compile == nullptr || body_line == nullptr ||
      PyErr_Occurred() || !PyTuple_Check(entry.names) || !PyDict_Check(entry.compiled)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "find_site: a site needs names (tuple), compiled (dict)");
    Py_DECREF(code);
    Py_DECREF(site);
    Py_XDECREF(entry.names);
    Py_XDECREF(entry.compiled);
    Py_XDECREF(entry.compile);
    return nullptr;
  }
  return &g_sites->emplace(key, entry).first->second;  // keeps the references
}

// begin_capture(frame): arms the skip of the `with` body whose header runs in `frame`.
PyObject* begin_capture(PyObject*, PyObject* frame_object) {
  if (!PyFrame_Check(frame_object)) {
    PyErr_SetString(PyExc_TypeError, "begin_capture(frame)");
    return nullptr;
  }
  if (g_find_site == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "configure_capture() was not called");
    return nullptr;
  }
  auto* frame = reinterpret_cast<PyFrameObject*>(frame_object);
  const Site* site = site_of(frame);
  if (site == nullptr) return nullptr;
  auto* capture = PyObject_GC_New(CaptureObject, &CaptureType);
  if (capture == nullptr) return nullptr;
  capture->frame = reinterpret_cast<PyFrameObject*>(Py_NewRef(frame_object));
  capture->site = site;
  capture->previous_trace = nullptr;
  capture->previous_local = nullptr;
  capture->armed = false;
  capture->on_thread = false;
  PyObject_GC_Track(capture);
  if (!arm(capture)) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    disarm(capture);
    PyErr_Restore(type, value, traceback);
    Py_DECREF(capture);
    return nullptr;
  }
  return reinterpret_cast<PyObject*>(capture);
}

// capture.skipped(kind): disarms; True when the body was skipped by us (and should run):
// SkipBody, or no error at all (a body of NOPs ran as the no-op it is).
PyObject* capture_skipped(PyObject* self, PyObject* kind) {
  if (!disarm(reinterpret_cast<CaptureObject*>(self))) return nullptr;
  return PyBool_FromLong(kind == Py_None || kind == g_skip_error);
}

bool contains(PyObject* mapping, PyObject* key, int* found) {
  *found = PyDict_CheckExact(mapping) ? PyDict_Contains(mapping, key) : PySequence_Contains(mapping, key);
  return *found >= 0;
}

// capture.compile(): the skipped body as a function of the names it reads from the caller,
// bound to their values now. Names the body uses that nothing defines yet become unbound
// locals (a barrier can hand them over from another invoke).
PyObject* capture_compile(PyObject* self, PyObject*) {
  auto* capture = reinterpret_cast<CaptureObject*>(self);
  const Site* site = capture->site;
  PyFrameObject* frame = capture->frame;
#if PY_VERSION_HEX >= 0x030B0000
  PyObject* names = PyFrame_GetLocals(frame);
  PyObject* globals = PyFrame_GetGlobals(frame);
  PyObject* builtins = PyFrame_GetBuiltins(frame);
#else
  PyObject* names = PyObject_GetAttrString(reinterpret_cast<PyObject*>(frame), "f_locals");
  PyObject* globals = PyObject_GetAttrString(reinterpret_cast<PyObject*>(frame), "f_globals");
  PyObject* builtins = PyObject_GetAttrString(reinterpret_cast<PyObject*>(frame), "f_builtins");
#endif
  PyObject* result = nullptr;
  PyObject* key = nullptr;
  PyObject* arguments = nullptr;
  PyObject* function = nullptr;
  PyObject* parameters = nullptr;
  PyObject* late = nullptr;
  const Py_ssize_t count = PyTuple_GET_SIZE(site->names);
  Py_ssize_t given = 0;
  Py_ssize_t unbound = 0;
  if (names == nullptr || globals == nullptr || builtins == nullptr) goto done;
  parameters = PyTuple_New(count);
  late = PyTuple_New(count);
  if (parameters == nullptr || late == nullptr) goto done;
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* name = PyTuple_GET_ITEM(site->names, i);
    int found = 0;
    if (!contains(names, name, &found)) goto done;
    if (found) {
      PyTuple_SET_ITEM(parameters, given++, Py_NewRef(name));
      continue;
    }
    if (!contains(globals, name, &found)) goto done;
    if (!found && !contains(builtins, name, &found)) goto done;
    if (!found) PyTuple_SET_ITEM(late, unbound++, Py_NewRef(name));
  }
  if (_PyTuple_Resize(&parameters, given) < 0 || _PyTuple_Resize(&late, unbound) < 0) goto done;
  key = PyTuple_Pack(2, parameters, late);
  if (key == nullptr) goto done;
  {
    PyObject* code = PyDict_GetItemWithError(site->compiled, key);  // borrowed
    if (code == nullptr) {
      if (PyErr_Occurred()) goto done;
      code = PyObject_CallFunctionObjArgs(site->compile, parameters, late, nullptr);
      if (code == nullptr) goto done;
      const int stored = PyDict_SetItem(site->compiled, key, code);
      Py_DECREF(code);  // the dict holds it
      if (stored < 0) goto done;
    }
    function = PyFunction_New(code, globals);
  }
  if (function == nullptr) goto done;
  arguments = PyTuple_New(given + unbound);
  if (arguments == nullptr) goto done;
  for (Py_ssize_t i = 0; i < given; ++i) {
    PyObject* value = PyDict_CheckExact(names) ? Py_XNewRef(PyDict_GetItemWithError(names, PyTuple_GET_ITEM(parameters, i)))
                                                : PyObject_GetItem(names, PyTuple_GET_ITEM(parameters, i));
    if (value == nullptr) {
      if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, PyTuple_GET_ITEM(parameters, i));
      goto done;
    }
    PyTuple_SET_ITEM(arguments, i, value);
  }
  for (Py_ssize_t i = 0; i < unbound; ++i) PyTuple_SET_ITEM(arguments, given + i, Py_NewRef(Py_None));
  // A function frame's f_locals (Python < 3.13) is a snapshot kept on the frame: empty it,
  // or it holds what the variables held now (a model the caller later `del`s).
  {
    PyCodeObject* code = PyFrame_GetCode(frame);
    const bool optimized = (code->co_flags & CO_OPTIMIZED) != 0;
    Py_DECREF(code);
    if (optimized && PyDict_CheckExact(names)) PyDict_Clear(names);
  }
  result = new_captured_body(function, arguments, reinterpret_cast<PyObject*>(frame));
done:
  Py_XDECREF(names);
  Py_XDECREF(globals);
  Py_XDECREF(builtins);
  Py_XDECREF(parameters);
  Py_XDECREF(late);
  Py_XDECREF(key);
  Py_XDECREF(function);
  Py_XDECREF(arguments);
  return result;
}

PyObject* capture_frame(PyObject* self, void*) {
  return Py_NewRef(reinterpret_cast<PyObject*>(reinterpret_cast<CaptureObject*>(self)->frame));
}

PyObject* capture_site(PyObject* self, void*) { return Py_NewRef(reinterpret_cast<CaptureObject*>(self)->site->site); }

int capture_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* capture = reinterpret_cast<CaptureObject*>(self);
  Py_VISIT(reinterpret_cast<PyObject*>(capture->frame));
  Py_VISIT(capture->previous_trace);
  Py_VISIT(capture->previous_local);
  return 0;
}

int capture_clear(PyObject* self) {
  auto* capture = reinterpret_cast<CaptureObject*>(self);
  PyObject* frame = reinterpret_cast<PyObject*>(capture->frame);
  capture->frame = nullptr;
  Py_XDECREF(frame);
  Py_CLEAR(capture->previous_trace);
  Py_CLEAR(capture->previous_local);
  return 0;
}

void capture_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  capture_clear(self);
  Py_TYPE(self)->tp_free(self);
}

PyMethodDef capture_methods[] = {
    {"skipped", capture_skipped, METH_O, "skipped(kind): disarms; True when the body was skipped by us (run it)."},
    {"compile", capture_compile, METH_NOARGS, "The skipped body as a CapturedBody bound to the caller's values now."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef capture_getset[] = {
    {"frame", capture_frame, nullptr, "The frame running the `with` statement", nullptr},
    {"site", capture_site, nullptr, "The `with` statement's site (capture.py)", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

// CapturedBlock.__enter__(block): arms the capture of the body of the `with` statement
// running in the calling frame (this is C: no Python frame between); returns
// block.entered() (the block itself unless a subclass says otherwise).
PyObject* block_enter(PyObject*, PyObject* block) {
  PyFrameObject* frame = PyEval_GetFrame();  // borrowed: the frame running the `with`
  if (frame == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "a traced `with` block needs a Python frame");
    return nullptr;
  }
  PyObject* capture = begin_capture(nullptr, reinterpret_cast<PyObject*>(frame));
  if (capture == nullptr) return nullptr;
  const int stored = PyObject_SetAttr(block, s_capture, capture);
  Py_DECREF(capture);
  if (stored < 0) return nullptr;
  PyObject* entered = _PyType_Lookup(Py_TYPE(block), s_entered);  // borrowed
  if (entered == g_default_entered) return Py_NewRef(block);
  return PyObject_CallMethodNoArgs(block, s_entered);
}

// CapturedBlock.__exit__(block, kind, error, traceback): runs the skipped body through
// block.run_block(body, capture), outside the handling of SkipBody: exceptions raised and
// caught inside the model (torch's Module.__getattr__ starts with one per parameter read)
// stay cheap. True when the body was ours; False lets a real error (or no capture) through.
PyObject* block_exit(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4) {
    PyErr_SetString(PyExc_TypeError, "__exit__(kind, error, traceback)");
    return nullptr;
  }
  PyObject* block = args[0];
  PyObject* capture = PyObject_GetAttr(block, s_capture);
  if (capture == nullptr) return nullptr;
  if (PyObject_SetAttr(block, s_capture, Py_None) < 0 || Py_TYPE(capture) != &CaptureType) {  // no frame <-> block cycle
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "__exit__ without __enter__");
    Py_DECREF(capture);
    return nullptr;
  }
  PyObject* skipped = capture_skipped(capture, args[1]);
  if (skipped != Py_True) {
    Py_DECREF(capture);
    return skipped;  // False, or nullptr
  }
  Py_DECREF(skipped);
  PyObject* body = capture_compile(capture, nullptr);
  PyObject* result = nullptr;
  if (body != nullptr) {
    PyObject *type, *value, *traceback;
    PyErr_GetExcInfo(&type, &value, &traceback);
    PyErr_SetExcInfo(nullptr, nullptr, nullptr);
    PyObject* call[] = {block, body, capture};
    result = PyObject_VectorcallMethod(s_run_block, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
    PyErr_SetExcInfo(type, value, traceback);  // steals the references GetExcInfo gave
    Py_DECREF(body);
  }
  Py_DECREF(capture);
  if (result != nullptr) {
    Py_DECREF(result);
    Py_RETURN_TRUE;
  }
  PyObject *type, *value, *traceback;  // not "during handling of" our SkipBody
  PyErr_Fetch(&type, &value, &traceback);
  PyErr_NormalizeException(&type, &value, &traceback);
  if (traceback != nullptr && value != nullptr) PyException_SetTraceback(value, traceback);
  PyObject* dropped = value != nullptr ? PyObject_CallFunctionObjArgs(g_drop_context, value, args[2], nullptr) : nullptr;
  if (dropped == nullptr) {
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return nullptr;
  }
  Py_DECREF(dropped);
  PyErr_Restore(type, value, traceback);
  return nullptr;
}

// configure_capture(find_site, SkipBody, LoopEnd, NOP, drop_context, default_entered)
PyObject* configure_capture(PyObject*, PyObject* args) {
  PyObject* find_site = nullptr;
  PyObject* skip_error = nullptr;
  PyObject* loop_end = nullptr;
  PyObject* drop_context = nullptr;
  PyObject* default_entered = nullptr;
  if (!PyArg_ParseTuple(args, "OOOiOO:configure_capture", &find_site, &skip_error, &loop_end, &g_nop, &drop_context,
                        &default_entered))
    return nullptr;
  Py_XSETREF(g_drop_context, Py_NewRef(drop_context));
  Py_XSETREF(g_default_entered, Py_NewRef(default_entered));
  Py_XSETREF(g_find_site, Py_NewRef(find_site));
  Py_XSETREF(g_skip_error, Py_NewRef(skip_error));
  set_loop_end(loop_end);
  Py_RETURN_NONE;
}

PyMethodDef capture_functions[] = {
    {"configure_capture", configure_capture, METH_VARARGS,
     "configure_capture(find_site, SkipBody, LoopEnd, NOP, drop_context, CapturedBlock.entered): what the "
     "capture uses (capture.py, at import)."},
    {"begin_capture", begin_capture, METH_O,
     "begin_capture(frame): arms the skip of the `with` body whose header runs in frame; returns the Capture."},
    {nullptr, nullptr, 0, nullptr}};


PyMethodDef block_enter_def = {"block_enter", block_enter, METH_O,
                                "CapturedBlock.__enter__: arms the capture of the calling frame's `with` body."};
PyMethodDef block_exit_def = {"block_exit", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(block_exit)),
                              METH_FASTCALL, "CapturedBlock.__exit__: runs the skipped body through run_block."};

}  // namespace

bool add_body_capture(PyObject* module) {
  g_sites = new std::unordered_map<SiteKey, Site, SiteKeyHash>();
  s_capture = PyUnicode_InternFromString("_capture");
  s_entered = PyUnicode_InternFromString("entered");
  s_run_block = PyUnicode_InternFromString("run_block");
  if (s_capture == nullptr || s_entered == nullptr || s_run_block == nullptr) return false;

  CaptureType.tp_name = "nnsight_fast._native.Capture";
  CaptureType.tp_basicsize = sizeof(CaptureObject);
  CaptureType.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC;
  CaptureType.tp_doc = "The capture of one `with` body (begin_capture): skipped(kind), compile().";
  CaptureType.tp_call = capture_call;
  CaptureType.tp_traverse = capture_traverse;
  CaptureType.tp_clear = capture_clear;
  CaptureType.tp_dealloc = capture_dealloc;
  CaptureType.tp_methods = capture_methods;
  CaptureType.tp_getset = capture_getset;

  return add_type(module, CaptureType, "Capture") &&
         PyModule_AddFunctions(module, capture_functions) == 0 && add_method_function(module, &block_enter_def) &&
         add_method_function(module, &block_exit_def);
}

}  // namespace nnsight_fast

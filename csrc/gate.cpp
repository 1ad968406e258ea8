#include "gate.h"

#include <structmember.h>

#include <vector>

#include "batch_values.h"
#include "handoff.h"
#include "module_objects.h"

namespace nnsight_fast {
namespace {

PyObject* g_abort_type = nullptr;

struct GateObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  PyObject* forward;         // Gate: the original forward when it is not a method of its module; else null
  PyObject* function;        // Gate: the original forward's function when it is a method of its module ...
  PyObject* module_ref;      // ... and a weak reference to that module (no module <-> Gate cycle)
  PyObject* owner;
  Dispatcher* dispatcher;
  int input_location;
  int output_location;
  int callee_location;       // SourceOp: where the callee itself can be read or replaced
  PyObject* source_forward;  // Gate: the forward rewritten for `.source` (run in every trace once built), or null
};

// A visit from a thread that runs no trace of this dispatcher: part of the running
// trace when the model is `threaded` (a thread pool in its forward), unless a body
// runs on this thread (a body's own calls are never traced).
inline TraceState* trace_of_other_thread(Dispatcher* dispatcher) {
  if (!dispatcher->threaded() || current_mediator() != nullptr) return nullptr;
  return dispatcher->trace_for_other_thread();
}

// The trace of `dispatcher` this visit belongs to: this thread's, or (threaded models) the
// one running on another thread; nullptr for an untraced call. While no trace of the
// dispatcher runs anywhere it reads no thread-local state.
inline TraceState* trace_of_visit(Dispatcher* dispatcher) {
  if (!dispatcher->running()) return nullptr;
  TraceState* trace = active_trace();
  if (trace != nullptr && trace->dispatcher() == dispatcher) return trace;
  return trace_of_other_thread(dispatcher);
}

// The module a split Gate's forward is bound to (borrowed), or nullptr with an error set.
PyObject* gate_module(GateObject* self) {
  PyObject* module = PyWeakref_GetObject(self->module_ref);
  if (module != Py_None) return module;
  PyErr_SetString(PyExc_ReferenceError, "the module of this forward no longer exists");
  return nullptr;
}

// The Gate's original forward as a callable (new reference).
PyObject* gate_forward(GateObject* self) {
  if (self->function == nullptr) return Py_NewRef(self->forward ? self->forward : Py_None);
  PyObject* module = gate_module(self);
  return module != nullptr ? PyMethod_New(self->function, module) : nullptr;
}

// Calls the original forward with a vectorcall argument vector.
PyObject* call_original(GateObject* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  if (self->function == nullptr) return PyObject_Vectorcall(self->forward, args, nargsf, kwnames);
  PyObject* module = gate_module(self);
  if (module == nullptr) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  const Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
  if (nargsf & PY_VECTORCALL_ARGUMENTS_OFFSET) {  // the slot before args[0] is ours to use
    PyObject** shifted = const_cast<PyObject**>(args) - 1;
    PyObject* saved = shifted[0];
    shifted[0] = module;
    PyObject* result = PyObject_Vectorcall(self->function, shifted, static_cast<size_t>(nargs + 1), kwnames);
    shifted[0] = saved;
    return result;
  }
  PyObject* small[16];
  std::vector<PyObject*> large;
  PyObject** with_self = small;
  if (total + 1 > 16) {
    large.resize(static_cast<size_t>(total + 1));
    with_self = large.data();
  }
  with_self[0] = module;
  for (Py_ssize_t i = 0; i < total; ++i) with_self[i + 1] = args[i];
  return PyObject_Vectorcall(self->function, with_self, static_cast<size_t>(nargs + 1), kwnames);
}

// (args, kwargs) from a vectorcall argument vector.
PyObject* pack_inputs(PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* positional = PyTuple_New(nargs);
  PyObject* keywords = PyDict_New();
  if (positional == nullptr || keywords == nullptr) {
    Py_XDECREF(positional);
    Py_XDECREF(keywords);
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < nargs; ++i) {
    Py_INCREF(args[i]);
    PyTuple_SET_ITEM(positional, i, args[i]);
  }
  const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    if (PyDict_SetItem(keywords, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
      Py_DECREF(positional);
      Py_DECREF(keywords);
      return nullptr;
    }
  }
  PyObject* pair = PyTuple_Pack(2, positional, keywords);
  Py_DECREF(positional);
  Py_DECREF(keywords);
  return pair;
}

// Calls `forward` with an (args, kwargs) pair the user may have replaced.
PyObject* call_with_inputs(PyObject* forward, PyObject* inputs) {
  if (!PyTuple_Check(inputs) || PyTuple_GET_SIZE(inputs) != 2) {
    PyErr_SetString(PyExc_TypeError, "`.inputs` must be assigned a pair (args: tuple, kwargs: dict)");
    return nullptr;
  }
  PyObject* args = PyTuple_GET_ITEM(inputs, 0);
  PyObject* kwargs = PyTuple_GET_ITEM(inputs, 1);
  PyObject* args_tuple = PySequence_Tuple(args);
  if (args_tuple == nullptr) return nullptr;
  if (kwargs != Py_None && !PyDict_Check(kwargs)) {
    Py_DECREF(args_tuple);
    PyErr_SetString(PyExc_TypeError, "`.inputs` must be assigned a pair (args: tuple, kwargs: dict)");
    return nullptr;
  }
  PyObject* out = PyObject_Call(forward, args_tuple, kwargs == Py_None ? nullptr : kwargs);
  Py_DECREF(args_tuple);
  return out;
}

// The module's output when mediators asked to skip it. Without batch narrowing the
// (last) skip value is the output and the module does not run. With several
// invokes a skip covers only its invoke's rows: the module runs on the batch and
// each skip value replaces its invoke's rows.
PyObject* apply_skips(PyObject* forward, TraceState* trace, PyObject* inputs, std::vector<SkipRequest>& skips) {
  PyObject* result = nullptr;
  if (!trace->narrows()) {
    result = skips.back().value;
    Py_INCREF(result);
  } else {
    result = call_with_inputs(forward, inputs);
    for (const SkipRequest& skip : skips) {
      if (result == nullptr) break;
      const MediatorSlot& slot = trace->mediator(skip.mediator);
      if (slot.row_count < 0) {
        Py_SETREF(result, (Py_INCREF(skip.value), skip.value));
      } else {
        Py_SETREF(result, widen_value(result, skip.value, slot, trace->batch_size()));
      }
    }
  }
  for (SkipRequest& skip : skips) Py_DECREF(skip.value);
  skips.clear();
  return result;
}

PyObject* gate_traced(GateObject* self, PyObject* forward, TraceState* trace, PyObject* const* args, size_t nargsf,
                      PyObject* kwnames) {
  const int64_t in_occurrence = trace->visit(self->input_location);
  auto* in_hook = static_cast<PyObject*>(self->dispatcher->has_hooks() ? self->dispatcher->hook(self->input_location)
                                                                       : nullptr);
  PyObject* result;
  if (in_hook != nullptr || trace->wanted(self->input_location)) {
    PyObject* inputs = pack_inputs(args, nargsf, kwnames);
    if (inputs == nullptr) return nullptr;
    if (in_hook != nullptr) Py_SETREF(inputs, PyObject_CallOneArg(in_hook, inputs));
    if (inputs == nullptr) return nullptr;
    std::vector<SkipRequest> skips;
    PyObject* served = serve_location(trace, self->input_location, in_occurrence, inputs, &skips);
    Py_DECREF(inputs);
    if (served == nullptr) return nullptr;
    PyObject* callable = forward != nullptr ? Py_NewRef(forward) : gate_forward(self);
    if (callable == nullptr) {
      Py_DECREF(served);
      return nullptr;
    }
    result = skips.empty() ? call_with_inputs(callable, served) : apply_skips(callable, trace, served, skips);
    Py_DECREF(callable);
    Py_DECREF(served);
  } else if (forward == Py_None && PyVectorcall_NARGS(nargsf) == 1) {
    result = args[0];  // an assignment operation: its "call" passes the value through
    Py_INCREF(result);
  } else {
    result = forward != nullptr ? PyObject_Vectorcall(forward, args, nargsf, kwnames)
                                : call_original(self, args, nargsf, kwnames);
  }
  if (result == nullptr) return nullptr;
  if (self->dispatcher->has_hooks()) {
    if (auto* out_hook = static_cast<PyObject*>(self->dispatcher->hook(self->output_location))) {
      Py_SETREF(result, PyObject_CallOneArg(out_hook, result));
      if (result == nullptr) return nullptr;
    }
  }

  const int64_t out_occurrence = trace->visit(self->output_location);
  if (trace->wanted(self->output_location)) {
    PyObject* served = serve_location(trace, self->output_location, out_occurrence, result, nullptr);
    Py_DECREF(result);
    return served;
  }
  return result;
}

// Outside a trace, with HookHandler hooks on this dispatcher.
PyObject* gate_hooked(GateObject* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* in_hook = static_cast<PyObject*>(self->dispatcher->hook(self->input_location));
  auto* out_hook = static_cast<PyObject*>(self->dispatcher->hook(self->output_location));
  PyObject* result;
  if (in_hook != nullptr) {
    PyObject* inputs = pack_inputs(args, nargsf, kwnames);
    if (inputs != nullptr) Py_SETREF(inputs, PyObject_CallOneArg(in_hook, inputs));
    if (inputs == nullptr) return nullptr;
    PyObject* callable = gate_forward(self);
    result = callable != nullptr ? call_with_inputs(callable, inputs) : nullptr;
    Py_XDECREF(callable);
    Py_DECREF(inputs);
  } else {
    result = call_original(self, args, nargsf, kwnames);
  }
  if (result != nullptr && out_hook != nullptr) Py_SETREF(result, PyObject_CallOneArg(out_hook, result));
  return result;
}

PyObject* gate_vectorcall(PyObject* callable, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* self = reinterpret_cast<GateObject*>(callable);
  TraceState* trace = trace_of_visit(self->dispatcher);
  if (trace == nullptr) {
    if (self->dispatcher->has_hooks()) return gate_hooked(self, args, nargsf, kwnames);
    return call_original(self, args, nargsf, kwnames);
  }
  // nullptr: the Gate's own forward
  // Once a module's `.source` exists, traces run its rewritten forward: whether a body will
  // ask for one of its operations is not known when the module starts.
  PyObject* forward = self->source_forward;
  return gate_traced(self, forward, trace, args, nargsf, kwnames);
}

// A SourceOp is called as op(callee, *args, **kwargs) from a forward rewritten for
// `.source`: one operation of that forward, with its own locations.
PyObject* source_op_vectorcall(PyObject* callable, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* self = reinterpret_cast<GateObject*>(callable);
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs < 1) {
    PyErr_SetString(PyExc_TypeError, "a source operation needs its callee");
    return nullptr;
  }
  const size_t rest = static_cast<size_t>(nargs - 1) | PY_VECTORCALL_ARGUMENTS_OFFSET;
  TraceState* trace = trace_of_visit(self->dispatcher);
  if (trace == nullptr) {
    if (args[0] == Py_None && nargs == 2) return Py_NewRef(args[1]);
    return PyObject_Vectorcall(args[0], args + 1, rest, kwnames);
  }
  PyObject* callee = args[0];
  Py_INCREF(callee);
  const int64_t occurrence = trace->visit(self->callee_location);
  if (trace->wanted(self->callee_location)) {
    Py_SETREF(callee, serve_location(trace, self->callee_location, occurrence, callee, nullptr));
    if (callee == nullptr) return nullptr;
  }
  PyObject* result = gate_traced(self, callee, trace, args + 1, rest, kwnames);
  Py_DECREF(callee);
  return result;
}

int gate_traverse(PyObject* self, visitproc visit, void* arg) {
  auto* gate = reinterpret_cast<GateObject*>(self);
  Py_VISIT(gate->forward);
  Py_VISIT(gate->function);
  Py_VISIT(gate->module_ref);
  Py_VISIT(gate->owner);
  Py_VISIT(gate->source_forward);
  return 0;
}

int gate_clear(PyObject* self) {
  auto* gate = reinterpret_cast<GateObject*>(self);
  Py_CLEAR(gate->forward);
  Py_CLEAR(gate->function);
  Py_CLEAR(gate->module_ref);
  Py_CLEAR(gate->owner);
  Py_CLEAR(gate->source_forward);
  return 0;
}

void gate_dealloc(PyObject* self) {
  PyObject_GC_UnTrack(self);
  gate_clear(self);
  Py_TYPE(self)->tp_free(self);
}

PyObject* gate_repr(PyObject* self) {
  PyObject* forward = gate_forward(reinterpret_cast<GateObject*>(self));
  if (forward == nullptr) return nullptr;
  PyObject* text = PyUnicode_FromFormat("<nnsight_fast Gate over %R>", forward);
  Py_DECREF(forward);
  return text;
}

// A Gate stands in for a bound method: expose what callers look for on one.
PyObject* gate_getattro(PyObject* self, PyObject* name) {
  PyObject* found = PyObject_GenericGetAttr(self, name);
  if (found != nullptr || !PyErr_ExceptionMatches(PyExc_AttributeError)) return found;
  PyErr_Clear();
  PyObject* forward = gate_forward(reinterpret_cast<GateObject*>(self));
  if (forward == nullptr) return nullptr;
  found = PyObject_GetAttr(forward, name);
  Py_DECREF(forward);
  return found;
}

// Copying or pickling a wrapped module copies its original forward, not the Gate
// (see nnsight_fast/gate_copy.py).
PyObject* gate_reduce(PyObject* self, PyObject*) {
  PyObject* module = PyImport_ImportModule("nnsight_fast.gate_copy");
  if (module == nullptr) return nullptr;
  PyObject* restore = PyObject_GetAttrString(module, "restore_forward");
  Py_DECREF(module);
  if (restore == nullptr) return nullptr;
  PyObject* forward = gate_forward(reinterpret_cast<GateObject*>(self));
  if (forward == nullptr) {
    Py_DECREF(restore);
    return nullptr;
  }
  return Py_BuildValue("(N(N))", restore, forward);
}

PyObject* gate_reduce_ex(PyObject* self, PyObject*) { return gate_reduce(self, nullptr); }

PyMethodDef gate_methods[] = {
    {"__reduce__", gate_reduce, METH_NOARGS, "copy/pickle as the original forward"},
    {"__reduce_ex__", gate_reduce_ex, METH_O, "copy/pickle as the original forward"},
    {nullptr, nullptr, 0, nullptr}};

PyObject* gate_get_forward(PyObject* self, void*) { return gate_forward(reinterpret_cast<GateObject*>(self)); }

PyGetSetDef gate_getset[] = {
    {"forward", gate_get_forward, nullptr, "the original forward", nullptr},
    {"__wrapped__", gate_get_forward, nullptr, "for inspect.signature", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyMemberDef gate_members[] = {
    {"input_location", T_INT, offsetof(GateObject, input_location), READONLY, "location id of the input"},
    {"output_location", T_INT, offsetof(GateObject, output_location), READONLY, "location id of the output"},
    {nullptr, 0, 0, 0, nullptr}};

PyTypeObject GateType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject SourceOpType = {PyVarObject_HEAD_INIT(nullptr, 0)};

GateObject* alloc_gate(PyTypeObject* type, vectorcallfunc call, PyObject* forward, PyObject* owner,
                       Dispatcher* dispatcher, int input_location, int output_location, int callee_location) {
  auto* gate = PyObject_GC_New(GateObject, type);
  if (gate == nullptr) return nullptr;
  gate->vectorcall = call;
  gate->forward = nullptr;
  gate->function = nullptr;
  gate->module_ref = nullptr;
  // A method of a module: keep its function and a weak reference to the module, so the
  // module (which holds this Gate in its __dict__) is freed by reference counting.
  PyObject* module_ref = forward != nullptr && PyMethod_Check(forward)
                             ? PyWeakref_NewRef(PyMethod_GET_SELF(forward), nullptr)
                             : nullptr;
  if (module_ref != nullptr) {
    gate->function = Py_NewRef(PyMethod_GET_FUNCTION(forward));
    gate->module_ref = module_ref;
  } else {
    PyErr_Clear();
    gate->forward = Py_XNewRef(forward);
  }
  Py_INCREF(owner);
  gate->owner = owner;
  gate->dispatcher = dispatcher;
  gate->input_location = input_location;
  gate->output_location = output_location;
  gate->callee_location = callee_location;
  gate->source_forward = nullptr;
  PyObject_GC_Track(gate);
  return gate;
}

}  // namespace

namespace {

// The fields Gate and SourceOp share: a GC-tracked object called through vectorcall.
void fill_callable_type(PyTypeObject& type, const char* name, const char* doc) {
  type.tp_name = name;
  type.tp_doc = doc;
  type.tp_basicsize = sizeof(GateObject);
  type.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL;
  type.tp_vectorcall_offset = offsetof(GateObject, vectorcall);
  type.tp_call = PyVectorcall_Call;
  type.tp_traverse = gate_traverse;
  type.tp_clear = gate_clear;
  type.tp_dealloc = gate_dealloc;
}


}  // namespace

bool add_gate_type(PyObject* module) {
  fill_callable_type(GateType, "nnsight_fast._native.Gate",
                     "A module's forward, routed through the nnsight_fast dispatcher.");
  GateType.tp_repr = gate_repr;
  GateType.tp_getattro = gate_getattro;
  GateType.tp_members = gate_members;
  GateType.tp_getset = gate_getset;
  GateType.tp_methods = gate_methods;
  fill_callable_type(SourceOpType, "nnsight_fast._native.SourceOp",
                     "One operation of a forward rewritten for `.source`: op(callee, *args, **kwargs).");
  return add_type(module, GateType, "Gate") && add_type(module, SourceOpType, "SourceOp");
}

PyObject* new_source_op(PyObject* owner, Dispatcher* dispatcher, int callee_location, int input_location,
                        int output_location) {
  return reinterpret_cast<PyObject*>(alloc_gate(&SourceOpType, source_op_vectorcall, nullptr, owner, dispatcher,
                                                input_location, output_location, callee_location));
}

void set_location_hook(Dispatcher* dispatcher, int location, PyObject* hook) {
  Py_XINCREF(hook);
  Py_XDECREF(static_cast<PyObject*>(dispatcher->set_hook(location, hook)));
}

bool set_gate_source(PyObject* gate, PyObject* source_forward) {
  if (!is_gate(gate)) {
    PyErr_SetString(PyExc_TypeError, "not a Gate");
    return false;
  }
  auto* self = reinterpret_cast<GateObject*>(gate);
  Py_XINCREF(source_forward);
  Py_XSETREF(self->source_forward, source_forward);
  return true;
}

PyObject* new_gate(PyObject* forward, PyObject* owner, Dispatcher* dispatcher, int input_location,
                   int output_location) {
  return reinterpret_cast<PyObject*>(alloc_gate(&GateType, gate_vectorcall, forward, owner, dispatcher,
                                                input_location, output_location, -1));
}

bool is_gate(PyObject* object) { return Py_TYPE(object) == &GateType; }

void set_abort_type(PyObject* type) {
  Py_XINCREF(type);
  Py_XSETREF(g_abort_type, type);
}

bool resume_released(TraceState* trace) {
  int index;
  while (trace->take_released(index)) {
    const Outcome outcome = trace->mediator(index).handoff->serve(Py_None);
    if (outcome == Outcome::Error) return false;
    if (outcome == Outcome::Failed && trace->failures_abort()) {
      PyErr_SetNone(g_abort_type ? g_abort_type : PyExc_RuntimeError);
      return false;
    }
  }
  return true;
}

namespace {

// Serves one mediator; returns false with an error set when it failed.
bool serve_one(TraceState* trace, int location, int index, PyObject*& current, std::vector<SkipRequest>* skips) {
  const MediatorSlot& slot = trace->mediator(index);
  Handoff* handoff = slot.handoff;
  if (!handoff->serves_this_thread()) {
    const std::string name = trace->dispatcher()->name(location);
    PyErr_Format(PyExc_RuntimeError,
                 "`%s` was reached on another OS thread (the model runs it from a thread pool?), but this "
                 "invoke's body runs on the trace's thread and cannot be served from there: wrap the model "
                 "with `NNsight(module, threaded=True)` (or set `model.threaded = True`) so bodies run on "
                 "worker threads that any thread can serve",
                 name.c_str());
    return false;
  }
  const bool narrowed = trace->narrows() && slot.row_count >= 0;
  const int64_t batch = trace->batch_size();
  PyObject* view = narrowed ? narrow_value(current, slot, batch) : (Py_INCREF(current), current);
  if (view == nullptr) return false;
  const Outcome outcome = handoff->serve(view);
  Py_DECREF(view);
  if (outcome == Outcome::Error) return false;
  PyObject* swap = handoff->take_swap();
  if (swap != nullptr) {
    PyObject* widened = narrowed ? widen_value(current, swap, slot, batch) : (Py_INCREF(swap), swap);
    Py_DECREF(swap);
    if (widened == nullptr) return false;
    Py_SETREF(current, widened);
  }
  PyObject* skipped = handoff->take_skip();
  if (skipped != nullptr) {
    if (skips != nullptr) {
      skips->push_back(SkipRequest{index, skipped});
    } else {
      Py_DECREF(skipped);
    }
  }
  if (outcome == Outcome::Failed && trace->failures_abort()) {
    PyErr_SetNone(g_abort_type ? g_abort_type : PyExc_RuntimeError);
    return false;
  }
  return true;
}

}  // namespace

PyObject* serve_location(TraceState* trace, int location, int64_t occurrence, PyObject* value,
                         std::vector<SkipRequest>* skips) {
  std::vector<int> ready;
  Py_INCREF(value);
  PyObject* current = value;
  trace->set_serving(location, occurrence);
  bool ok = true;
  // Mediators a barrier releases meanwhile may ask for this same value: keep going
  // until nobody waits here any more.
  for (;;) {
    trace->take(location, occurrence, ready);
    if (ready.empty()) break;
    for (int index : ready) {
      ok = serve_one(trace, location, index, current, skips) && resume_released(trace);
      if (!ok) break;
    }
    if (!ok) break;
  }
  trace->set_serving(-1, -1);
  if (ok) {
    trace->for_each_observer(location, [&](void* opaque) {
      if (!ok) return;
      auto* observer = static_cast<CacheObserver*>(opaque);
      PyObject* seen = current;
      Py_INCREF(seen);
      if (observer->mediator >= 0 && trace->narrows() && trace->mediator(observer->mediator).row_count >= 0)
        Py_SETREF(seen, narrow_value(seen, trace->mediator(observer->mediator), trace->batch_size()));
      PyObject* copied = seen ? copy_value(seen, observer->spec) : nullptr;
      Py_XDECREF(seen);
      ok = copied != nullptr && PyList_Append(observer->sink, copied) == 0;
      Py_XDECREF(copied);
    });
  }
  if (!ok) {
    Py_DECREF(current);
    if (skips != nullptr) {
      for (SkipRequest& skip : *skips) Py_DECREF(skip.value);
      skips->clear();
    }
    return nullptr;
  }
  return current;
}

}  // namespace nnsight_fast

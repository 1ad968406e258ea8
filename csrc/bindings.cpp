// The Python face of the native core: `nnsight_fast._native`.
//
//   d = _native.Dispatcher(); loc = d.intern("model.fc1.output")
//   module.__dict__["forward"] = _native.make_gate(module.forward, d, in_loc, out_loc)
//   trace = _native.Trace(d); trace.add_mediator(_native.GreenletHandoff(), 0, -1); trace.activate()
//
// The only translation unit that includes pybind11; the logic lives in the other files.
#include <torch/csrc/Dtype.h>
#include <torch/csrc/utils/pybind.h>

#include <frameobject.h>

#include <memory>
#include <optional>

#include "dispatcher.h"
#include "batch_values.h"
#include "body_request.h"
#include "gate.h"
#include "module_call.h"
#include "body_capture.h"
#include "captured_body.h"
#include "frame_write_back.h"
#include "body_job.h"
#include "saving.h"
#include "fall_through.h"
#include "greenlet_handoff.h"
#include "thread_handoff.h"
#include "save_mount.h"

namespace py = pybind11;
using namespace nnsight_fast;

namespace {

// A TraceState plus what Python needs around it: the handoffs it serves (kept alive
// here) and the trace that was active before it on this thread.
struct Trace {
  explicit Trace(py::object dispatcher_object)
      : dispatcher(std::move(dispatcher_object)), state(dispatcher.cast<Dispatcher*>()) {}
  py::object dispatcher;  // kept alive while the trace lives (its state points into it)
  TraceState state;
  std::vector<py::object> handoffs;
  std::vector<py::object> sinks;
  std::vector<std::unique_ptr<CacheObserver>> observers;
  TraceState* previous = nullptr;
  bool active = false;
};

py::object steal_or_throw(PyObject* value) {
  if (value == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(value);
}

// `park(handoff)` and `mediator_request(mediator, location, occurrence)`: the body gives the
// turn back until served. Plain CPython functions, not pybind11 ones: pybind11 keeps a
// per-thread stack of call frames that must unwind in order, and a greenlet switch
// made inside one of its calls would interleave them.
PyTypeObject* g_greenlet_handoff_type = nullptr;  // set once the class is registered

// The C++ object of a pybind11 instance of exactly `type`, without pybind11's cast
// machinery (a simple-layout instance holds the object's pointer directly); nullptr otherwise.
template <typename T>
T* held_by(PyObject* object, PyTypeObject* type) {
  if (Py_TYPE(object) != type) return nullptr;
  auto* instance = reinterpret_cast<py::detail::instance*>(object);
  return instance->simple_layout ? static_cast<T*>(instance->simple_value_holder[0]) : nullptr;
}

Handoff* as_handoff(PyObject* object) {
  if (GreenletHandoff* handoff = held_by<GreenletHandoff>(object, g_greenlet_handoff_type)) return handoff;
  try {  // a ThreadHandoff
    return py::handle(object).cast<Handoff*>();
  } catch (const py::cast_error&) {
    PyErr_SetString(PyExc_TypeError, "expected a Handoff");
    return nullptr;
  }
}

PyObject* mediator_request_function(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) {
    PyErr_SetString(PyExc_TypeError, "mediator_request(mediator, location, occurrence)");
    return nullptr;
  }
  const long location = PyLong_AsLong(args[1]);
  const long long occurrence = PyLong_AsLongLong(args[2]);
  if (PyErr_Occurred()) return nullptr;
  return mediator_request(args[0], static_cast<int>(location), occurrence);
}

PyObject* occurrence_of_function(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "occurrence_of(mediator, path)");
    return nullptr;
  }
  const int64_t occurrence = occurrence_of(args[0], args[1]);
  return occurrence < 0 && PyErr_Occurred() ? nullptr : PyLong_FromLongLong(occurrence);
}

PyObject* park(PyObject*, PyObject* handoff) {
  Handoff* native = as_handoff(handoff);
  return native != nullptr ? native->park() : nullptr;
}

PyObject* waiting(PyObject*, PyObject* handoff) {
  Handoff* native = as_handoff(handoff);
  if (native == nullptr) return nullptr;
  if (native->waiting_location() < 0) Py_RETURN_NONE;
  return Py_BuildValue("(iL)", native->waiting_location(), static_cast<long long>(native->waiting_occurrence()));
}

PyObject* current_mediator_function(PyObject*, PyObject*) {
  PyObject* mediator = current_mediator();
  return Py_NewRef(mediator != nullptr ? mediator : Py_None);
}

PyObject* set_current_mediator_function(PyObject*, PyObject* mediator) {
  set_current_mediator(mediator == Py_None ? nullptr : mediator);  // borrowed: the body's job holds it
  Py_RETURN_NONE;
}

// batch_size(args, kwargs): dim 0 of the first tensor with a dimension among a call's inputs (1: none).
PyObject* batch_size_function(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "batch_size(args, kwargs)");
    return nullptr;
  }
  const int64_t size = inputs_batch_size(args[0], args[1]);
  return size < 0 ? nullptr : PyLong_FromLongLong(size);
}

PyMethodDef raw_functions[] = {
    {"batch_size", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(batch_size_function)), METH_FASTCALL,
     "batch_size(args, kwargs): dim 0 of the first tensor with a dimension among a call's inputs (1: none)."},
    {"current_mediator", current_mediator_function, METH_NOARGS,
     "The mediator whose body runs on this thread (None outside bodies)."},
    {"set_current_mediator", set_current_mediator_function, METH_O,
     "Sets the mediator of the body running on this thread (its job does, at start and end)."},
    {"mediator_request", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(mediator_request_function)),
     METH_FASTCALL, "mediator_request(mediator, location, occurrence): Mediator.request, in C (body_request.h)."},
    {"occurrence_of", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(occurrence_of_function)),
     METH_FASTCALL, "occurrence_of(mediator, path): the call of `path` the mediator's next request binds to."},
    {"park", park, METH_O, "park(handoff): the body waits until the model side serves or resumes it."},
    {"waiting", waiting, METH_O, "waiting(handoff): the (location, occurrence) the body is parked on, or None."},
    {nullptr, nullptr, 0, nullptr}};

Outcome or_throw(Outcome outcome) {
  if (outcome == Outcome::Error) throw py::error_already_set();
  return outcome;
}

}  // namespace

Handoff* nnsight_fast::handoff_of(PyObject* object) { return as_handoff(object); }

namespace {

// The hot methods of Trace and Handoff as plain CPython methods: a pybind11 call costs
// ~0.5 k instructions in argument casting and type lookups, and a trace makes a dozen.
PyTypeObject* g_trace_type = nullptr;  // set once the class is registered

Trace* as_trace(PyObject* object) {
  Trace* trace = held_by<Trace>(object, g_trace_type);
  if (trace == nullptr) PyErr_SetString(PyExc_TypeError, "expected a Trace");
  return trace;
}

bool expect_args(Py_ssize_t nargs, Py_ssize_t wanted, const char* usage) {
  if (nargs == wanted) return true;
  PyErr_Format(PyExc_TypeError, "%s", usage);
  return false;
}

PyObject* trace_set_batch(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  Trace* trace = as_trace(self);
  if (trace == nullptr || !expect_args(nargs, 2, "set_batch(size, input_invokes)")) return nullptr;
  const long long size = PyLong_AsLongLong(args[0]);
  const long invokes = PyLong_AsLong(args[1]);
  if (PyErr_Occurred()) return nullptr;
  trace->state.set_batch(size, static_cast<int>(invokes));
  Py_RETURN_NONE;
}

PyObject* trace_add_mediator(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  Trace* trace = as_trace(self);
  if (trace == nullptr || !expect_args(nargs, 3, "add_mediator(handoff, row_start, row_count)")) return nullptr;
  Handoff* handoff = as_handoff(args[0]);
  const long long row_start = PyLong_AsLongLong(args[1]);
  const long long row_count = PyLong_AsLongLong(args[2]);
  if (handoff == nullptr || PyErr_Occurred()) return nullptr;
  trace->handoffs.push_back(py::reinterpret_borrow<py::object>(args[0]));
  const int index = trace->state.add_mediator(MediatorSlot{handoff, row_start, row_count});
  handoff->attach(&trace->state, index);
  return PyLong_FromLong(index);
}

PyObject* trace_activate(PyObject* self, PyObject*) {
  Trace* trace = as_trace(self);
  if (trace == nullptr) return nullptr;
  if (trace->active) {
    PyErr_SetString(PyExc_ValueError, "this trace is already running");
    return nullptr;
  }
  trace->previous = set_active_trace(&trace->state);
  trace->state.dispatcher()->trace_started(&trace->state);
  trace->active = true;
  Py_RETURN_NONE;
}

void deactivate(Trace* trace) {
  if (!trace->active) return;
  set_active_trace(trace->previous);
  trace->state.dispatcher()->trace_ended(&trace->state);
  trace->previous = nullptr;
  trace->active = false;
}

PyObject* trace_deactivate(PyObject* self, PyObject*) {
  Trace* trace = as_trace(self);
  if (trace == nullptr) return nullptr;
  deactivate(trace);
  Py_RETURN_NONE;
}

PyObject* trace_reset(PyObject* self, PyObject*) {
  Trace* trace = as_trace(self);
  if (trace == nullptr) return nullptr;
  deactivate(trace);  // a run that failed before its own deactivate
  trace->state.reset();
  trace->handoffs.clear();
  trace->sinks.clear();
  trace->observers.clear();
  Py_RETURN_NONE;
}

PyObject* trace_resume_released(PyObject* self, PyObject*) {
  Trace* trace = as_trace(self);
  if (trace == nullptr || !resume_released(&trace->state)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* trace_serve(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  Trace* trace = as_trace(self);
  if (trace == nullptr || !expect_args(nargs, 2, "serve(location, value)")) return nullptr;
  const long location = PyLong_AsLong(args[0]);
  if (PyErr_Occurred()) return nullptr;
  const int64_t occurrence = trace->state.visit(static_cast<int>(location));
  if (!trace->state.wanted(static_cast<int>(location))) return Py_NewRef(args[1]);
  return serve_location(&trace->state, static_cast<int>(location), occurrence, args[1], nullptr);
}

PyObject* trace_parked(PyObject* self, void*) {
  Trace* trace = as_trace(self);
  if (trace == nullptr) return nullptr;
  long parked = 0;
  for (int i = 0; i < trace->state.mediator_count(); ++i) parked += trace->state.mediator(i).handoff->busy() ? 1 : 0;
  return PyLong_FromLong(parked);
}

PyObject* handoff_start(PyObject* self, PyObject* job) {
  Handoff* handoff = as_handoff(self);
  if (handoff == nullptr) return nullptr;
  const Outcome outcome = handoff->start(job);
  if (outcome == Outcome::Error) return nullptr;
  return PyBool_FromLong(outcome == Outcome::Failed);
}

PyObject* handoff_cancel(PyObject* self, PyObject*) {
  Handoff* handoff = as_handoff(self);
  if (handoff == nullptr || handoff->cancel() == Outcome::Error) return nullptr;
  Py_RETURN_NONE;
}

PyObject* handoff_busy(PyObject* self, void*) {
  Handoff* handoff = as_handoff(self);
  return handoff != nullptr ? PyBool_FromLong(handoff->busy()) : nullptr;
}

PyMethodDef trace_methods[] = {
    {"set_batch", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(trace_set_batch)), METH_FASTCALL,
     "set_batch(size, input_invokes): the batch's rows and how many invokes brought inputs."},
    {"add_mediator", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(trace_add_mediator)), METH_FASTCALL,
     "add_mediator(handoff, row_start, row_count): a body served by this trace; returns its index."},
    {"activate", trace_activate, METH_NOARGS, "Makes this trace the one its model's gates serve on this thread."},
    {"deactivate", trace_deactivate, METH_NOARGS, "Ends activate() (puts back the trace active before)."},
    {"resume_released", trace_resume_released, METH_NOARGS, "Resumes the bodies a barrier released."},
    {"reset", trace_reset, METH_NOARGS,
     "Drops what the run held (its bodies' handoffs, cache sinks) and readies the trace for another run."},
    {"serve", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(trace_serve)), METH_FASTCALL,
     "serve(location, value): the model reached a location that is not a module call (e.g. the traced call's "
     "result); returns the value, edited."},
    {nullptr, nullptr, 0, nullptr}};

PyMethodDef handoff_methods[] = {
    {"start", handoff_start, METH_O, "start(job): runs job() until the body parks or ends; True when it failed."},
    {"cancel", handoff_cancel, METH_NOARGS, "Makes the parked body's wait raise Cancelled; returns when it parks or ends."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef trace_parked_getset = {"parked", trace_parked, nullptr,
                                   "How many of this trace's bodies are parked (have not ended).", nullptr};

PyObject* handoff_requests_made(PyObject* self, void*) {
  Handoff* handoff = as_handoff(self);
  return handoff != nullptr ? PyLong_FromLongLong(handoff->requests_made()) : nullptr;
}

PyGetSetDef handoff_busy_getset = {"busy", handoff_busy, nullptr, "True while the body is parked (it has not ended).",
                                   nullptr};
PyGetSetDef handoff_requests_made_getset = {"requests_made", handoff_requests_made, nullptr,
                                            "How many values the attached body has asked for.", nullptr};

// Installs plain CPython methods on a pybind11 class (replacing any of the same name).
void add_raw_methods(py::handle cls, PyMethodDef* methods) {
  auto* type = reinterpret_cast<PyTypeObject*>(cls.ptr());
  for (PyMethodDef* method = methods; method->ml_name != nullptr; ++method) {
    PyObject* descriptor = PyDescr_NewMethod(type, method);
    if (descriptor == nullptr || PyObject_SetAttrString(cls.ptr(), method->ml_name, descriptor) < 0) {
      Py_XDECREF(descriptor);
      throw py::error_already_set();
    }
    Py_DECREF(descriptor);
  }
}

void add_raw_getter(py::handle cls, PyGetSetDef* getter) {
  PyObject* descriptor = PyDescr_NewGetSet(reinterpret_cast<PyTypeObject*>(cls.ptr()), getter);
  if (descriptor == nullptr || PyObject_SetAttrString(cls.ptr(), getter->name, descriptor) < 0) {
    Py_XDECREF(descriptor);
    throw py::error_already_set();
  }
  Py_DECREF(descriptor);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "nnsight_fast native core: gates, dispatcher, mediator handoff, batching";
  m.attr("TORCH_VERSION") = NNSIGHT_FAST_TORCH_VERSION;

  if (!add_gate_type(m.ptr()) || !add_module_call_type(m.ptr()) || !add_value_read_type(m.ptr()) || !add_captured_body_type(m.ptr()) || !add_body_capture(m.ptr()) || !add_frame_write_back(m.ptr()) || !add_body_job(m.ptr()) || !add_saving(m.ptr()) || !add_fall_through_type(m.ptr()) || !init_greenlet_handoff() || PyModule_AddFunctions(m.ptr(), raw_functions) < 0)
    throw py::error_already_set();

  py::class_<Dispatcher>(m, "Dispatcher")
      .def(py::init<>())
      .def("intern", &Dispatcher::intern, "The location id of a name (created on first use).")
      .def("name", &Dispatcher::name)
      .def("__len__", &Dispatcher::size)
      .def_property_readonly("running", &Dispatcher::running, "True while a trace of this dispatcher runs.")
      .def_property("threaded", &Dispatcher::threaded, &Dispatcher::set_threaded,
                    "True when the model runs modules on other OS threads (see NNsight(threaded=True)).");

  m.def(
      "make_gate",
      [](py::object forward, py::object dispatcher, int input_location, int output_location) {
        auto* native = dispatcher.cast<Dispatcher*>();
        return steal_or_throw(new_gate(forward.ptr(), dispatcher.ptr(), native, input_location, output_location));
      },
      "A Gate to install as `module.forward`.");
  m.def("is_gate", [](py::handle object) { return is_gate(object.ptr()); });
  m.def("make_source_op", [](py::object dispatcher, int callee_location, int input_location, int output_location) {
    auto* native = dispatcher.cast<Dispatcher*>();
    return steal_or_throw(new_source_op(dispatcher.ptr(), native, callee_location, input_location, output_location));
  });
  m.def("set_location_hook", [](Dispatcher& dispatcher, int location, py::object hook) {
    set_location_hook(&dispatcher, location, hook.is_none() ? nullptr : hook.ptr());
  });
  m.def("set_gate_source", [](py::object gate, py::object source_forward) {
    if (!set_gate_source(gate.ptr(), source_forward.is_none() ? nullptr : source_forward.ptr()))
      throw py::error_already_set();
  });

  py::class_<Handoff> handoff_class(m, "Handoff");
  handoff_class.def("serve", [](Handoff& h, py::object value) { or_throw(h.serve(value.ptr())); })
      .def("set_swap", [](Handoff& h, py::object value) { h.set_swap(value.ptr()); })
      .def("set_skip", [](Handoff& h, py::object value) { h.set_skip(value.ptr()); });
  add_raw_methods(handoff_class, handoff_methods);
  add_raw_getter(handoff_class, &handoff_busy_getset);
  add_raw_getter(handoff_class, &handoff_requests_made_getset);
  py::class_<GreenletHandoff, Handoff> greenlet_handoff(m, "GreenletHandoff",
                                                       "A body as a greenlet on the model's thread.");
  greenlet_handoff.def(py::init<>());
  g_greenlet_handoff_type = reinterpret_cast<PyTypeObject*>(greenlet_handoff.ptr());
  py::class_<ThreadHandoff, Handoff>(m, "ThreadHandoff", "A body on a worker thread, served from any thread.")
      .def(py::init<>())
      .def("stop", &ThreadHandoff::stop)
      .def("next_job", [](ThreadHandoff& h) { return steal_or_throw(h.next_job()); })
      .def("finish_and_next",
           [](ThreadHandoff& h, bool failed) { return steal_or_throw(h.finish_and_next(failed)); });

  py::class_<Trace> trace_class(m, "Trace");
  trace_class.def(py::init<py::object>())
      .def("visits", [](Trace& t, int location) { return t.state.visits(location); })
      .def(
          "visit_counts",
          [](Trace& t) {
            std::vector<int64_t> counts(static_cast<size_t>(t.state.dispatcher()->size()));
            for (size_t i = 0; i < counts.size(); ++i) counts[i] = t.state.visits(static_cast<int>(i));
            return counts;
          },
          "How many times the model has reached each location so far (indexed by location).")
      .def("name", [](Trace& t, int location) { return t.state.dispatcher()->name(location); })
      .def(
          "add_cache_observer",
          [](Trace& t, int location, py::list sink, bool detach, std::optional<c10::Device> device, py::object dtype,
             int mediator) {
            std::optional<c10::ScalarType> scalar;
            if (!dtype.is_none()) {
              if (!THPDtype_Check(dtype.ptr())) throw py::type_error("dtype must be a torch.dtype or None");
              scalar = reinterpret_cast<THPDtype*>(dtype.ptr())->scalar_type;
            }
            t.sinks.push_back(sink);
            t.observers.push_back(std::make_unique<CacheObserver>(CacheObserver{sink.ptr(), {detach, device, scalar}, mediator}));
            t.state.add_observer(location, t.observers.back().get());
          },
          "Appends a copy of every value `location` takes (after edits) to `sink`.")
      .def("release", [](Trace& t, int mediator) { t.state.release(mediator); })
      .def(
          "set_failures_abort", [](Trace& t, bool abort) { t.state.set_failures_abort(abort); },
          "False: a body that fails ends alone and the model goes on (a server of independent requests).")
      .def(
          "set_rows",
          [](Trace& t, int mediator, int64_t row_start, int64_t row_count) {
            if (mediator < 0 || mediator >= t.state.mediator_count()) throw py::index_error("no such mediator");
            t.state.set_rows(mediator, row_start, row_count);
          },
          "Gives a mediator rows [row_start, row_start + row_count) of the batch from now on (-1: all).")
      .def_property_readonly("active", [](Trace& t) { return t.active; })
      .def(
          "run_here",
          [](Trace& t, py::object fn) {
            ActiveTrace scope(&t.state);
            return fn();
          },
          "Calls fn() with this trace active on the calling thread (an Envoy called with hook=True).");
  g_trace_type = reinterpret_cast<PyTypeObject*>(trace_class.ptr());
  add_raw_methods(trace_class, trace_methods);
  add_raw_getter(trace_class, &trace_parked_getset);

  m.def("has_active_trace", [] { return active_trace() != nullptr; },
        "True when this thread is running a trace.");
  m.def("parked_bodies", &Handoff::parked_count, "How many bodies are parked now (0 once every trace is over).");
  m.def("set_exception_types", [](py::object abort, py::object cancelled, py::object out_of_order) {
    set_abort_type(abort.ptr());
    set_request_error_types(cancelled.ptr(), out_of_order.ptr());
  });
  m.def("mount_on_object", [](const std::string& name, py::object function) {
    if (!mount_on_object(name.c_str(), function.ptr())) throw py::error_already_set();
  });
  m.def("unmount_from_object", [](const std::string& name) {
    if (!unmount_from_object(name.c_str())) throw py::error_already_set();
  });
}

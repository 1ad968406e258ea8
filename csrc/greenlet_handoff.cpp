#include "greenlet_handoff.h"

#include <greenlet/greenlet.h>

#include <c10/util/Backtrace.h>
#include <c10/util/Logging.h>

#include <functional>

#include "dispatcher.h"

namespace nnsight_fast {
namespace {

// True while a body greenlet runs on this thread: c10 then skips its C++ backtrace.
thread_local bool tls_in_body = false;

PyGreenlet* as_greenlet(PyObject* object) { return reinterpret_cast<PyGreenlet*>(object); }

// This thread's view that a greenlet switch must not carry to the other side.
struct ThreadView {
  TraceState* trace = active_trace();
  PyObject* mediator = current_mediator();
  bool in_body = tls_in_body;
  void restore() const {
    set_active_trace(trace);
    set_current_mediator(mediator);
    tls_in_body = in_body;
  }
};

}  // namespace

bool init_greenlet_handoff() {
  PyGreenlet_Import();
  if (_PyGreenlet_API == nullptr) return false;
  c10::SetStackTraceFetcher(std::function<c10::Backtrace()>([]() -> c10::Backtrace {
    if (tls_in_body) return nullptr;  // glibc backtrace() may walk off a greenlet's stack
    return c10::get_lazy_backtrace(/*frames_to_skip=*/2);
  }));
  return true;
}

GreenletHandoff::~GreenletHandoff() {
  Py_CLEAR(body_);  // a body still parked gets GreenletExit and unwinds
  Py_CLEAR(payload_);
}

bool GreenletHandoff::serves_this_thread() const { return thread_ == PyThread_get_thread_ident(); }

Outcome GreenletHandoff::start(PyObject* job) {
  if (busy()) {
    PyErr_SetString(PyExc_RuntimeError, "internal error: starting a body that is still parked");
    return Outcome::Error;
  }
  PyGreenlet* current = PyGreenlet_GetCurrent();
  if (current == nullptr) return Outcome::Error;
  PyGreenlet* body = PyGreenlet_New(job, current);
  Py_DECREF(current);
  if (body == nullptr) return Outcome::Error;
  Py_XSETREF(body_, reinterpret_cast<PyObject*>(body));
  caller_ = reinterpret_cast<PyObject*>(current);  // alive as the body's parent
  thread_ = PyThread_get_thread_ident();
  return enter(false);
}

Outcome GreenletHandoff::serve(PyObject* value) {
  Py_XINCREF(value);
  Py_XSETREF(payload_, value);
  const Outcome outcome = enter(false);
  Py_CLEAR(payload_);
  return outcome;
}

Outcome GreenletHandoff::cancel() { return enter(true); }

Outcome GreenletHandoff::enter(bool cancel) {
  if (body_ == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "internal error: serving a body that has ended");
    return Outcome::Error;
  }
  PyGreenlet* body = as_greenlet(body_);
  PyGreenlet* current = PyGreenlet_GetCurrent();
  if (current == nullptr) return Outcome::Error;
  if (reinterpret_cast<PyObject*>(current) != caller_) {  // served from another greenlet (e.g. a nested run)
    if (PyGreenlet_SetParent(body, current) < 0) {
      Py_DECREF(current);
      return Outcome::Error;
    }
    caller_ = reinterpret_cast<PyObject*>(current);
  }
  Py_DECREF(current);

  const ThreadView model_view;
  set_active_trace(nullptr);  // calls made by the body are not part of the trace
  tls_in_body = true;
  set_busy(true);
  PyObject* result = cancel ? PyGreenlet_Throw(body, cancelled_type(), Py_None, Py_None)
                            : PyGreenlet_Switch(body, nullptr, nullptr);
  model_view.restore();

  if (PyGreenlet_ACTIVE(body)) {  // parked again
    if (result == nullptr) return Outcome::Error;
    Py_DECREF(result);
    return Outcome::Parked;
  }
  set_busy(false);
  caller_ = nullptr;
  Py_CLEAR(body_);  // the job ended: drop the greenlet (and the job it holds) now
  if (result == nullptr) return Outcome::Error;
  const int failed = PyObject_IsTrue(result);
  Py_DECREF(result);
  return failed ? Outcome::Failed : Outcome::Finished;
}

PyObject* GreenletHandoff::park() {
  if (caller_ == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "internal error: parking a body that was not started");
    return nullptr;
  }
  const ThreadView body_view;
  PyObject* result = PyGreenlet_Switch(as_greenlet(caller_), nullptr, nullptr);
  body_view.restore();
  if (result == nullptr) return nullptr;
  Py_DECREF(result);
  PyObject* value = std::exchange(payload_, nullptr);
  return value != nullptr ? value : Py_NewRef(Py_None);
}

}  // namespace nnsight_fast

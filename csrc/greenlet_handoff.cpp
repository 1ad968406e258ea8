#include "greenlet_handoff.h"

#include <greenlet/greenlet.h>

#include <c10/util/Backtrace.h>
#include <c10/util/Logging.h>

#include <alloca.h>
#include <pthread.h>

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

// Where a body's stack begins. A greenlet switch copies the part of the C stack the
// other side will overwrite: a body started right below the model's frames would have
// its stack saved and restored at every switch once the model runs deeper (≈0.07 µs
// per nested module). A body that starts kBodyStackGap below this point lives where the
// model's own frames never reach, so a switch copies (almost) nothing.
constexpr size_t kBodyStackGap = 512 * 1024;

// The free room on this thread's stack below the current frame (0 when unknown). The
// stack's bounds are read once per thread (for the main thread glibc reads /proc).
size_t stack_room() {
  thread_local const char* low = [] {
    pthread_attr_t attributes;
    if (pthread_getattr_np(pthread_self(), &attributes) != 0) return static_cast<const char*>(nullptr);
    void* bottom = nullptr;
    size_t size = 0;
    const bool known = pthread_attr_getstack(&attributes, &bottom, &size) == 0;
    pthread_attr_destroy(&attributes);
    return known ? static_cast<const char*>(bottom) : nullptr;
  }();
  const char here = 0;
  if (low == nullptr || &here < low) return 0;
  return static_cast<size_t>(&here - low);
}

// Switches into a new greenlet from kBodyStackGap further down the stack (when this
// thread has room for it: at least four times that much), so its stack starts there.
__attribute__((noinline)) PyObject* start_deeper(PyGreenlet* body) {
  if (stack_room() >= 4 * kBodyStackGap) {
    volatile char* gap = static_cast<volatile char*>(alloca(kBodyStackGap));
    gap[0] = 0;
    PyObject* result = PyGreenlet_Switch(body, nullptr, nullptr);
    gap[0] = 1;  // keeps the gap alive across the call
    return result;
  }
  return PyGreenlet_Switch(body, nullptr, nullptr);
}

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
  return enter_with(Entry::Start);
}

Outcome GreenletHandoff::serve(PyObject* value) {
  Py_XINCREF(value);
  Py_XSETREF(payload_, value);
  const Outcome outcome = enter_with(Entry::Resume);
  Py_CLEAR(payload_);
  return outcome;
}

Outcome GreenletHandoff::cancel() { return enter_with(Entry::Cancel); }

Outcome GreenletHandoff::enter_with(Entry entry) {
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
  PyObject* result = entry == Entry::Cancel   ? PyGreenlet_Throw(body, cancelled_type(), Py_None, Py_None)
                     : entry == Entry::Start ? start_deeper(body)
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

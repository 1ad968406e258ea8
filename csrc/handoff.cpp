#include "handoff.h"

#include <atomic>
#include <string>

#include "dispatcher.h"

namespace nnsight_fast {
namespace {
PyObject* g_cancelled_type = nullptr;
PyObject* g_out_of_order_type = nullptr;
thread_local PyObject* tls_current_mediator = nullptr;
std::atomic<int> g_parked{0};
}  // namespace

void Handoff::set_busy(bool busy) {
  if (busy != busy_) g_parked.fetch_add(busy ? 1 : -1, std::memory_order_relaxed);
  busy_ = busy;
}

int Handoff::parked_count() { return g_parked.load(std::memory_order_relaxed); }

Handoff::~Handoff() {
  set_busy(false);
  Py_CLEAR(swap_);
  Py_CLEAR(skip_);
  Py_CLEAR(last_value_);
}

void set_request_error_types(PyObject* cancelled, PyObject* out_of_order) {
  Py_XINCREF(cancelled);
  Py_XSETREF(g_cancelled_type, cancelled);
  Py_XINCREF(out_of_order);
  Py_XSETREF(g_out_of_order_type, out_of_order);
}

PyObject* Handoff::request(int location, int64_t occurrence) {
  if (trace_ == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "internal error: a request from a body attached to no trace");
    return nullptr;
  }
  if (trace_->visits(location) > occurrence && !trace_->serving(location, occurrence)) {
    const std::string name = trace_->dispatcher()->name(location);
    PyErr_Format(g_out_of_order_type ? g_out_of_order_type : PyExc_RuntimeError,
                 "'%s.i%lld' was requested but the model already ran past it", name.c_str(),
                 static_cast<long long>(occurrence));
    return nullptr;
  }
  trace_->park(location, index_, occurrence);
  waiting_location_ = location;
  waiting_occurrence_ = occurrence;
  PyObject* value = park();
  waiting_location_ = -1;
  waiting_occurrence_ = -1;
  if (value == nullptr) trace_->unpark(index_);  // cancelled: the body goes on without this value
  return value;
}

PyObject* cancelled_type() { return g_cancelled_type ? g_cancelled_type : PyExc_SystemExit; }

PyObject* current_mediator() { return tls_current_mediator; }

void set_current_mediator(PyObject* mediator) { tls_current_mediator = mediator; }

}  // namespace nnsight_fast

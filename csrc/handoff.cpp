#include "handoff.h"

#include <atomic>

namespace nnsight_fast {
namespace {
PyObject* g_cancelled_type = nullptr;
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
}

void set_cancelled_type(PyObject* type) {
  Py_XINCREF(type);
  Py_XSETREF(g_cancelled_type, type);
}

PyObject* cancelled_type() { return g_cancelled_type ? g_cancelled_type : PyExc_SystemExit; }

PyObject* current_mediator() { return tls_current_mediator; }

void set_current_mediator(PyObject* mediator) { tls_current_mediator = mediator; }

}  // namespace nnsight_fast

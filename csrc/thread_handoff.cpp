#include "thread_handoff.h"

#include <utility>

namespace nnsight_fast {
namespace {
// How often a waiting model side wakes to look for Ctrl-C.
constexpr int64_t kSignalPollUs = 20000;
}  // namespace

ThreadHandoff::~ThreadHandoff() { Py_CLEAR(payload_); }

void ThreadHandoff::apply_thread_state() {
  if (autograd_state_) c10::AutogradState::set_tls_state(*autograd_state_);
  if (dispatch_keys_) c10::impl::_force_tls_local_dispatch_key_set(*dispatch_keys_);
}

Outcome ThreadHandoff::hand_to_worker(Message message, PyObject* payload) {
  autograd_state_ = c10::AutogradState::get_tls_state();
  dispatch_keys_ = c10::impl::tls_local_dispatch_key_set();
  message_ = message;
  Py_XINCREF(payload);
  Py_XSETREF(payload_, payload);
  set_busy(true);

  PyThreadState* saved = PyEval_SaveThread();
  baton_.give(Turn::Worker);
  while (!baton_.wait_for(Turn::Model, kSignalPollUs)) {
    PyEval_RestoreThread(saved);
    if (PyErr_CheckSignals() < 0) {
      // Ctrl-C while user code runs in the worker: raise it there; the job fails
      // with it and hands back, and the trace re-raises it.
      PyObject *type, *value, *traceback;
      PyErr_Fetch(&type, &value, &traceback);
      if (worker_ident_ != 0) PyThreadState_SetAsyncExc(worker_ident_, type);
      Py_XDECREF(type);
      Py_XDECREF(value);
      Py_XDECREF(traceback);
    }
    saved = PyEval_SaveThread();
  }
  PyEval_RestoreThread(saved);
  set_busy(outcome_ == Outcome::Parked);
  return outcome_;
}

ThreadHandoff::Message ThreadHandoff::hand_to_model(Outcome outcome) {
  outcome_ = outcome;
  PyThreadState* saved = PyEval_SaveThread();
  baton_.give(Turn::Model);
  baton_.wait_for(Turn::Worker, -1, /*spin_us=*/0);
  PyEval_RestoreThread(saved);
  apply_thread_state();
  return message_;
}

Outcome ThreadHandoff::start(PyObject* job) { return hand_to_worker(Message::Job, job); }

Outcome ThreadHandoff::serve(PyObject* value) { return hand_to_worker(Message::Value, value); }

Outcome ThreadHandoff::cancel() { return hand_to_worker(Message::Cancel, nullptr); }

void ThreadHandoff::stop() {
  message_ = Message::Stop;
  Py_CLEAR(payload_);
  PyThreadState* saved = PyEval_SaveThread();
  baton_.give(Turn::Worker);
  PyEval_RestoreThread(saved);
}

PyObject* ThreadHandoff::next_job() {
  worker_ident_ = PyThread_get_thread_ident();
  PyThreadState* saved = PyEval_SaveThread();
  baton_.wait_for(Turn::Worker, -1, /*spin_us=*/0);
  PyEval_RestoreThread(saved);
  return take_job();
}

PyObject* ThreadHandoff::take_job() {
  apply_thread_state();
  if (message_ != Message::Job) Py_RETURN_NONE;
  return std::exchange(payload_, nullptr);
}

PyObject* ThreadHandoff::park() {
  const Message message = hand_to_model(Outcome::Parked);
  if (message == Message::Value) {
    PyObject* value = std::exchange(payload_, nullptr);
    return value != nullptr ? value : Py_NewRef(Py_None);
  }
  PyErr_SetNone(cancelled_type());
  return nullptr;
}

PyObject* ThreadHandoff::finish_and_next(bool failed) {
  outcome_ = failed ? Outcome::Failed : Outcome::Finished;
  PyThreadState* saved = PyEval_SaveThread();
  baton_.give(Turn::Model);
  baton_.wait_for(Turn::Worker, -1, /*spin_us=*/0);
  PyEval_RestoreThread(saved);
  return take_job();
}

}  // namespace nnsight_fast

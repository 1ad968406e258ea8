#include "channel.h"

#include <utility>

#ifdef __linux__
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace nnsight_fast {
namespace {

PyObject* g_cancelled_type = nullptr;

// How often a waiting model thread wakes to look for Ctrl-C.
constexpr int64_t kSignalPollUs = 20000;

// Tuning knobs, read once at import (see README "Tuning"): how long each side spins
// before sleeping, and whether the worker follows the model thread's CPU.
int64_t env_us(const char* name, int64_t fallback) {
  const char* v = getenv(name);
  return v ? atoll(v) : fallback;
}
const int64_t kModelSpin = env_us("NNSIGHT_FAST_MODEL_SPIN_US", Baton::kSpinWindowUs);
const bool kFollowCpu = env_us("NNSIGHT_FAST_FOLLOW_CPU", 1) != 0;
// A worker on the model thread's CPU must not spin: it would only slow the model down.
const int64_t kWorkerSpin =
    env_us("NNSIGHT_FAST_WORKER_SPIN_US", kFollowCpu ? 0 : Baton::kWorkerSpinWindowUs);

}  // namespace

void set_cancelled_type(PyObject* type) {
  Py_XINCREF(type);
  Py_XSETREF(g_cancelled_type, type);
}

Channel::~Channel() {
  Py_CLEAR(payload_);
  Py_CLEAR(swap_);
  Py_CLEAR(skip_);
}

void Channel::set_swap(PyObject* value) {
  Py_XINCREF(value);
  Py_XSETREF(swap_, value);
}

void Channel::set_skip(PyObject* value) {
  Py_XINCREF(value);
  Py_XSETREF(skip_, value);
}

void Channel::capture_thread_state() {
  autograd_state_ = c10::AutogradState::get_tls_state();
  dispatch_keys_ = c10::impl::tls_local_dispatch_key_set();
}

void Channel::apply_thread_state() {
  if (autograd_state_) c10::AutogradState::set_tls_state(*autograd_state_);
  if (dispatch_keys_) c10::impl::_force_tls_local_dispatch_key_set(*dispatch_keys_);
}

// Runs the worker on the CPU the model thread is on: the two never run at the same
// time, and sharing a core keeps the worker off the core where torch's own
// intra-op threads spin after a parallel region (a wake there waits for preemption).
void Channel::follow_model_cpu() {
#ifdef __linux__
  if (worker_tid_ == 0 || !kFollowCpu) return;
  const int cpu = sched_getcpu();
  if (cpu < 0 || cpu == worker_cpu_) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(worker_tid_, sizeof(set), &set) == 0) worker_cpu_ = cpu;
#endif
}

Outcome Channel::hand_to_worker(Message message, PyObject* payload) {
  capture_thread_state();
  follow_model_cpu();
  message_ = message;
  Py_XINCREF(payload);
  Py_XSETREF(payload_, payload);
  busy_ = true;

  PyThreadState* saved = PyEval_SaveThread();
  baton_.give(Turn::Worker);
  while (!baton_.wait_for(Turn::Model, kSignalPollUs, kModelSpin)) {
    PyEval_RestoreThread(saved);
    if (PyErr_CheckSignals() < 0) {
      // Ctrl-C while user code runs in the worker: raise it there; the worker's
      // job fails with it and hands back, and the trace re-raises it.
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
  busy_ = outcome_ == Outcome::Parked;
  return outcome_;
}

Channel::Message Channel::hand_to_model(Outcome outcome) {
  outcome_ = outcome;
  PyThreadState* saved = PyEval_SaveThread();
  baton_.give(Turn::Model);
  baton_.wait_for(Turn::Worker, -1, kWorkerSpin);
  PyEval_RestoreThread(saved);
  apply_thread_state();
  return message_;
}

void Channel::poke() {
  if (kWorkerSpin > 0) baton_.poke();  // a worker that never spins would only go back to sleep
}

Outcome Channel::start(PyObject* job) { return hand_to_worker(Message::Job, job); }

Outcome Channel::serve(PyObject* value) { return hand_to_worker(Message::Value, value); }

Outcome Channel::cancel() { return hand_to_worker(Message::Cancel, nullptr); }

void Channel::stop() {
  message_ = Message::Stop;
  Py_CLEAR(payload_);
  PyThreadState* saved = PyEval_SaveThread();
  baton_.give(Turn::Worker);
  PyEval_RestoreThread(saved);
}

PyObject* Channel::next_job() {
  worker_ident_ = PyThread_get_thread_ident();
#ifdef __linux__
  worker_tid_ = static_cast<int>(syscall(SYS_gettid));
#endif
  PyThreadState* saved = PyEval_SaveThread();
  baton_.wait_for(Turn::Worker, -1, kWorkerSpin);
  PyEval_RestoreThread(saved);
  return take_job();
}

PyObject* Channel::take_job() {
  apply_thread_state();
  if (message_ != Message::Job) Py_RETURN_NONE;
  return std::exchange(payload_, nullptr);
}

PyObject* Channel::park() {
  const Message message = hand_to_model(Outcome::Parked);
  if (message == Message::Value) {
    PyObject* value = std::exchange(payload_, nullptr);
    if (value == nullptr) Py_RETURN_NONE;
    return value;
  }
  PyErr_SetNone(g_cancelled_type ? g_cancelled_type : PyExc_SystemExit);
  return nullptr;
}

PyObject* Channel::finish_and_next(bool failed) {
  outcome_ = failed ? Outcome::Failed : Outcome::Finished;
  PyThreadState* saved = PyEval_SaveThread();
  baton_.give(Turn::Model);
  baton_.wait_for(Turn::Worker, -1, kWorkerSpin);
  PyEval_RestoreThread(saved);
  return take_job();
}

}  // namespace nnsight_fast

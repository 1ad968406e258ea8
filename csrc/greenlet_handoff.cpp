#include "greenlet_handoff.h"

#include <greenlet/greenlet.h>

#include <c10/util/Backtrace.h>
#include <c10/util/Lazy.h>
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

// Bodies run in "runner" greenlets that stay alive between traces: each runner loops
// `result = job(); job = parent.switch((kEnded, result))`. A new greenlet costs a fresh
// CPython data stack (an mmap, page faults, an munmap: ~15 µs), a parked runner none.
// Idle runners wait in a per-thread list (the thread state's dict, so they die with the
// thread), with the stack address they start at.
constexpr Py_ssize_t kIdleRunners = 8;
constexpr const char* kRunnersKey = "nnsight_fast.idle_runners";
PyObject* g_ended = nullptr;  // marks the switch a runner makes when its job returned
thread_local bool tls_killing = false;  // a parked body is being dropped: its runner ends with the job

thread_local PyObject* tls_next_job = nullptr;  // borrowed: the job start() hands to a runner

// A runner's body: takes each job from tls_next_job (not from the switch's arguments,
// which the greenlet would keep alive for the runner's whole life).
PyObject* runner_run(PyObject*, PyObject*) {
  for (;;) {
    PyObject* job = std::exchange(tls_next_job, nullptr);
    if (job == nullptr) {
      PyErr_SetString(PyExc_RuntimeError, "internal error: a runner switched into without a job");
      return nullptr;
    }
    PyObject* result = PyObject_CallNoArgs(job);
    if (result == nullptr || tls_killing) return result;
    PyGreenlet* self = PyGreenlet_GetCurrent();
    PyGreenlet* parent = self != nullptr ? PyGreenlet_GetParent(self) : nullptr;
    Py_XDECREF(self);
    PyObject* ended = parent != nullptr ? PyTuple_Pack(2, g_ended, result) : nullptr;
    Py_DECREF(result);
    if (ended == nullptr) {
      Py_XDECREF(parent);
      return nullptr;
    }
    PyObject* next = PyGreenlet_Switch(parent, ended, nullptr);  // back with the next job, or GreenletExit
    Py_DECREF(parent);
    Py_DECREF(ended);
    if (next == nullptr) return nullptr;
    Py_DECREF(next);
  }
}

PyMethodDef runner_def = {"nnsight_fast_runner", runner_run, METH_NOARGS, nullptr};
PyObject* g_runner_function = nullptr;

PyObject* idle_runners() {  // borrowed; nullptr with an error set
  PyObject* state = PyThreadState_GetDict();
  if (state == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "internal error: no thread state dict");
    return nullptr;
  }
  PyObject* runners = PyDict_GetItemString(state, kRunnersKey);
  if (runners != nullptr) return runners;
  runners = PyList_New(0);
  if (runners == nullptr || PyDict_SetItemString(state, kRunnersKey, runners) < 0) {
    Py_XDECREF(runners);
    return nullptr;
  }
  Py_DECREF(runners);
  return runners;
}

// An idle runner whose stack starts at least kBodyStackGap / 2 below this frame (new
// reference with its stack address in *top), or nullptr (no error) when none fits.
__attribute__((noinline)) PyObject* take_runner(uintptr_t* top) {
  PyObject* runners = idle_runners();
  if (runners == nullptr) return nullptr;
  const char here = 0;
  const auto limit = reinterpret_cast<uintptr_t>(&here) - kBodyStackGap / 2;
  for (Py_ssize_t i = PyList_GET_SIZE(runners) - 1; i >= 0; --i) {
    PyObject* entry = PyList_GET_ITEM(runners, i);  // (runner, top)
    const auto start = static_cast<uintptr_t>(PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 1)));
    if (start > limit) continue;  // this frame is too close: the model's stack would overlap it
    PyObject* runner = Py_NewRef(PyTuple_GET_ITEM(entry, 0));
    *top = start;
    if (PySequence_DelItem(runners, i) < 0) {
      Py_DECREF(runner);
      return nullptr;
    }
    return runner;
  }
  return nullptr;
}

void keep_runner(PyObject* runner, uintptr_t top) {
  PyObject* runners = idle_runners();
  if (runners == nullptr || PyList_GET_SIZE(runners) >= kIdleRunners) {
    PyErr_Clear();
    return;
  }
  PyObject* entry = Py_BuildValue("(OK)", runner, static_cast<unsigned long long>(top));
  if (entry == nullptr || PyList_Append(runners, entry) < 0) PyErr_Clear();
  Py_XDECREF(entry);
}

// Switches into a new runner from kBodyStackGap further down the stack (when this
// thread has room for it: at least four times that much), so its stack starts there.
__attribute__((noinline)) PyObject* start_deeper(PyGreenlet* body, uintptr_t* top) {
  if (stack_room() >= 4 * kBodyStackGap) {
    volatile char* gap = static_cast<volatile char*>(alloca(kBodyStackGap));
    gap[0] = 0;
    *top = reinterpret_cast<uintptr_t>(gap);
    PyObject* result = PyGreenlet_Switch(body, nullptr, nullptr);
    gap[0] = 1;  // keeps the gap alive across the call
    return result;
  }
  const char here = 0;
  *top = reinterpret_cast<uintptr_t>(&here);
  return PyGreenlet_Switch(body, nullptr, nullptr);
}

// torch.compile's frame evaluator (dynamo) is per thread: when a Gate inside a compiled
// model switches into a body, the body's frames must run as plain Python, not be
// compiled. `set_eval_frame(None)` turns it off (returning what was set) for the
// body's turn; the model side gets its own back when the turn ends.
PyObject* g_set_eval_frame = nullptr;

PyObject* swap_eval_frame(PyObject* callback) {  // new reference to the previous one (or nullptr)
  if (g_set_eval_frame == nullptr) return nullptr;
  // Python's own frame evaluator is installed: no dynamo callback can be set, nothing to swap
  // (the call below costs a Python-level call at every switch).
  if (_PyInterpreterState_GetEvalFrameFunc(PyInterpreterState_Get()) == _PyEval_EvalFrameDefault) return nullptr;
  PyObject* previous = PyObject_CallOneArg(g_set_eval_frame, callback);
  if (previous == nullptr) PyErr_Clear();
  return previous;
}

bool job_ended(PyObject* result) {
  return result != nullptr && PyTuple_CheckExact(result) && PyTuple_GET_SIZE(result) == 2 &&
         PyTuple_GET_ITEM(result, 0) == g_ended;
}

}  // namespace

bool init_greenlet_handoff() {
  PyGreenlet_Import();
  if (_PyGreenlet_API == nullptr) return false;
  PyObject* eval_frame = PyImport_ImportModule("torch._C._dynamo.eval_frame");
  if (eval_frame != nullptr) {
    g_set_eval_frame = PyObject_GetAttrString(eval_frame, "set_eval_frame");
    Py_DECREF(eval_frame);
  }
  PyErr_Clear();  // no dynamo in this torch: nothing to turn off
  g_ended = PyObject_CallNoArgs(reinterpret_cast<PyObject*>(&PyBaseObject_Type));
  g_runner_function = PyCFunction_New(&runner_def, nullptr);
  if (g_ended == nullptr || g_runner_function == nullptr) return false;
  // In a body, c10 gets a fixed text instead of a walk of the greenlet's stack (never a
  // null backtrace: with TORCH_SHOW_CPP_STACKTRACES=1 c10 reads it without a check).
  static const c10::Backtrace in_body = std::make_shared<c10::PrecomputedLazyValue<std::string>>(
      "(no C++ stack trace: raised inside an nnsight_fast trace body)");
  c10::SetStackTraceFetcher(std::function<c10::Backtrace()>([]() -> c10::Backtrace {
    if (tls_in_body) return in_body;  // glibc backtrace() may walk off a greenlet's stack
    return c10::get_lazy_backtrace(/*frames_to_skip=*/2);
  }));
  return true;
}

GreenletHandoff::~GreenletHandoff() {
  if (body_ != nullptr) {  // a body still parked gets GreenletExit and unwinds; its runner ends
    const bool killing = std::exchange(tls_killing, true);
    Py_CLEAR(body_);
    tls_killing = killing;
  }
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
  PyObject* runner = take_runner(&top_);
  if (runner != nullptr && PyGreenlet_SetParent(as_greenlet(runner), current) < 0) Py_CLEAR(runner);
  if (runner == nullptr && !PyErr_Occurred()) {
    runner = reinterpret_cast<PyObject*>(PyGreenlet_New(g_runner_function, current));
    top_ = 0;  // set by start_deeper
  }
  Py_DECREF(current);
  if (runner == nullptr) return Outcome::Error;
  Py_XSETREF(body_, runner);
  caller_ = reinterpret_cast<PyObject*>(current);  // alive as the body's parent
  thread_ = PyThread_get_thread_ident();
  job_ = job;
  const Outcome outcome = enter_with(Entry::Start);
  job_ = nullptr;
  return outcome;
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
  PyObject* model_eval_frame = swap_eval_frame(Py_None);
  PyObject* result = nullptr;
  if (entry == Entry::Cancel) {
    result = PyGreenlet_Throw(body, cancelled_type(), Py_None, Py_None);
  } else if (entry == Entry::Start) {
    tls_next_job = job_;
    result = top_ == 0 ? start_deeper(body, &top_) : PyGreenlet_Switch(body, nullptr, nullptr);
    tls_next_job = nullptr;
  } else {
    result = PyGreenlet_Switch(body, nullptr, nullptr);
  }
  model_view.restore();
  if (model_eval_frame != nullptr) {
    if (model_eval_frame != Py_None) {
      PyObject *type, *value, *traceback;
      PyErr_Fetch(&type, &value, &traceback);  // the body's error (if any) goes on to the model side
      Py_XDECREF(swap_eval_frame(model_eval_frame));
      PyErr_Restore(type, value, traceback);
    }
    Py_DECREF(model_eval_frame);
  }

  const bool ended = job_ended(result);
  if (!ended && PyGreenlet_ACTIVE(body)) {  // parked again
    if (result == nullptr) return Outcome::Error;
    Py_DECREF(result);
    return Outcome::Parked;
  }
  set_busy(false);
  caller_ = nullptr;
  PyObject* runner = std::exchange(body_, nullptr);
  if (ended) keep_runner(runner, top_);  // the job returned: the runner waits for the next one
  Py_DECREF(runner);
  if (result == nullptr) return Outcome::Error;
  const int failed = PyObject_IsTrue(ended ? PyTuple_GET_ITEM(result, 1) : result);
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

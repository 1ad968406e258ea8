// Handoff: how the model side hands values to one mediator's body and gets the turn back.
//
//   model side (a Gate)                      body side (the user's `with` block)
//   -------------------                      -----------------------------------
//   h.start(job)  ──────────────────────▶    job() runs ...
//        ◀────────────── Parked ──────────   v = h.park()            (asks a value)
//   h.serve(value) ─────────────────────▶    ... v returned, user code runs ...
//        ◀────────────── Finished ────────   job() returns
//
// Two kinds: GreenletHandoff (the default: the body is a greenlet on the model's
// thread, a stack switch per handoff) and ThreadHandoff (the body runs on a worker
// thread and can be served from any OS thread: autograd's device threads, thread
// pools). Exactly one side runs at a time; the caller holds the GIL.
#pragma once

#include <Python.h>

#include <utility>

namespace nnsight_fast {

class TraceState;

// Parked: the body asks for a value. Finished / Failed: the job returned False / True.
// Error: the handoff itself failed, with a Python error set (e.g. a foreign thread).
enum class Outcome : int { Parked = 0, Finished = 1, Failed = 2, Error = 3 };

class Handoff {
 public:
  Handoff() = default;
  virtual ~Handoff();
  Handoff(const Handoff&) = delete;
  Handoff& operator=(const Handoff&) = delete;

  // ---- model side ----
  // Runs `job` (a callable returning True on failure) until it parks or ends.
  virtual Outcome start(PyObject* job) = 0;
  // Hands `value` to the parked body; returns when it parks again or ends.
  virtual Outcome serve(PyObject* value) = 0;
  // Makes the parked body's `park()` raise `Cancelled`; returns when it parks again or ends.
  virtual Outcome cancel() = 0;
  // False when the body cannot be served from the calling OS thread.
  virtual bool serves_this_thread() const { return true; }
  bool busy() const { return busy_; }
  // How many bodies are parked now, all handoffs together (zero once every trace is over).
  static int parked_count();

  // ---- body side ----
  // Gives the turn back until the model serves a value (new reference), or returns
  // nullptr with `Cancelled` (or the error the model side threw) set.
  virtual PyObject* park() = 0;

  // The body asks for occurrence `occurrence` of `location` of the trace it is attached
  // to: parks there until the model serves it (new reference). nullptr with an error
  // set: OutOfOrderError when the model already ran past it, or the park's error.
  PyObject* request(int location, int64_t occurrence);
  // The trace and mediator index this body is attached to (Trace.add_mediator); a new
  // body's bookkeeping starts empty.
  void attach(TraceState* trace, int index) {
    trace_ = trace;
    index_ = index;
    requests_made_ = 0;
    waiting_location_ = -1;
    waiting_occurrence_ = -1;
    Py_CLEAR(swap_);  // an edit the last run never took
    Py_CLEAR(skip_);
    forget_last();
  }

  // ---- the body's bookkeeping (Mediator.request, csrc/body_request.cpp) ----
  // The value served last if it was at (location, occurrence), else nullptr (borrowed):
  // asked again at the same place, it is not waited for twice.
  PyObject* last_value(int location, int64_t occurrence) const {
    return last_value_ != nullptr && last_location_ == location && last_occurrence_ == occurrence ? last_value_
                                                                                                  : nullptr;
  }
  void remember_last(int location, int64_t occurrence, PyObject* value) {
    last_location_ = location;
    last_occurrence_ = occurrence;
    Py_XINCREF(value);
    Py_XSETREF(last_value_, value);
  }
  void forget_last() { Py_CLEAR(last_value_); }
  // How many values the body has asked for (those not served again from the last one).
  int64_t requests_made() const { return requests_made_; }
  void count_request() { ++requests_made_; }
  // The request the body is parked on, if any: (location, occurrence); location -1: none.
  int waiting_location() const { return waiting_location_; }
  int64_t waiting_occurrence() const { return waiting_occurrence_; }

  // Written by the body during its turn, taken by the model side (owned references).
  PyObject* take_swap() { return std::exchange(swap_, nullptr); }
  PyObject* take_skip() { return std::exchange(skip_, nullptr); }
  // The body assigned `value` to the place it asked last: the model takes it there, and a
  // read of that place again gives it.
  void set_swap(PyObject* value) {
    Py_XINCREF(value);
    Py_XSETREF(swap_, value);
    if (last_value_ != nullptr) remember_last(last_location_, last_occurrence_, value);
  }
  void set_skip(PyObject* value) {
    Py_XINCREF(value);
    Py_XSETREF(skip_, value);
  }

 protected:
  void set_busy(bool busy);

 private:
  bool busy_ = false;

 protected:
  TraceState* trace_ = nullptr;
  int index_ = -1;
  int waiting_location_ = -1;
  int64_t waiting_occurrence_ = -1;
  PyObject* swap_ = nullptr;
  PyObject* skip_ = nullptr;
  int last_location_ = -1;
  int64_t last_occurrence_ = -1;
  PyObject* last_value_ = nullptr;
  int64_t requests_made_ = 0;
};

// The exceptions a body's request raises (set from Python): when the trace ends before
// it is served (Cancelled), and when the model already passed it (OutOfOrderError).
void set_request_error_types(PyObject* cancelled, PyObject* out_of_order);
PyObject* cancelled_type();

// The mediator whose body runs now on this OS thread (borrowed; None-able via nullptr).
// A body sets it when its job starts and clears it when the job ends; each switch
// between model and body keeps the other side's value.
PyObject* current_mediator();
void set_current_mediator(PyObject* mediator);

}  // namespace nnsight_fast

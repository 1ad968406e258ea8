// Channel: the handoff between the model thread and one worker-thread mediator.
//
//   model thread                          worker thread (pooled)
//   ------------                          ----------------------
//   ch.start(job)  ───────────────────▶   job = ch.next_job(); job()
//        ◀──────────── Parked ─────────   v = ch.park()          (user asks a value)
//   ch.serve(value) ──────────────────▶   ... v is returned, user code runs ...
//        ◀──────────── Finished ───────   job = ch.finish_and_next(false)
//
// One side runs at a time (a Baton). Waiting releases the GIL first; the model
// thread's grad mode, inference mode and local dispatch keys (autocast) travel with
// each handoff, so code in the block runs as if it ran inside the forward.
// A Ctrl-C on the model thread while it waits is forwarded to the worker.
#pragma once

#include <Python.h>

#include <c10/core/AutogradState.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>

#include "baton.h"

namespace nnsight_fast {

enum class Outcome : int { Parked = 0, Finished = 1, Failed = 2 };

class Channel {
 public:
  Channel() = default;
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // ---- model thread (GIL held) ----
  // Runs `job` on the worker until it parks, finishes or fails.
  Outcome start(PyObject* job);
  // Hands `value` to the parked worker; returns when it parks again or ends.
  Outcome serve(PyObject* value);
  // Makes the parked worker's request raise `Cancelled`; returns when it has unwound.
  Outcome cancel();
  // Ends the worker's loop (`next_job` returns None); does not wait.
  void stop();
  bool busy() const { return busy_; }
  // Wakes the parked worker ahead of a handoff that is about to come.
  void poke();

  // ---- worker thread (GIL held) ----
  // Waits for the next job; returns a new reference, Py_None when told to stop.
  PyObject* next_job();
  // Parks the worker until the model serves a value (new reference), or returns
  // nullptr with `Cancelled` set.
  PyObject* park();
  // Hands the turn back (the job is done, or failed) and waits for the next job
  // without taking the GIL in between (the model thread wants it now).
  PyObject* finish_and_next(bool failed);

  // Written by the worker during its turn, taken by the model thread (owned refs).
  PyObject* take_swap() { return std::exchange(swap_, nullptr); }
  PyObject* take_skip() { return std::exchange(skip_, nullptr); }
  void set_swap(PyObject* value);
  void set_skip(PyObject* value);

 private:
  enum class Message : int { None, Job, Value, Cancel, Stop };

  Outcome hand_to_worker(Message message, PyObject* payload);
  Message hand_to_model(Outcome outcome);
  void capture_thread_state();
  void follow_model_cpu();
  PyObject* take_job();
  void apply_thread_state();

  Baton baton_;
  Message message_ = Message::None;
  PyObject* payload_ = nullptr;
  PyObject* swap_ = nullptr;
  PyObject* skip_ = nullptr;
  Outcome outcome_ = Outcome::Finished;
  unsigned long worker_ident_ = 0;
  int worker_tid_ = 0;      // the worker's kernel thread id (for its CPU affinity)
  int worker_cpu_ = -1;     // the CPU the worker is pinned to, -1: not pinned
  bool busy_ = false;
  std::optional<c10::AutogradState> autograd_state_;
  std::optional<c10::impl::LocalDispatchKeySet> dispatch_keys_;
};

// The exception a cancelled request raises in the worker (set from Python).
void set_cancelled_type(PyObject* type);

}  // namespace nnsight_fast

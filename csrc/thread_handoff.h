// ThreadHandoff: a mediator's body on a pooled worker thread, served from any OS thread.
//
//   model side (any thread)                 worker thread (pooled)
//   -----------------------                 ----------------------
//   h.start(job)  ───────────────────▶      job = h.next_job(); job()
//        ◀──────────── Parked ─────────     v = h.park()          (the body asks a value)
//   h.serve(value) ──────────────────▶      ... v is returned, user code runs ...
//        ◀──────────── Finished ───────     job = h.finish_and_next(false)
//
// For values that arrive on a thread other than the trace's (autograd's device
// threads in backward blocks, models that run modules on a thread pool), where a
// greenlet cannot be switched into. One side runs at a time (a Baton); waiting
// releases the GIL first. The model side's grad mode, inference mode and local
// dispatch keys (autocast) travel with each handoff. A Ctrl-C on the model side
// while it waits is raised in the worker.
#pragma once

#include <c10/core/AutogradState.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>

#include "baton.h"
#include "handoff.h"

namespace nnsight_fast {

class ThreadHandoff final : public Handoff {
 public:
  ThreadHandoff() = default;
  ~ThreadHandoff() override;

  // ---- model side (GIL held) ----
  Outcome start(PyObject* job) override;
  Outcome serve(PyObject* value) override;
  Outcome cancel() override;
  // Ends the worker's loop (`next_job` returns None); does not wait.
  void stop();

  // ---- worker thread (GIL held) ----
  // Waits for the next job; returns a new reference, Py_None when told to stop.
  PyObject* next_job();
  PyObject* park() override;
  // Hands the turn back (the job is done, or failed) and waits for the next job
  // without taking the GIL in between (the model side wants it now).
  PyObject* finish_and_next(bool failed);

 private:
  enum class Message : int { None, Job, Value, Cancel, Stop };

  Outcome hand_to_worker(Message message, PyObject* payload);
  Message hand_to_model(Outcome outcome);
  PyObject* take_job();
  void apply_thread_state();

  Baton baton_;
  Message message_ = Message::None;
  PyObject* payload_ = nullptr;
  Outcome outcome_ = Outcome::Finished;
  unsigned long worker_ident_ = 0;
  std::optional<c10::AutogradState> autograd_state_;
  std::optional<c10::impl::LocalDispatchKeySet> dispatch_keys_;
};

}  // namespace nnsight_fast

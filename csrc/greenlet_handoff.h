// GreenletHandoff: a mediator's body as a greenlet on the model's OS thread.
//
//   GreenletHandoff h;                 // model side, on the thread that runs the model
//   h.start(job);                      // a greenlet runs job() until it parks or ends
//   h.serve(value);                    // switch into the parked body; back when it parks
//
// A handoff is one stack switch (greenlet's C API), no scheduler: the body runs with
// the model thread's torch state (grad mode, autocast, CUDA stream) by construction.
// Each switch keeps both sides' thread-local views apart (the active trace, the
// current mediator). While a body runs, c10 does not walk the C stack for error
// backtraces (glibc `backtrace()` can crash on a greenlet's stack).
#pragma once

#include <cstdint>

#include "handoff.h"

namespace nnsight_fast {

class GreenletHandoff final : public Handoff {
 public:
  GreenletHandoff() = default;
  ~GreenletHandoff() override;

  Outcome start(PyObject* job) override;
  Outcome serve(PyObject* value) override;
  Outcome cancel() override;
  bool serves_this_thread() const override;
  PyObject* park() override;

 private:
  enum class Entry { Start, Resume, Cancel };
  Outcome enter_with(Entry entry);

  PyObject* body_ = nullptr;    // the greenlet, owned until its job ends
  PyObject* caller_ = nullptr;  // the greenlet that switched in last (borrowed: the body's parent)
  PyObject* payload_ = nullptr;
  PyObject* job_ = nullptr;     // borrowed, while start() switches into the runner
  uintptr_t top_ = 0;           // where the runner's stack starts
  unsigned long thread_ = 0;
};

// Imports greenlet's C API and installs c10's stack-trace guard; false with a Python error set.
bool init_greenlet_handoff();

}  // namespace nnsight_fast

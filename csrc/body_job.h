// A Mediator's body as its greenlet (or worker) runs it, in C:
//
//   class Mediator:
//       _job = _native.mediator_job          # handoff.start(self._job)
//       _collect = _native.keep_namespace    # body.run(self._collect): self._namespace = locals
//
// mediator_job(mediator): makes it the thread's current mediator, runs
// `mediator._body.run(mediator._collect)`, then its deferred actions; returns False, or
// True with the failure in `mediator.error`. Afterwards no mediator is current, no
// deferred action is left and the last served value is dropped.
#pragma once

#include <Python.h>

namespace nnsight_fast {

// Adds mediator_job and keep_namespace to `module`.
bool add_body_job(PyObject* module);

}  // namespace nnsight_fast

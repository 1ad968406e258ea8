// The body's side of a request, in C: what `envoy.output` does in a trace body.
//
//   value = mediator_request(mediator, location, occurrence)   // Mediator.request(location, occurrence)
//   class ValueAccess:
//       output = _native.ValueRead("_output_location", getter, setter)
//       next = _native.place_next             // place.next(step=1): the running body's `_offsets`
//
// The Mediator (python/nnsight_fast/mediator.py) owns its state as plain attributes;
// this file reads and writes them: iteration, _offsets, _bases, _deferred, history,
// _handoff; the last value served and the count of requests live in the body's Handoff.
// Routing the rare cases (no body, a backward block, an Envoy without the location
// attribute) to Python is `ValueRead`'s `getter`.
#pragma once

#include <Python.h>

#include <cstdint>

namespace nnsight_fast {

class Handoff;

// The Handoff of a Python handoff object (bindings.cpp), or nullptr with an error set.
Handoff* handoff_of(PyObject* object);

// Readies the ValueRead type and adds it and place_next/set_next_fallback to `module`;
// interns the attribute names.
bool add_value_read_type(PyObject* module);

// Runs the mediator's deferred actions (`_run_deferred()`, when `_deferred` is not None):
// what must happen before the body's turn ends. False with an error set when one failed.
bool run_deferred_actions(PyObject* mediator);

// Mediator.request: the value at (location, occurrence) for `mediator`'s body; parks until
// the model gets there. New reference, or nullptr with an error set.
PyObject* mediator_request(PyObject* mediator, int location, int64_t occurrence);

// Which call of the module at `path` the mediator's next request binds to (-1 with an error set).
int64_t occurrence_of(PyObject* mediator, PyObject* path);

}  // namespace nnsight_fast

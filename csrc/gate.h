// Gate: the object installed as `module.forward` (an instance attribute, so PyTorch
// keeps its no-hook fast call path).
//
//   module.__dict__["forward"] = Gate(original_forward, dispatcher, in_loc, out_loc)
//
// With no active trace of its dispatcher on this thread a Gate calls the original
// forward at once (vectorcall: no bound method, no tuple). In a trace it counts the
// visit of the module's input and output locations and, only when a mediator waits
// there, serves the value (narrowed to the mediator's rows) and takes back edits.
#pragma once

#include <Python.h>

#include <vector>

#include "cache_copy.h"
#include "dispatcher.h"

namespace nnsight_fast {

// Readies the Gate type and adds it to `module` as `Gate`.
bool add_gate_type(PyObject* module);
// A new Gate (new reference). `owner` keeps `dispatcher` alive.
PyObject* new_gate(PyObject* forward, PyObject* owner, Dispatcher* dispatcher, int input_location,
                   int output_location);
bool is_gate(PyObject* object);

// A SourceOp (new reference): called as op(callee, *args, **kwargs) by a forward
// rewritten for `.source`; it counts and serves the callee, input and output locations.
PyObject* new_source_op(PyObject* owner, Dispatcher* dispatcher, int callee_location, int input_location,
                        int output_location);
// Gives a Gate the rewritten forward it runs in every trace (nullptr removes it); the
// original forward still runs outside traces. Returns false with a Python error set
// when `gate` is not a Gate.
bool set_gate_source(PyObject* gate, PyObject* source_forward);

// A mediator's `skip(value)`: the output it wants for its rows instead of the module's.
struct SkipRequest {
  int mediator;
  PyObject* value;  // owned
};

// Hands `value` to every mediator parked at (location, occurrence), in mediator
// order, each seeing its rows; returns the value after their edits (new
// reference). Skip requests are appended to *skips when `skips` is given.
// Returns nullptr with `Abort` set when a mediator failed.
PyObject* serve_location(TraceState* trace, int location, int64_t occurrence, PyObject* value,
                         std::vector<SkipRequest>* skips);

// Resumes the mediators a barrier released (they continue until they park or end).
// Returns false with `Abort` set when one failed.
bool resume_released(TraceState* trace);

// Sets (or with nullptr removes) the plain hook applied at `location`: value -> value.
void set_location_hook(Dispatcher* dispatcher, int location, PyObject* hook);

// A cache's record of one location: each visit appends the (copied) value to `sink`.
struct CacheObserver {
  PyObject* sink;      // a list, owned by the Python side
  CopySpec spec;
  int mediator = -1;   // narrow to this mediator's rows (-1: the whole batch)
};

// The exception a Gate raises to unwind the model when a mediator failed.
void set_abort_type(PyObject* type);

}  // namespace nnsight_fast

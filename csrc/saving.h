// `.save()` and the write-back's choice of saved variables, in C:
//
//   _native.configure_save(save_outside_bodies)   # saving.py: save() where no body runs
//   _native.save(value)                  # nnsight_fast.save(value): kept after the trace; returns value
//   object.save = _native.save_method    # value.save(): the same, bound like a method
//   _native.pick_saved(namespaces, saved)   # {name: value} of the namespaces' saved values
//
// In a body, save() hands the value to `current_mediator().tracer.record_save(value)`;
// elsewhere (a trace or session being set up) to the Python fallback. `saved` maps
// id(value) -> value.
#pragma once

#include <Python.h>

namespace nnsight_fast {

// Adds save, save_method, configure_save and pick_saved to `module`.
bool add_saving(PyObject* module);

}  // namespace nnsight_fast

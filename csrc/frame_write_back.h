// Writing a trace's saved values back into the variables of the frame that ran it.
//
//   _native.write_back(frame, {"hidden": tensor})   # after the `with` block: `hidden` is set
//
// A module's or class's namespace is updated directly; a function's variables through its
// f_locals snapshot (Python < 3.13), which is emptied afterwards: it would hold what the
// variables held until something reads f_locals again.
#pragma once

#include <Python.h>

namespace nnsight_fast {

// Adds write_back to `module`.
bool add_frame_write_back(PyObject* module);

}  // namespace nnsight_fast

// CapturedBody: a compiled `with` body bound to its caller's values.
//
//   body = _native.CapturedBody(function, arguments, frame)   # (capture.compile() makes them)
//   body.run(collect)    # function(collect, LoopEnd, *arguments); collect(locals) when it ends
//   body.function, body.arguments, body.frame                 # frame: None for a body made elsewhere
#pragma once

#include <Python.h>

namespace nnsight_fast {

// A new CapturedBody (new reference), or nullptr with an error set.
PyObject* new_captured_body(PyObject* function, PyObject* arguments, PyObject* frame);
// LoopEnd, the exception class every body function receives second.
void set_loop_end(PyObject* loop_end);
// Readies the CapturedBody type and adds it to `module`.
bool add_captured_body_type(PyObject* module);

}  // namespace nnsight_fast

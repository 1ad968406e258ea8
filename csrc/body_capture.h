// The capture of a `with` block's body, in C: Python skips the body, we run it ourselves.
//
//   _native.configure_capture(find_site, SkipBody, LoopEnd, NOP, drop_context, CapturedBlock.entered)
//   class CapturedBlock:
//       __enter__ = _native.block_enter      # arms the skip of the body in the calling frame
//       __exit__ = _native.block_exit        # runs self.run_block(body, capture) outside SkipBody
//
//   capture = _native.begin_capture(frame)   # the same by hand: arms the skip of the body in `frame`
//   if capture.skipped(kind):                # disarms; True when we skipped the body
//       body = capture.compile()             # CapturedBody(function, arguments, frame)
//       body.run(collect)                    # function(collect, LoopEnd, *arguments)
//
// Arming installs a C trace function on the thread (no Python call per event) that raises
// SkipBody as the body's first line starts in `frame`. When the thread already has a trace
// function (a debugger, coverage), that one stays and the capture is the frame's own trace
// function instead, as a callable. `find_site(filename, line)` (Python) parses the
// `with` statement once per code object and line; the site gives the body's first line,
// the names it reads, a dict of compiled bodies and `compile(parameters, late)`.
#pragma once

#include <Python.h>

namespace nnsight_fast {

// Readies the Capture type and the capture functions; adds them to `module`.
bool add_body_capture(PyObject* module);

}  // namespace nnsight_fast

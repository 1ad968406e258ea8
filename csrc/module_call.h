// ModuleCall: an Envoy's `__call__`, in C: `envoy(*args, **kwargs)` calls the wrapped
// module at once, with no Python frame (what keeps a wrapped model at bare speed).
//
//   class Envoy:
//       __call__ = _native.ModuleCall(_call_with_options)   # _call_with_options(envoy, *args, hook=..., **kw)
//
// The Envoy keeps its torch module in `__dict__["_module"]`. A call that passes `hook=`
// goes to the Python fallback, which owns that option's meaning.
#pragma once

#include <Python.h>

namespace nnsight_fast {

// Readies the ModuleCall type and adds it to `module` as `ModuleCall`.
bool add_module_call_type(PyObject* module);

}  // namespace nnsight_fast

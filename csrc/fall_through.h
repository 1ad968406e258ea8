// FallThrough: a base class whose missing attributes come from `_missing_attribute(name)`,
// in C: attributes found the usual way (instance dict, class, descriptors) cost what they
// cost on any object, with no Python `__getattr__` hook on every read.
//
//   class Envoy(ValueAccess, _native.FallThrough):
//       def _missing_attribute(self, name):     # only for names found nowhere
//           return getattr(self._module, name)
//
// (A Python class that defines `__getattr__` makes every attribute read go through
// CPython's slot hook, which looks `__getattr__` up again each time.)
#pragma once

#include <Python.h>

namespace nnsight_fast {

// Readies the FallThrough type and adds it to `module`.
bool add_fall_through_type(PyObject* module);

}  // namespace nnsight_fast

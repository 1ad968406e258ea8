// Batch narrowing and widening over the nested values a module passes around.
//
//   PyObject* mine = narrow_value(output, slot, batch);        // views of my rows
//   PyObject* full = widen_value(output, assigned, slot, batch); // my rows replaced
//
// Recurses through tuple, list, dict, namedtuple and dict-like model outputs
// (transformers' ModelOutput); leaves that are not batched tensors pass through.
// Both return new references, or nullptr with a Python error set.
#pragma once

#include <Python.h>

#include "cache_copy.h"
#include "dispatcher.h"

namespace nnsight_fast {

PyObject* narrow_value(PyObject* value, const MediatorSlot& slot, int64_t batch_size);
// The cache's copy of a nested value (cache_copy on every tensor).
PyObject* copy_value(PyObject* value, const CopySpec& spec);
PyObject* widen_value(PyObject* full, PyObject* part, const MediatorSlot& slot, int64_t batch_size);
// The batch size of a call's inputs: dim 0 of the first tensor with a dimension (positional
// arguments first, then keyword ones), 1 when there is none; -1 with a Python error set.
int64_t inputs_batch_size(PyObject* args, PyObject* kwargs);

}  // namespace nnsight_fast

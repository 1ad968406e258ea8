// Mounting `.save()` on every object, as nnsight does.
//
//   mount_on_object("save", save_function);   // now (1).save() calls save_function(1)
//
// The function goes into `object`'s type dict, so a class with its own `save`
// keeps it (the MRO finds the class's first).
#pragma once

#include <Python.h>

namespace nnsight_fast {

// Returns false with a Python error set on failure.
bool mount_on_object(const char* name, PyObject* function);
// Removes what mount_on_object put there (nothing when it is not there).
bool unmount_from_object(const char* name);

}  // namespace nnsight_fast

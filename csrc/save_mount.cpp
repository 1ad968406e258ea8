#include "save_mount.h"

namespace nnsight_fast {

namespace {

// Sets (function != nullptr) or removes `name` in `object`'s type dict.
bool change_object_dict(const char* name, PyObject* function) {
#if PY_VERSION_HEX >= 0x030C0000
  PyObject* dict = PyType_GetDict(&PyBaseObject_Type);
  if (dict == nullptr) return false;
#else
  PyObject* dict = Py_NewRef(PyBaseObject_Type.tp_dict);
#endif
  int status = 0;
  if (function != nullptr) {
    status = PyDict_SetItemString(dict, name, function);
  } else if (PyDict_GetItemString(dict, name) != nullptr) {
    status = PyDict_DelItemString(dict, name);
  }
  Py_DECREF(dict);
  if (status < 0) return false;
  PyType_Modified(&PyBaseObject_Type);
  return true;
}

}  // namespace

bool mount_on_object(const char* name, PyObject* function) { return change_object_dict(name, function); }

bool unmount_from_object(const char* name) { return change_object_dict(name, nullptr); }

}  // namespace nnsight_fast

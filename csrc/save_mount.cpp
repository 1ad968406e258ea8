#include "save_mount.h"

namespace nnsight_fast {

bool mount_on_object(const char* name, PyObject* function) {
#if PY_VERSION_HEX >= 0x030C0000
  PyObject* dict = PyType_GetDict(&PyBaseObject_Type);
  if (dict == nullptr) return false;
  const int status = PyDict_SetItemString(dict, name, function);
  Py_DECREF(dict);
#else
  const int status = PyDict_SetItemString(PyBaseObject_Type.tp_dict, name, function);
#endif
  if (status < 0) return false;
  PyType_Modified(&PyBaseObject_Type);
  return true;
}

}  // namespace nnsight_fast

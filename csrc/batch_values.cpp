#include "batch_values.h"

#include <torch/csrc/autograd/python_variable.h>

#include "batching.h"

namespace nnsight_fast {
namespace {

bool is_namedtuple(PyObject* value) {
  return PyTuple_Check(value) && !PyTuple_CheckExact(value) && PyObject_HasAttrString(value, "_fields");
}

// Builds a sequence of the same kind as `like` from the items of `items` (a list).
PyObject* rebuild_sequence(PyObject* like, PyObject* items) {
  if (PyList_Check(like)) {
    Py_INCREF(items);
    return items;
  }
  PyObject* tuple = PyList_AsTuple(items);
  if (tuple == nullptr || PyTuple_CheckExact(like)) return tuple;
  PyObject* out = is_namedtuple(like) ? PyObject_Call(reinterpret_cast<PyObject*>(Py_TYPE(like)), tuple, nullptr)
                                      : PyObject_CallOneArg(reinterpret_cast<PyObject*>(Py_TYPE(like)), tuple);
  Py_DECREF(tuple);
  return out;
}

// A shallow copy of a dict-like value that keeps its class (ModelOutput included).
PyObject* copy_mapping(PyObject* value) {
  if (PyDict_CheckExact(value)) return PyDict_New();
  PyObject* copy_module = PyImport_ImportModule("copy");
  if (copy_module == nullptr) return nullptr;
  PyObject* out = PyObject_CallMethod(copy_module, "copy", "O", value);
  Py_DECREF(copy_module);
  return out;
}

template <typename Leaf>
PyObject* map_structure(PyObject* value, PyObject* other, Leaf&& leaf);

// Maps `leaf(value_item, other_item)` over two parallel structures; `other` may be
// nullptr (one structure only). Returns a new reference.
template <typename Leaf>
PyObject* map_structure(PyObject* value, PyObject* other, Leaf&& leaf) {
  if (THPVariable_Check(value)) return leaf(value, other);
  if (PyTuple_Check(value) || PyList_Check(value)) {
    const Py_ssize_t n = PySequence_Size(value);
    const bool paired = other != nullptr;
    if (paired && !((PyTuple_Check(other) || PyList_Check(other)) && PySequence_Size(other) == n))
      return leaf(value, other);
    PyObject* items = PyList_New(n);
    if (items == nullptr) return nullptr;
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* a = PySequence_Fast_GET_ITEM(value, i);
      PyObject* b = paired ? PySequence_Fast_GET_ITEM(other, i) : nullptr;
      PyObject* mapped = map_structure(a, b, leaf);
      if (mapped == nullptr) {
        Py_DECREF(items);
        return nullptr;
      }
      PyList_SET_ITEM(items, i, mapped);
    }
    PyObject* out = rebuild_sequence(paired ? other : value, items);
    Py_DECREF(items);
    return out;
  }
  if (PyDict_Check(value)) {
    if (other != nullptr && !PyDict_Check(other)) return leaf(value, other);
    PyObject* source = other != nullptr ? other : value;
    PyObject* out = copy_mapping(source);
    if (out == nullptr) return nullptr;
    PyObject *key, *item;
    Py_ssize_t pos = 0;
    while (PyDict_Next(source, &pos, &key, &item)) {
      PyObject* mapped;
      if (other != nullptr) {
        PyObject* base = PyDict_GetItem(value, key);
        mapped = base != nullptr ? map_structure(base, item, leaf) : (Py_INCREF(item), item);
      } else {
        mapped = map_structure(item, nullptr, leaf);
      }
      if (mapped == nullptr || PyObject_SetItem(out, key, mapped) < 0) {
        Py_XDECREF(mapped);
        Py_DECREF(out);
        return nullptr;
      }
      Py_DECREF(mapped);
    }
    return out;
  }
  return leaf(value, other);
}

}  // namespace

PyObject* narrow_value(PyObject* value, const MediatorSlot& slot, int64_t batch_size) {
  return map_structure(value, nullptr, [&](PyObject* leaf, PyObject*) -> PyObject* {
    if (!THPVariable_Check(leaf)) {
      Py_INCREF(leaf);
      return leaf;
    }
    const at::Tensor& t = THPVariable_Unpack(leaf);
    if (!is_batched(t, batch_size)) {
      Py_INCREF(leaf);
      return leaf;
    }
    return THPVariable_Wrap(narrow_rows(t, slot.row_start, slot.row_count, batch_size));
  });
}

PyObject* copy_value(PyObject* value, const CopySpec& spec) {
  return map_structure(value, nullptr, [&](PyObject* leaf, PyObject*) -> PyObject* {
    if (!THPVariable_Check(leaf)) {
      Py_INCREF(leaf);
      return leaf;
    }
    try {
      return THPVariable_Wrap(cache_copy(THPVariable_Unpack(leaf), spec));
    } catch (const std::exception& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
      return nullptr;
    }
  });
}

PyObject* widen_value(PyObject* full, PyObject* part, const MediatorSlot& slot, int64_t batch_size) {
  return map_structure(full, part, [&](PyObject* base, PyObject* assigned) -> PyObject* {
    if (assigned == nullptr) {
      Py_INCREF(base);
      return base;
    }
    if (!THPVariable_Check(base) || !THPVariable_Check(assigned)) {
      Py_INCREF(assigned);
      return assigned;
    }
    try {
      return THPVariable_Wrap(widen_rows(THPVariable_Unpack(base), THPVariable_Unpack(assigned), slot.row_start,
                                         slot.row_count, batch_size));
    } catch (const std::exception& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
      return nullptr;
    }
  });
}

int64_t inputs_batch_size(PyObject* args, PyObject* kwargs) {
  auto rows = [](PyObject* value) -> int64_t {  // -2: not a tensor with a dimension
    if (!THPVariable_Check(value)) return -2;
    const at::Tensor& tensor = THPVariable_Unpack(value);
    return tensor.dim() > 0 ? tensor.size(0) : -2;
  };
  try {
    if (args != nullptr && PyTuple_Check(args)) {
      for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args); ++i) {
        const int64_t size = rows(PyTuple_GET_ITEM(args, i));
        if (size != -2) return size;
      }
    }
    if (kwargs != nullptr && PyDict_Check(kwargs)) {
      Py_ssize_t position = 0;
      PyObject *key, *value;
      while (PyDict_Next(kwargs, &position, &key, &value)) {
        const int64_t size = rows(value);
        if (size != -2) return size;
      }
    }
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return -1;
  }
  return 1;
}

}  // namespace nnsight_fast

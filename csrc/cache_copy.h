// The copy a cache keeps of a value: detached, moved and cast as asked.
//
//   CopySpec spec{/*detach=*/true, c10::Device("cpu"), std::nullopt};
//   at::Tensor kept = cache_copy(hidden, spec);
//
// Like `t.detach().to(device, dtype, non_blocking=True)`: no copy when nothing changes.
// Plain ATen: no Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <optional>

namespace nnsight_fast {

struct CopySpec {
  bool detach = true;
  std::optional<c10::Device> device;
  std::optional<c10::ScalarType> dtype;
};

at::Tensor cache_copy(const at::Tensor& t, const CopySpec& spec);

}  // namespace nnsight_fast

#include "cache_copy.h"

namespace nnsight_fast {

at::Tensor cache_copy(const at::Tensor& t, const CopySpec& spec) {
  at::Tensor out = spec.detach ? t.detach() : t;
  if (spec.device || spec.dtype) {
    out = out.to(spec.device.value_or(out.device()), spec.dtype.value_or(out.scalar_type()),
                 /*non_blocking=*/true, /*copy=*/false);
  }
  return out;
}

}  // namespace nnsight_fast

#include "batching.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace nnsight_fast {

bool is_batched(const at::Tensor& t, int64_t batch_size) {
  return t.defined() && t.dim() > 0 && t.size(0) == batch_size;
}

at::Tensor narrow_rows(const at::Tensor& t, int64_t start, int64_t count, int64_t batch_size) {
  if (!is_batched(t, batch_size)) return t;
  return t.narrow(0, start, count);
}

at::Tensor widen_rows(const at::Tensor& full, const at::Tensor& part, int64_t start, int64_t count,
                      int64_t batch_size) {
  if (!is_batched(full, batch_size)) return part;
  std::vector<int64_t> rows_shape(full.sizes().begin(), full.sizes().end());
  rows_shape[0] = count;
  const at::Tensor rows = part.to(full.dtype()).to(full.device()).expand(rows_shape);
  TORCH_CHECK(rows.sizes() == at::IntArrayRef(rows_shape), "assigned value of shape ", part.sizes(),
              " does not fit the invoke's rows of shape ", at::IntArrayRef(rows_shape));
  std::vector<at::Tensor> pieces;
  if (start > 0) pieces.push_back(full.narrow(0, 0, start));
  pieces.push_back(rows);
  const int64_t tail = batch_size - start - count;
  if (tail > 0) pieces.push_back(full.narrow(0, start + count, tail));
  return at::cat(pieces, 0);
}

}  // namespace nnsight_fast

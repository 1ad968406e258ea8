// Row views of a batch: what one invoke sees of a batched tensor, and writing it back.
//
//   at::Tensor mine = narrow_rows(hidden, /*start=*/2, /*count=*/3, /*batch=*/5);  // a view
//   at::Tensor full = widen_rows(hidden, replacement, 2, 3, 5);                    // rows 2..4 replaced
//
// A tensor takes part in batching when its first dimension equals the batch size;
// anything else passes through unchanged. Plain ATen: no Python.
#pragma once

#include <ATen/core/Tensor.h>

namespace nnsight_fast {

// True when `t` is laid out along the batch (dim 0 == batch_size).
bool is_batched(const at::Tensor& t, int64_t batch_size);

// The rows [start, start + count) of `t` as a view (in-place edits reach `t`),
// or `t` itself when it is not batched.
at::Tensor narrow_rows(const at::Tensor& t, int64_t start, int64_t count, int64_t batch_size);

// `full` with rows [start, start + count) replaced by `part`: a new tensor, so the
// value the model already holds is not mutated behind its back. Returns `part`
// unchanged when `full` is not batched. Broadcasts `part` to the rows' shape.
at::Tensor widen_rows(const at::Tensor& full, const at::Tensor& part, int64_t start, int64_t count,
                      int64_t batch_size);

}  // namespace nnsight_fast

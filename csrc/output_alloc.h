// How the input-checking code of the ops (csrc/*_inputs.h) allocates the outputs that are as large as
// an input: the CUDA ops with contiguous_empty_like, the CPU ops with cpu_output_like (a cache of freed
// buffers for large outputs, csrc/cpu/output_cache.h).
#pragma once
#include <ATen/ATen.h>

namespace ganfast {

using EmptyLike = at::Tensor (*)(const at::Tensor&);

inline at::Tensor contiguous_empty_like(const at::Tensor& t) { return at::empty_like(t, at::MemoryFormat::Contiguous); }

}  // namespace ganfast

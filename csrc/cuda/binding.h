// Tensor-facing helpers for the CUDA bindings (compiled only against a CUDA build of torch).
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels.cuh"

namespace ganfast {
namespace cuda {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    case at::kDouble: return DType::Float64;
    default: TORCH_CHECK(false, "ganfast (cuda): unsupported dtype ", t.scalar_type());
  }
}

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "ganfast (cuda): ", what, " failed: ", cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace ganfast

// Launchers of the CUDA kernels: raw pointers, sizes and a stream, no torch headers, so that nvcc
// compiles the kernels on a machine whose torch is a CPU build. The bindings (*_binding.cpp) that
// turn tensors into these arguments are compiled only against a CUDA build of torch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ganfast {
namespace cuda {

enum class DType : int { Float32 = 0, Float16, BFloat16, Float64 };

struct GanLossArgs {
  const void* real;  // may be null when the loss uses no real logits
  int64_t n_real;
  const void* fake;
  int64_t n_fake;
  int kind;
  bool generator;
  void* loss;       // one element, input dtype
  void* grad_real;  // n_real elements
  void* grad_fake;  // n_fake elements
  float* stats;     // 4 elements: real mean, fake mean, real acc, fake acc
};

cudaError_t gan_loss(const GanLossArgs& args, DType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace ganfast

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
  double* partials;  // gan_loss_workspace(n_real, n_fake) elements; unused (may be null) when that is 0
};

// Size of GanLossArgs::partials in doubles: 0 where one block takes the whole loss.
int64_t gan_loss_workspace(int64_t n_real, int64_t n_fake);
cudaError_t gan_loss(const GanLossArgs& args, DType dtype, cudaStream_t stream);

// Spectral norm (csrc/cuda/spectral_norm.cu). W3[a, r, b] = M[r, a * inner + b], contiguous. One call
// takes any number of layers of one dtype (all with the same n_iter and eps): 2 * n_iter + 1 launches
// (2 in eval) forward and 2 backward for up to 24 layers.
struct SpectralNormArgs {
  const void* w;   // outer * h * inner elements, weight dtype
  int64_t outer, h, inner;
  int64_t n_iter;  // 0: eval, sigma = u^T M v with the given u, v
  double eps;
  const float* u;  // h, fp32
  const float* v;  // outer * inner, fp32
  float* u_out;    // h: u' (training), u (eval)
  float* v_out;    // outer * inner: v' (training), v (eval)
  float* t;        // workspace: h floats
  float* s;        // workspace: outer * inner floats
  float* part;     // workspace: spectral_norm_partials(outer, h, inner) floats
  float* sigma;    // 1 float
  void* out;       // W / sigma, weight dtype
};
int64_t spectral_norm_partials(int64_t outer, int64_t h, int64_t inner);
cudaError_t spectral_norm_forward(const SpectralNormArgs* layers, int n_layers, DType dtype, cudaStream_t stream);

struct SpectralNormBackwardArgs {
  const void* grad;
  const void* w;
  int64_t outer, h, inner;
  double eps;
  const float* u;
  const float* v;
  const float* sigma;
  void* grad_w;
};
int64_t spectral_norm_backward_partials(int64_t outer, int64_t h, int64_t inner);
// partials[i]: spectral_norm_backward_partials(...) floats of workspace for layer i
cudaError_t spectral_norm_backward(const SpectralNormBackwardArgs* layers, float* const* partials, int n_layers,
                                   DType dtype, cudaStream_t stream);
// Gradient penalties (penalties.cu). One block per sample writes its norm, its penalty term and its
// row of d P/d g; a one-block kernel sums the terms in row order (deterministic).
struct GradPenaltyArgs {
  const void* g;  // rows x cols, input dtype
  int64_t rows, cols;
  int kind;       // 0 two-sided, 1 one-sided, 2 squared (csrc/common/penalties.h)
  double weight, center, inv_scale;
  void* grad;     // rows x cols, input dtype
  void* norms;    // rows, op-math dtype (float; double for double)
  void* terms;    // rows, op-math dtype (workspace)
  void* penalty;  // one element, op-math dtype
};

cudaError_t grad_penalty(const GradPenaltyArgs& args, DType dtype, cudaStream_t stream);

// x̂ = a·real + (1-a)·other per sample; perturb: real + (1-a)·c·std(real)·other (DRAGAN).
struct InterpolateArgs {
  const void* real;
  const void* other;
  const void* alpha;  // rows, op-math dtype
  int64_t rows, cols;
  bool perturb;
  double c;
  void* out;
  void* workspace;    // one op-math element: c·std(real)
};

cudaError_t gp_interpolate(const InterpolateArgs& args, DType dtype, cudaStream_t stream);

// DiffAugment (augment.cu; math in csrc/common/augment.h): one block per sample, forward (in = x)
// or backward (in = the upstream gradient).
struct AugmentArgs {
  const void* in;           // batch x channels x height x width, contiguous
  int64_t batch, channels, height, width;
  const float* color;       // batch x 3, or null: no color transforms
  const int32_t* geometry;  // batch x 6
  void* out;                // like in
};

cudaError_t diffaugment_forward(const AugmentArgs& args, DType dtype, cudaStream_t stream);
cudaError_t diffaugment_backward(const AugmentArgs& args, DType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace ganfast

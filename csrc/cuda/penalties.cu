// CUDA kernels of ganfast::grad_penalty_fused and ganfast::gp_interpolate (no torch headers).
// grad_penalty: one block per sample reduces s = Σ (g·inv_scale)² (fp32; fp64 for fp64) with CUB,
// writes n = sqrt(s + 1e-12), its term and d P/d g for its row; one block then sums the terms.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

#include "../common/penalties.h"
#include "common.cuh"
#include "kernels.cuh"

namespace ganfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSumThreads = 1024;
constexpr int kElemThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) gp_rows_kernel(GradPenaltyArgs a) {
  using T = typename OpMath<scalar_t>::type;
  using Reduce = cub::BlockReduce<T, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ T shared_coef;
  const int64_t row = blockIdx.x;
  const scalar_t* g = static_cast<const scalar_t*>(a.g) + row * a.cols;
  scalar_t* grad = static_cast<scalar_t*>(a.grad) + row * a.cols;
  const T inv_scale = T(a.inv_scale);
  T s = 0;
  for (int64_t j = threadIdx.x; j < a.cols; j += kThreads) {
    const T h = load(g, j) * inv_scale;
    s += h * h;
  }
  s = Reduce(tmp).Sum(s);
  if (threadIdx.x == 0) {
    T n, v, coef;
    gp_term<T>(a.kind, s, T(a.center), n, v, coef);
    static_cast<T*>(a.norms)[row] = n;
    static_cast<T*>(a.terms)[row] = v;
    // d P/d g = (w·inv_scale²/B) · coef · g
    shared_coef = T(a.weight * a.inv_scale * a.inv_scale / double(a.rows)) * coef;
  }
  __syncthreads();
  const T k = shared_coef;
  for (int64_t j = threadIdx.x; j < a.cols; j += kThreads) store(grad, j, k * load(g, j));
}

template <typename T>
__global__ void __launch_bounds__(kSumThreads) gp_mean_kernel(const T* terms, int64_t rows, double weight, T* out) {
  using Reduce = cub::BlockReduce<T, kSumThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  T s = 0;
  for (int64_t i = threadIdx.x; i < rows; i += kSumThreads) s += terms[i];
  s = Reduce(tmp).Sum(s);
  if (threadIdx.x == 0) *out = T(weight) * s / T(rows);
}

// out = c · std(x), unbiased, two passes in one block.
template <typename scalar_t>
__global__ void __launch_bounds__(kSumThreads) std_kernel(const scalar_t* x, int64_t n, double c,
                                                          typename OpMath<scalar_t>::type* out) {
  using T = typename OpMath<scalar_t>::type;
  using Reduce = cub::BlockReduce<T, kSumThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ T shared_mean;
  T s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) s += load(x, i);
  s = Reduce(tmp).Sum(s);
  if (threadIdx.x == 0) shared_mean = s / T(n);
  __syncthreads();
  const T mean = shared_mean;
  T m2 = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) { const T d = load(x, i) - mean; m2 += d * d; }
  m2 = Reduce(tmp).Sum(m2);
  if (threadIdx.x == 0) *out = T(c) * sqrt(m2 / T(n - 1));
}

template <typename scalar_t>
__global__ void interp_kernel(InterpolateArgs a) {
  using T = typename OpMath<scalar_t>::type;
  const int64_t n = a.rows * a.cols;
  const scalar_t* r = static_cast<const scalar_t*>(a.real);
  const scalar_t* o = static_cast<const scalar_t*>(a.other);
  const T* alpha = static_cast<const T*>(a.alpha);
  scalar_t* out = static_cast<scalar_t*>(a.out);
  const T scale = a.perturb ? *static_cast<const T*>(a.workspace) : T(0);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const T al = alpha[i / a.cols], x = load(r, i), y = load(o, i);
    store(out, i, a.perturb ? x + (T(1) - al) * (scale * y) : al * x + (T(1) - al) * y);
  }
}

template <typename scalar_t>
cudaError_t launch_gp(const GradPenaltyArgs& args, cudaStream_t stream) {
  using T = typename OpMath<scalar_t>::type;
  cudaError_t err = launch_kernel(gp_rows_kernel<scalar_t>, unsigned(args.rows), kThreads, 0, stream, args);
  if (err != cudaSuccess) return err;
  return launch_kernel(gp_mean_kernel<T>, 1, kSumThreads, 0, stream, static_cast<const T*>(args.terms), args.rows,
                       args.weight, static_cast<T*>(args.penalty));
}

template <typename scalar_t>
cudaError_t launch_interp(const InterpolateArgs& args, cudaStream_t stream) {
  using T = typename OpMath<scalar_t>::type;
  const int64_t n = args.rows * args.cols;
  if (args.perturb) {
    const cudaError_t err = launch_kernel(std_kernel<scalar_t>, 1, kSumThreads, 0, stream,
                                          static_cast<const scalar_t*>(args.real), n, args.c,
                                          static_cast<T*>(args.workspace));
    if (err != cudaSuccess) return err;
  }
  const int64_t blocks = (n + kElemThreads - 1) / kElemThreads;
  return launch_kernel(interp_kernel<scalar_t>, unsigned(blocks < 65535 * 8 ? blocks : 65535 * 8), kElemThreads, 0,
                       stream, args);
}

}  // namespace

cudaError_t grad_penalty(const GradPenaltyArgs& args, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch_gp<decltype(tag)>(args, stream); });
}

cudaError_t gp_interpolate(const InterpolateArgs& args, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch_interp<decltype(tag)>(args, stream); });
}

}  // namespace cuda
}  // namespace ganfast

// CUDA kernels of ganfast::diffaugment and ganfast::diffaugment_backward (no torch headers; math in
// csrc/common/augment.h). One block per sample: with color, a block reduction (CUB) of the image's
// sum (forward: for its mean μ; backward: of the gradient that reaches x, G), then a loop over the
// pixels in which each thread handles every channel of one pixel (the gather, the channel mean, the
// color map and the cutout). Arithmetic in fp32 (fp64 for fp64).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

#include "../common/augment.h"
#include "common.cuh"
#include "kernels.cuh"

namespace ganfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Whether output pixel (i, j) reads from inside the image and lies outside the cutout box.
__device__ __forceinline__ bool reads_inside(const Geometry& g, int64_t i, int64_t j, int64_t h, int64_t w) {
  const int64_t u = i + g.dy, v = j + g.dx;
  return u >= 0 && u < h && v >= 0 && v < w && !g.cut(i, j);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) forward_kernel(AugmentArgs a) {
  using T = typename OpMath<scalar_t>::type;
  using Reduce = cub::BlockReduce<T, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ T shared_mu;
  const int64_t s = blockIdx.x, C = a.channels, H = a.height, W = a.width, HW = H * W;
  const scalar_t* x = static_cast<const scalar_t*>(a.in) + s * C * HW;
  scalar_t* out = static_cast<scalar_t*>(a.out) + s * C * HW;
  const Geometry g = geometry_of(a.geometry, s);
  ColorCoef<T> cc{T(0), T(0), T(0)};
  T mu = T(0);
  if (a.color != nullptr) {
    cc = color_coef<T>(a.color, s);
    T sum = T(0);
    for (int64_t k = threadIdx.x; k < C * HW; k += kThreads) sum += load(x, k);
    sum = Reduce(tmp).Sum(sum);
    if (threadIdx.x == 0) shared_mu = sum / T(C * HW);
    __syncthreads();
    mu = shared_mu;
  }
  for (int64_t p = threadIdx.x; p < HW; p += kThreads) {
    const int64_t i = p / W, j = p % W;
    if (!reads_inside(g, i, j, H, W)) {
      for (int64_t c = 0; c < C; ++c) store(out, c * HW + p, T(0));
      continue;
    }
    const int64_t src = (i + g.dy) * W + (j + g.dx);
    if (a.color == nullptr) {
      for (int64_t c = 0; c < C; ++c) out[c * HW + p] = x[c * HW + src];
      continue;
    }
    T total = T(0);
    for (int64_t c = 0; c < C; ++c) total += load(x, c * HW + src);
    const T mean_p = total / T(C);
    const T common = cc.b * (mean_p - mu) + cc.beta;
    for (int64_t c = 0; c < C; ++c) {
      const T v = load(x, c * HW + src);
      store(out, c * HW + p, v + (cc.a * (v - mean_p) + common));
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) backward_kernel(AugmentArgs a) {
  using T = typename OpMath<scalar_t>::type;
  using Reduce = cub::BlockReduce<T, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ T shared_g;
  const int64_t s = blockIdx.x, C = a.channels, H = a.height, W = a.width, HW = H * W;
  const scalar_t* grad = static_cast<const scalar_t*>(a.in) + s * C * HW;
  scalar_t* out = static_cast<scalar_t*>(a.out) + s * C * HW;
  const Geometry g = geometry_of(a.geometry, s);
  ColorCoef<T> cc{T(0), T(0), T(0)};
  T k_pixel = T(0), k_all = T(0);
  if (a.color != nullptr) {
    cc = color_coef<T>(a.color, s);
    T sum = T(0);
    for (int64_t p = threadIdx.x; p < HW; p += kThreads)
      if (reads_inside(g, p / W, p % W, H, W))
        for (int64_t c = 0; c < C; ++c) sum += load(grad, c * HW + p);
    sum = Reduce(tmp).Sum(sum);
    if (threadIdx.x == 0) shared_g = sum;
    __syncthreads();
    k_pixel = (cc.b - cc.a) / T(C);
    k_all = cc.b * shared_g / T(C * HW);
  }
  for (int64_t q = threadIdx.x; q < HW; q += kThreads) {
    // source pixel q = (u, v), read by output pixel (u - dy, v - dx)
    const int64_t i = q / W - g.dy, j = q % W - g.dx;
    const bool reads = i >= 0 && i < H && j >= 0 && j < W && !g.cut(i, j);
    const int64_t src = reads ? i * W + j : 0;
    if (a.color == nullptr) {
      for (int64_t c = 0; c < C; ++c) store(out, c * HW + q, reads ? load(grad, c * HW + src) : T(0));
      continue;
    }
    T total = T(0);
    if (reads)
      for (int64_t c = 0; c < C; ++c) total += load(grad, c * HW + src);
    const T common = k_pixel * total - k_all;
    for (int64_t c = 0; c < C; ++c) {
      const T gv = reads ? load(grad, c * HW + src) : T(0);
      store(out, c * HW + q, gv + (cc.a * gv + common));
    }
  }
}

template <typename scalar_t, bool Backward>
cudaError_t launch(const AugmentArgs& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  return launch_kernel(Backward ? backward_kernel<scalar_t> : forward_kernel<scalar_t>, unsigned(args.batch), kThreads,
                       0, stream, args);
}

}  // namespace

cudaError_t diffaugment_forward(const AugmentArgs& args, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch<decltype(tag), false>(args, stream); });
}

cudaError_t diffaugment_backward(const AugmentArgs& args, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch<decltype(tag), true>(args, stream); });
}

}  // namespace cuda
}  // namespace ganfast

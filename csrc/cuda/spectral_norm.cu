// CUDA kernels of ganfast::spectral_norm_fused / _backward (no torch headers; see kernels.cuh).
// Per power iteration: t = M v (one warp per row, summing over the contiguous inner runs),
// normalize (one block), s = M^T u (one thread per column, rows in order: coalesced), normalize.
// sigma = ||s||^2 / max(||s||, eps) (= u^T M v exactly), then out = W / max(sigma, eps).
// fp32 arithmetic throughout (fp64 for fp64 weights is not offered by this kernel: fp32 u, v).
#include <cub/block/block_reduce.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "kernels.cuh"

namespace ganfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// t[r] = sum_c M[r, c] v[c]: one warp per row.
template <typename T>
__global__ void mv_kernel(const T* __restrict__ w, const float* __restrict__ v, float* __restrict__ t, int64_t O,
                          int64_t H, int64_t I) {
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= H) return;
  float acc = 0.f;
  for (int64_t a = 0; a < O; ++a) {
    const T* row = w + (a * H + r) * I;
    const float* vv = v + a * I;
    for (int64_t b = lane; b < I; b += 32) acc += to_opmath(row[b]) * vv[b];
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (lane == 0) t[r] = acc;
}

// s[c] = sum_r M[r, c] u[r]: one thread per column.
template <typename T>
__global__ void mtv_kernel(const T* __restrict__ w, const float* __restrict__ u, float* __restrict__ s, int64_t O,
                           int64_t H, int64_t I) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= O * I) return;
  const int64_t a = c / I, b = c % I;
  const T* col = w + a * H * I + b;
  float acc = 0.f;
  for (int64_t r = 0; r < H; ++r) acc += to_opmath(col[r * I]) * u[r];
  s[c] = acc;
}

// dst = src / max(||src||, eps) (one block); scalars[0] = ||src||. With sigma_out: sigma = ||s||^2/max(||s||, eps).
__global__ void normalize_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t n, double eps,
                                 float* scalars, float* sigma_out) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float s_norm;
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) acc += src[i] * src[i];
  const float total = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) {
    s_norm = sqrtf(total);
    scalars[0] = s_norm;
    if (sigma_out) *sigma_out = s_norm * s_norm / fmaxf(s_norm, float(eps));
  }
  __syncthreads();
  const float inv = 1.f / fmaxf(s_norm, float(eps));
  for (int64_t i = threadIdx.x; i < n; i += kThreads) dst[i] = src[i] * inv;
}

// sigma = sum_r u[r] t[r] (eval mode).
__global__ void vdot_kernel(const float* __restrict__ u, const float* __restrict__ t, int64_t n, float* sigma) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) acc += u[i] * t[i];
  const float total = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) *sigma = total;
}

template <typename T>
__global__ void scale_kernel(const T* __restrict__ w, const float* __restrict__ sigma, T* __restrict__ out, int64_t n,
                             double eps) {
  const float inv = 1.f / fmaxf(*sigma, float(eps));
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_opmath<T>(to_opmath(w[i]) * inv);
}

template <typename T>
__global__ void gw_dot_kernel(const T* __restrict__ g, const T* __restrict__ w, int64_t n, float* out) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  float acc = 0.f;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
    acc += to_opmath(g[i]) * to_opmath(w[i]);
  const float total = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) atomicAdd(out, total);
}

// dW = (G - k u[r] v[a * I + b]) / sigma, k = <G, W> / sigma (0 below eps: the clamp holds sigma).
template <typename T>
__global__ void backward_kernel(const T* __restrict__ g, const float* __restrict__ u, const float* __restrict__ v,
                                const float* __restrict__ gw, const float* __restrict__ sigma, T* __restrict__ out,
                                int64_t O, int64_t H, int64_t I, double eps) {
  const float s = *sigma;
  const float k = s >= float(eps) ? *gw / s : 0.f;
  const float inv = 1.f / fmaxf(s, float(eps));
  const int64_t n = O * H * I;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i % I, p = i / I, r = p % H, a = p / H;
    out[i] = from_opmath<T>((to_opmath(g[i]) - k * u[r] * v[a * I + b]) * inv);
  }
}

int grid_for(int64_t n) { return int((n + kThreads - 1) / kThreads < 4096 ? (n + kThreads - 1) / kThreads : 4096); }

template <typename T>
cudaError_t forward_impl(const SpectralNormArgs& a, cudaStream_t stream) {
  const T* w = static_cast<const T*>(a.w);
  const int64_t N = a.outer * a.inner, rows_per_block = kThreads / 32;
  const int mv_grid = int((a.h + rows_per_block - 1) / rows_per_block);
  if (a.n_iter == 0) {
    mv_kernel<T><<<mv_grid, kThreads, 0, stream>>>(w, a.v, a.t, a.outer, a.h, a.inner);
    vdot_kernel<<<1, kThreads, 0, stream>>>(a.u, a.t, a.h, a.sigma);
  }
  for (int64_t it = 0; it < a.n_iter; ++it) {
    mv_kernel<T><<<mv_grid, kThreads, 0, stream>>>(w, a.v, a.t, a.outer, a.h, a.inner);
    normalize_kernel<<<1, kThreads, 0, stream>>>(a.t, a.u, a.h, a.eps, a.scalars, nullptr);
    mtv_kernel<T><<<int((N + kThreads - 1) / kThreads), kThreads, 0, stream>>>(w, a.u, a.t, a.outer, a.h, a.inner);
    normalize_kernel<<<1, kThreads, 0, stream>>>(a.t, a.v, N, a.eps, a.scalars, it + 1 == a.n_iter ? a.sigma : nullptr);
  }
  const int64_t n = a.outer * a.h * a.inner;
  scale_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(w, a.sigma, static_cast<T*>(a.out), n, a.eps);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_impl(const SpectralNormBackwardArgs& a, cudaStream_t stream) {
  const int64_t n = a.outer * a.h * a.inner;
  cudaError_t err = cudaMemsetAsync(a.scratch, 0, sizeof(float), stream);
  if (err != cudaSuccess) return err;
  gw_dot_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const T*>(a.grad), static_cast<const T*>(a.w), n,
                                                         a.scratch);
  backward_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const T*>(a.grad), a.u, a.v, a.scratch, a.sigma,
                                                           static_cast<T*>(a.grad_w), a.outer, a.h, a.inner, a.eps);
  return cudaGetLastError();
}

}  // namespace

cudaError_t spectral_norm_forward(const SpectralNormArgs& args, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return forward_impl<float>(args, stream);
    case DType::Float16: return forward_impl<__half>(args, stream);
    case DType::BFloat16: return forward_impl<__nv_bfloat16>(args, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t spectral_norm_backward(const SpectralNormBackwardArgs& args, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return backward_impl<float>(args, stream);
    case DType::Float16: return backward_impl<__half>(args, stream);
    case DType::BFloat16: return backward_impl<__nv_bfloat16>(args, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace ganfast

// CUDA kernels of ganfast::spectral_norm_fused / _backward and of the multi-tensor forms (no torch
// headers; see kernels.cuh). The vector normalizations live inside the kernels, so a training-mode
// forward with one power iteration is 3 launches and the backward 2, however many layers a call
// takes (the layers travel by value in a kernel parameter, SnTable; each block finds its layer):
//   1. t = M v                       one warp per row (from the 2nd iteration on, v = s / max(||s||, eps),
//                                    ||s||^2 summed from the partials of launch 2)
//   2. u' = t / max(||t||, eps),     one thread per column; each block reduces ||t||^2 over all of t;
//      s = M^T u', partials of ||s||^2 (one per block)
//   3. sigma = ||s||^2 / max(||s||, eps) (= u'^T M v' exactly), v' = s / max(||s||, eps),
//      out = W / max(sigma, eps)     grid-stride over the elements; each block reduces the partials
// Eval (n_iter = 0): 1. partials of u^T (M v) per block; 3. sigma = their sum, u' = u, v' = v, out.
// Backward: 1. partials of <G, W> per block; 2. dW = (G - <G, W/sigma> u v^T) / sigma.
// Every reduction has a fixed shape (deterministic). fp32 arithmetic (fp64 weights are not offered).
#include <cub/block/block_reduce.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "kernels.cuh"

namespace ganfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // launch 1: one warp per row
constexpr int kMaxBlocksPerLayer = 4096;      // launch 3 and the backward: grid-stride beyond this

__host__ __device__ int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ int64_t elem_blocks(int64_t n) { return cdiv(n, kThreads) < kMaxBlocksPerLayer ? cdiv(n, kThreads) : kMaxBlocksPerLayer; }

// One layer of a forward call, with the first block of each launch's grid that is its.
struct SnLayer {
  SpectralNormArgs a;
  int64_t rows0, cols0, elems0;
};
template <int kCap> struct SnTable {
  int n;
  SnLayer layer[kCap];
};

struct SnBackwardLayer {
  SpectralNormBackwardArgs a;
  float* part;  // elem_blocks(n) partials of <G, W>
  int64_t blocks0;
};
template <int kCap> struct SnBackwardTable {
  int n;
  SnBackwardLayer layer[kCap];
};

// Index of the layer whose blocks (from `first` on, per layer) contain blockIdx.x.
template <typename Table, typename First>
__device__ int find_layer(const Table& tab, First first) {
  int l = 0;
  for (int i = 1; i < tab.n; ++i) l += first(tab.layer[i]) <= int64_t(blockIdx.x);
  return l;
}

// Sum of x[0:n] (of x[i]^2 with Square) over the block, in a fixed order, returned to every thread.
template <bool Square = false>
__device__ float block_sum(const float* x, int64_t n) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float total;
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) acc += Square ? x[i] * x[i] : x[i];
  acc = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) total = acc;
  __syncthreads();
  const float out = total;
  __syncthreads();
  return out;
}

// Launch 1: t[r] = sum_c M[r, c] v[c] (v = s / max(||s||, eps) when normalize_v); eval: part[block] =
// sum over the block's rows of u[r] t[r].
template <typename T, int kCap>
__global__ void __launch_bounds__(kThreads) mv_kernel(SnTable<kCap> tab, bool normalize_v, bool eval) {
  const SnLayer& L = tab.layer[find_layer(tab, [](const SnLayer& l) { return l.rows0; })];
  const SpectralNormArgs& a = L.a;
  const int64_t N = a.outer * a.inner;
  const float* v = normalize_v ? a.s : a.v;
  const float scale = normalize_v ? 1.f / fmaxf(sqrtf(block_sum(a.part, cdiv(N, kThreads))), float(a.eps)) : 1.f;
  const int64_t r = (int64_t(blockIdx.x) - L.rows0) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  float acc = 0.f;
  if (r < a.h) {
    const T* w = static_cast<const T*>(a.w);
    for (int64_t o = 0; o < a.outer; ++o) {
      const T* row = w + (o * a.h + r) * a.inner;
      const float* vv = v + o * a.inner;
      for (int64_t b = lane; b < a.inner; b += 32) acc += to_opmath(row[b]) * vv[b];
    }
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  const float t = acc * scale;
  if (!eval) {
    if (lane == 0 && r < a.h) a.t[r] = t;
    return;
  }
  __shared__ float dots[kRowsPerBlock];
  if (lane == 0) dots[threadIdx.x / 32] = r < a.h ? a.u[r] * t : 0.f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float d = 0.f;
    for (int i = 0; i < kRowsPerBlock; ++i) d += dots[i];
    a.part[int64_t(blockIdx.x) - L.rows0] = d;
  }
}

// Launch 2: u' = t / max(||t||, eps) (the layer's first block stores it), s[c] = sum_r M[r, c] u'[r],
// part[block] = the block's sum of s^2.
template <typename T, int kCap>
__global__ void __launch_bounds__(kThreads) mtv_kernel(SnTable<kCap> tab) {
  const SnLayer& L = tab.layer[find_layer(tab, [](const SnLayer& l) { return l.cols0; })];
  const SpectralNormArgs& a = L.a;
  const int64_t blk = int64_t(blockIdx.x) - L.cols0, N = a.outer * a.inner;
  const float denom = fmaxf(sqrtf(block_sum<true>(a.t, a.h)), float(a.eps));
  if (blk == 0)
    for (int64_t r = threadIdx.x; r < a.h; r += kThreads) a.u_out[r] = a.t[r] / denom;
  const int64_t c = blk * kThreads + threadIdx.x;
  float s = 0.f;
  if (c < N) {
    const int64_t o = c / a.inner, b = c % a.inner;
    const T* col = static_cast<const T*>(a.w) + o * a.h * a.inner + b;
    for (int64_t r = 0; r < a.h; ++r) s += to_opmath(col[r * a.inner]) * (a.t[r] / denom);
    a.s[c] = s;
  }
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const float ss = Reduce(tmp).Sum(s * s);
  if (threadIdx.x == 0) a.part[blk] = ss;
}

// Launch 3: sigma, v' (and u' in eval), out = W / max(sigma, eps).
template <typename T, int kCap>
__global__ void __launch_bounds__(kThreads) finish_kernel(SnTable<kCap> tab, bool eval) {
  const SnLayer& L = tab.layer[find_layer(tab, [](const SnLayer& l) { return l.elems0; })];
  const SpectralNormArgs& a = L.a;
  const int64_t N = a.outer * a.inner, n = N * a.h;
  const float total = block_sum(a.part, eval ? cdiv(a.h, kRowsPerBlock) : cdiv(N, kThreads));
  const float norm = fmaxf(sqrtf(total), float(a.eps));
  const float sigma = eval ? total : total / norm;
  const int64_t blk = int64_t(blockIdx.x) - L.elems0, stride = elem_blocks(n) * kThreads;
  if (blk == 0 && threadIdx.x == 0) *a.sigma = sigma;
  const float inv = 1.f / fmaxf(sigma, float(a.eps));
  const T* w = static_cast<const T*>(a.w);
  T* out = static_cast<T*>(a.out);
  for (int64_t i = blk * kThreads + threadIdx.x; i < n; i += stride) {
    if (i < N) a.v_out[i] = eval ? a.v[i] : a.s[i] / norm;
    if (eval && i < a.h) a.u_out[i] = a.u[i];
    out[i] = from_opmath<T>(to_opmath(w[i]) * inv);
  }
}

// Backward launch 1: part[block] = the block's sum of G * W.
template <typename T, int kCap>
__global__ void __launch_bounds__(kThreads) gw_dot_kernel(SnBackwardTable<kCap> tab) {
  const SnBackwardLayer& L = tab.layer[find_layer(tab, [](const SnBackwardLayer& l) { return l.blocks0; })];
  const SpectralNormBackwardArgs& a = L.a;
  const int64_t n = a.outer * a.h * a.inner, blk = int64_t(blockIdx.x) - L.blocks0;
  const T* g = static_cast<const T*>(a.grad);
  const T* w = static_cast<const T*>(a.w);
  float acc = 0.f;
  for (int64_t i = blk * kThreads + threadIdx.x; i < n; i += elem_blocks(n) * kThreads)
    acc += to_opmath(g[i]) * to_opmath(w[i]);
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  acc = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) L.part[blk] = acc;
}

// Backward launch 2: dW = (G - k u[r] v[a * I + b]) / sigma, k = <G, W> / sigma (0 below eps: the
// clamp holds sigma).
template <typename T, int kCap>
__global__ void __launch_bounds__(kThreads) backward_kernel(SnBackwardTable<kCap> tab) {
  const SnBackwardLayer& L = tab.layer[find_layer(tab, [](const SnBackwardLayer& l) { return l.blocks0; })];
  const SpectralNormBackwardArgs& a = L.a;
  const int64_t n = a.outer * a.h * a.inner, blk = int64_t(blockIdx.x) - L.blocks0;
  const float gw = block_sum(L.part, elem_blocks(n));
  const float s = *a.sigma, eps = float(a.eps);
  const float k = s >= eps ? gw / s : 0.f;
  const float inv = 1.f / fmaxf(s, eps);
  const T* g = static_cast<const T*>(a.grad);
  T* out = static_cast<T*>(a.grad_w);
  for (int64_t i = blk * kThreads + threadIdx.x; i < n; i += elem_blocks(n) * kThreads) {
    const int64_t b = i % a.inner, p = i / a.inner, r = p % a.h, o = p / a.h;
    out[i] = from_opmath<T>((to_opmath(g[i]) - k * a.u[r] * a.v[o * a.inner + b]) * inv);
  }
}

// The launches of one table of layers: 2 * n_iter + 1 (2 in eval).
template <typename T, int kCap>
cudaError_t forward_table(const SpectralNormArgs* layers, int n, int64_t n_iter, cudaStream_t stream) {
  SnTable<kCap> tab{};
  tab.n = n;
  int64_t rows = 0, cols = 0, elems = 0;
  for (int i = 0; i < n; ++i) {
    const SpectralNormArgs& a = layers[i];
    tab.layer[i] = SnLayer{a, rows, cols, elems};
    rows += cdiv(a.h, kRowsPerBlock);
    cols += cdiv(a.outer * a.inner, kThreads);
    elems += elem_blocks(a.outer * a.h * a.inner);
  }
  const bool eval = n_iter == 0;
  cudaError_t err = cudaSuccess;
  for (int64_t it = 0; it < (eval ? 1 : n_iter) && err == cudaSuccess; ++it) {
    err = launch_kernel(mv_kernel<T, kCap>, unsigned(rows), kThreads, 0, stream, tab, it > 0, eval);
    if (!eval && err == cudaSuccess) err = launch_kernel(mtv_kernel<T, kCap>, unsigned(cols), kThreads, 0, stream, tab);
  }
  if (err == cudaSuccess) err = launch_kernel(finish_kernel<T, kCap>, unsigned(elems), kThreads, 0, stream, tab, eval);
  return err;
}

template <typename T, int kCap>
cudaError_t backward_table(const SpectralNormBackwardArgs* layers, float* const* parts, int n, cudaStream_t stream) {
  SnBackwardTable<kCap> tab{};
  tab.n = n;
  int64_t blocks = 0;
  for (int i = 0; i < n; ++i) {
    tab.layer[i] = SnBackwardLayer{layers[i], parts[i], blocks};
    blocks += elem_blocks(layers[i].outer * layers[i].h * layers[i].inner);
  }
  cudaError_t err = launch_kernel(gw_dot_kernel<T, kCap>, unsigned(blocks), kThreads, 0, stream, tab);
  if (err == cudaSuccess) err = launch_kernel(backward_kernel<T, kCap>, unsigned(blocks), kThreads, 0, stream, tab);
  return err;
}

// Layers per multi-tensor launch: the table (about 150 bytes a layer) stays under the 4 KB of
// kernel parameters that every CUDA version takes; more layers take more launches.
constexpr int kMultiCap = 24;

template <typename T>
cudaError_t forward_layers(const SpectralNormArgs* layers, int n, int64_t n_iter, cudaStream_t stream) {
  if (n == 1) return forward_table<T, 1>(layers, 1, n_iter, stream);
  for (int at = 0; at < n; at += kMultiCap) {
    const cudaError_t err = forward_table<T, kMultiCap>(layers + at, n - at < kMultiCap ? n - at : kMultiCap, n_iter,
                                                        stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t backward_layers(const SpectralNormBackwardArgs* layers, float* const* parts, int n, cudaStream_t stream) {
  if (n == 1) return backward_table<T, 1>(layers, parts, 1, stream);
  for (int at = 0; at < n; at += kMultiCap) {
    const cudaError_t err =
        backward_table<T, kMultiCap>(layers + at, parts + at, n - at < kMultiCap ? n - at : kMultiCap, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename F> cudaError_t dispatch_sn_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(float{});
    case DType::Float16: return f(__half{});
    case DType::BFloat16: return f(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int64_t spectral_norm_partials(int64_t outer, int64_t h, int64_t inner) {
  const int64_t rows = cdiv(h, kRowsPerBlock), cols = cdiv(outer * inner, kThreads);
  return rows > cols ? rows : cols;
}

int64_t spectral_norm_backward_partials(int64_t outer, int64_t h, int64_t inner) {
  return elem_blocks(outer * h * inner);
}

cudaError_t spectral_norm_forward(const SpectralNormArgs* layers, int n_layers, DType dtype, cudaStream_t stream) {
  if (n_layers <= 0) return cudaSuccess;
  return dispatch_sn_dtype(dtype, [&](auto tag) {
    return forward_layers<decltype(tag)>(layers, n_layers, layers[0].n_iter, stream);
  });
}

cudaError_t spectral_norm_backward(const SpectralNormBackwardArgs* layers, float* const* partials, int n_layers,
                                   DType dtype, cudaStream_t stream) {
  if (n_layers <= 0) return cudaSuccess;
  return dispatch_sn_dtype(dtype, [&](auto tag) {
    return backward_layers<decltype(tag)>(layers, partials, n_layers, stream);
  });
}

}  // namespace cuda
}  // namespace ganfast

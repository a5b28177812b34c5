// Device helpers shared by the CUDA kernels (no torch headers): the type arithmetic runs in
// (float for half/bfloat16/float, double for double) and loads/stores converting to and from it.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "kernels.cuh"

namespace ganfast {
namespace cuda {

template <typename T> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename OpMath<T>::type to_opmath(T x) {
  return static_cast<typename OpMath<T>::type>(x);
}
template <> __device__ __forceinline__ float to_opmath<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_opmath<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T, typename V> __device__ __forceinline__ T from_opmath(V v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_opmath<__half, float>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_opmath<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}

template <typename T> __device__ __forceinline__ typename OpMath<T>::type load(const T* p, int64_t i) {
  return to_opmath(p[i]);
}
template <typename T, typename V> __device__ __forceinline__ void store(T* p, int64_t i, V v) {
  p[i] = from_opmath<T>(v);
}

#ifdef GANFAST_COUNT_LAUNCHES
// The counting build (tests/cuda_launch_count.cu, ganfast.bench.launches): launch_kernel counts
// instead of launching, so the launchers run on a machine without a GPU.
inline int launch_count = 0;
#endif

// Every kernel launch of a launcher goes through here (tests/test_cuda_launch_count.py rejects a raw
// `<<<` or an async memset/copy elsewhere in csrc/cuda), so that the counting build sees them all.
template <typename... KernelArgs, typename... Args>
cudaError_t launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, Args&&... args) {
#ifdef GANFAST_COUNT_LAUNCHES
  (void)kernel;
  ++launch_count;
  return cudaSuccess;
#else
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
#endif
}

// Calls f(scalar_t{}) for the element type `dtype` names: each launcher's dtype switch.
template <typename F> cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(float{});
    case DType::Float16: return f(__half{});
    case DType::BFloat16: return f(__nv_bfloat16{});
    case DType::Float64: return f(double{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace ganfast

// Device helpers shared by the CUDA kernels (no torch headers): the type arithmetic runs in
// (float for half/bfloat16/float, double for double) and loads/stores converting to and from it.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

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

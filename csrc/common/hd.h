// GF_HD marks the helpers of csrc/common/*.h that the C++ (CPU) kernels and the CUDA kernels share:
// host and device functions under nvcc, plain inline functions elsewhere.
#pragma once

#ifndef GF_HD
#if defined(__CUDACC__)
#define GF_HD __host__ __device__ __forceinline__
#else
#define GF_HD inline
#endif
#endif

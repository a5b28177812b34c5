// Output buffers of the CPU ops, reused once freed (output_cache.cpp).
#pragma once
#include <ATen/ATen.h>

namespace ganfast {

// Outputs from this size on come from the cache. Fresh memory of that size comes from the OS (glibc
// maps large blocks, and trims the heap above them when they are freed) and costs a page fault per
// 4 KiB on its first write: measured 2016 faults per d_loss call at B = 1M (two 4 MiB gradients),
// and ~150 us per 2.4 MB of spectral norm output, more than the kernels writing them. Below it,
// malloc serves freed heap memory with no fault (none measured at B = 57600, 225 KiB).
constexpr size_t kCachedOutputBytes = size_t(1) << 20;

// A contiguous CPU tensor of t's shape and dtype (uninitialized); from kCachedOutputBytes on, its
// memory is a freed output buffer of the same size when the cache holds one (at most 256 MiB of
// unused buffers are held).
at::Tensor cpu_output_like(const at::Tensor& t);

}  // namespace ganfast

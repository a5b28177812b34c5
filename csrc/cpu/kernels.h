// The CPU kernels compiled once per capability (csrc/cpu/vec/*.cpp, built by setup.py with
// -DCPU_CAPABILITY=DEFAULT, AVX2 (-mavx2 -mfma -mf16c) and AVX512 (-mavx512f/bw/vl/dq -mfma)),
// each copy in its own namespace ganfast::<CPU_CAPABILITY>. The tensor-facing ops (csrc/cpu/*.cpp,
// compiled for baseline x86-64) fill these argument structs and call the copy that
// cpu_capability() picks (capability.cpp). Raw pointers only: no tensors cross this boundary.
#pragma once
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../common/gan_loss.h"

namespace ganfast {

enum class CpuCapability : int { Default = 0, Avx2 = 1, Avx512 = 2 };

// The capability the kernels run with now: the best this CPU supports, lowered by the environment
// variable GANFAST_CPU_CAPABILITY=default|avx2|avx512, or set by ganfast_cpu::set_capability.
CpuCapability cpu_capability();

// Outputs of at least this many bytes that nothing reads soon (SN's dW) are written around the caches
// (non-temporal stores), and outputs read next (SN's W / sigma, read by the layer's matmul) from twice
// it: half the last-level cache that CPU 0 shares (Linux's sysfs; 16 MiB when it is not found), or
// what ganfast_cpu::set_nontemporal_min_bytes set.
int64_t nontemporal_min_bytes();

struct GanLossArgs {
  c10::ScalarType dtype;
  const void* real;  // nreal elements (0 when the loss has no real term)
  int64_t nreal;
  const void* fake;
  int64_t nfake;
  LossSpec spec;
  void* grad_real;  // d loss / d real (nreal elements), d loss / d fake (nfake)
  void* grad_fake;
  void* loss;       // one element of dtype
  float* stats;     // 4 floats, see Stat
};

struct GradPenaltyArgs {
  c10::ScalarType dtype;
  const void* g;  // rows x cols, contiguous
  int64_t rows, cols;
  int kind;
  double weight, center, inv_scale;
  void* grad;     // rows x cols, dtype
  void* norms;    // rows, op-math dtype (double for double, else float)
  void* penalty;  // one element, op-math dtype
};

struct InterpolateArgs {
  c10::ScalarType dtype;
  const void* real;   // rows x cols
  const void* other;  // rows x cols: fake, or the noise u when perturb
  const void* alpha;  // rows, op-math dtype
  int64_t rows, cols;
  bool perturb;
  double c;
  void* out;  // rows x cols
};

// DiffAugment (csrc/common/augment.h): forward (in = x) or backward (in = the upstream gradient).
struct AugmentArgs {
  c10::ScalarType dtype;
  const void* in;           // batch x channels x height x width, contiguous
  int64_t batch, channels, height, width;
  const float* color;       // batch x 3, or null: no color transforms
  const int32_t* geometry;  // batch x 6
  void* out;                // like in
};

// Σ x² over n contiguous elements (one chunk of a gradient: grad_norm.cpp), in double.
struct SumSquaresArgs {
  c10::ScalarType dtype;
  const void* x;
  int64_t n;
  double* out;
};

#define GANFAST_DECLARE_CPU_KERNELS(CAP)                   \
  namespace CAP {                                           \
  void gan_loss_kernel(const GanLossArgs& a);               \
  void grad_penalty_kernel(const GradPenaltyArgs& a);       \
  void interpolate_kernel(const InterpolateArgs& a);        \
  void sum_squares_kernel(const SumSquaresArgs& a);         \
  void augment_forward_kernel(const AugmentArgs& a);        \
  void augment_backward_kernel(const AugmentArgs& a);       \
  }

GANFAST_DECLARE_CPU_KERNELS(DEFAULT)
#ifdef GANFAST_HAVE_AVX2
GANFAST_DECLARE_CPU_KERNELS(AVX2)
#endif
#ifdef GANFAST_HAVE_AVX512
GANFAST_DECLARE_CPU_KERNELS(AVX512)
#endif
#undef GANFAST_DECLARE_CPU_KERNELS

// Calls CAP::fn(args) for the active capability.
#define GANFAST_CALL_CPU_KERNEL(fn, args) ::ganfast::detail::call_kernel(args, GANFAST_KERNEL_TABLE(fn))

namespace detail {
template <typename Args>
using Kernel = void (*)(const Args&);
template <typename Args>
inline void call_kernel(const Args& args, Kernel<Args> def, Kernel<Args> avx2, Kernel<Args> avx512) {
  switch (cpu_capability()) {
    case CpuCapability::Avx512: if (avx512) return avx512(args); [[fallthrough]];
    case CpuCapability::Avx2: if (avx2) return avx2(args); [[fallthrough]];
    default: return def(args);
  }
}
}  // namespace detail

#ifdef GANFAST_HAVE_AVX2
#define GANFAST_AVX2_FN(fn) &AVX2::fn
#else
#define GANFAST_AVX2_FN(fn) nullptr
#endif
#ifdef GANFAST_HAVE_AVX512
#define GANFAST_AVX512_FN(fn) &AVX512::fn
#else
#define GANFAST_AVX512_FN(fn) nullptr
#endif
#define GANFAST_KERNEL_TABLE(fn) &DEFAULT::fn, GANFAST_AVX2_FN(fn), GANFAST_AVX512_FN(fn)

}  // namespace ganfast

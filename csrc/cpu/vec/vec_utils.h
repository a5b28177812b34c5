// Helpers of the per-capability kernels (csrc/cpu/vec/*.cpp): loads and stores of any floating
// dtype as op-math vectors (float, or double for double), with partial tails, and block sums.
// Included only by files compiled per capability: everything here lives in the inline namespace
// at::vec::CPU_CAPABILITY or in ganfast::CPU_CAPABILITY, so each copy keeps its own.
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <array>
#include <cstdint>
#include <type_traits>

namespace ganfast {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Half and bfloat16: a whole vector converts with the CPU's instructions on AVX2 and AVX-512 (F16C's
// vcvtph2ps / vcvtps2ph; shifts with round-to-nearest-even for bfloat16), through ATen's helpers; a
// partial vector, and every vector of the default copy, one element at a time through c10's
// conversions. Both round to nearest even, so they give the same numbers; only a NaN's bits may
// differ (each writes a quiet NaN). The element loop had made half and bfloat16 losses 2-3x slower
// than float32 (d_loss hinge, B = 1M: fp16 2.0 ms, bf16 1.4 ms, fp32 0.67 ms on a Zen 2).
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#define GANFAST_VEC_HALF_CONVERT 1
#endif

template <typename scalar_t>
constexpr bool kHalfOrBFloat16 = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;

// Loads n (1..size) elements as op-math values; lanes from n on are 0.
template <typename scalar_t, typename T = opmath_t<scalar_t>>
inline Vectorized<T> load(const scalar_t* p, int64_t n) {
  using Vec = Vectorized<T>;
  if constexpr (std::is_same_v<scalar_t, T>) {
    return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
  } else {
#ifdef GANFAST_VEC_HALF_CONVERT
    if constexpr (kHalfOrBFloat16<scalar_t>) {
      if (n == Vec::size()) {
        Vec out;
        if constexpr (std::is_same_v<scalar_t, c10::Half>) at::vec::load_fp32_from_fp16(p, out);
        else at::vec::load_fp32_from_bf16(p, out);
        return out;
      }
    }
#endif
    T buf[Vec::size()] = {};
    for (int64_t j = 0; j < n; ++j) buf[j] = T(p[j]);
    return Vec::loadu(buf);
  }
}

// Stores the first n (1..size) lanes of v, converted to scalar_t.
template <typename scalar_t, typename T>
inline void store(scalar_t* p, const Vectorized<T>& v, int64_t n) {
  using Vec = Vectorized<T>;
  if constexpr (std::is_same_v<scalar_t, T>) {
    v.store(p, int(n));
  } else {
#ifdef GANFAST_VEC_HALF_CONVERT
    if constexpr (kHalfOrBFloat16<scalar_t> && std::is_same_v<T, float>) {
      if (n == Vec::size()) {
#if defined(CPU_CAPABILITY_AVX512)
        const __m512 x = v;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), std::is_same_v<scalar_t, c10::Half>
                                                                 ? at::vec::cvtfp32_fp16(x) : at::vec::cvtfp32_bf16(x));
#else
        const __m256 x = v;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), std::is_same_v<scalar_t, c10::Half>
                                                            ? at::vec::cvtfp32_fp16(x) : at::vec::cvtfp32_bf16(x));
#endif
        return;
      }
    }
#endif
    T buf[Vec::size()];
    v.store(buf);
    for (int64_t j = 0; j < n; ++j) p[j] = scalar_t(buf[j]);
  }
}

// All-ones lanes below n, zero lanes from n on (for the last, partial vector).
template <typename T>
inline Vectorized<T> lanes_below(int64_t n) {
  return Vectorized<T>::arange(T(0), T(1)) < Vectorized<T>(T(n));
}

// Comparisons and selection with the CPU's own masks: AVX-512 keeps a comparison in a mask register
// (__mmask16 / __mmask8) and selects with one masked blend, where ATen's Vectorized widens each
// comparison into a vector and turns it back into a mask for every blendv (two more instructions).
// Elsewhere the mask is the Vectorized comparison. Both are ordered and quiet: NaN compares false.
#if defined(CPU_CAPABILITY_AVX512)
inline __mmask16 less(const Vectorized<float>& a, const Vectorized<float>& b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
inline __mmask16 greater(const Vectorized<float>& a, const Vectorized<float>& b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
inline __mmask8 less(const Vectorized<double>& a, const Vectorized<double>& b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
inline __mmask8 greater(const Vectorized<double>& a, const Vectorized<double>& b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
// if_true where mask is set, else if_false
inline Vectorized<float> select(__mmask16 mask, const Vectorized<float>& if_true, const Vectorized<float>& if_false) {
  return _mm512_mask_blend_ps(mask, if_false, if_true);
}
inline Vectorized<double> select(__mmask8 mask, const Vectorized<double>& if_true, const Vectorized<double>& if_false) {
  return _mm512_mask_blend_pd(mask, if_false, if_true);
}
#else
template <typename T>
inline Vectorized<T> less(const Vectorized<T>& a, const Vectorized<T>& b) { return a < b; }
template <typename T>
inline Vectorized<T> greater(const Vectorized<T>& a, const Vectorized<T>& b) { return a > b; }
template <typename T>
inline Vectorized<T> select(const Vectorized<T>& mask, const Vectorized<T>& if_true, const Vectorized<T>& if_false) {
  return Vectorized<T>::blendv(if_false, if_true, mask);
}
#endif

// x << bits in each 32-bit lane, by an immediate: Vectorized's operator<< takes a vector of counts
// and guards each against counts of 32 and more (a compare and an and besides the shift, on AVX2).
template <int bits>
inline Vectorized<int32_t> shift_left(const Vectorized<int32_t>& x) {
  static_assert(bits >= 0 && bits < 32, "shift_left: 0 to 31 bits");
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_slli_epi32(x, bits);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_slli_epi32(x, bits);
#else
  return x << Vectorized<int32_t>(bits);
#endif
}

// How many lanes of x are above zero (above = true) or below it: the comparison's mask and a
// popcount with AVX-512 and AVX2 (counting in a float vector takes an add and a conversion of the mask
// besides). Lanes that hold 0 or NaN count in neither.
template <typename T>
inline int64_t count_sign(const Vectorized<T>& x, bool above) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  const Vectorized<T> zero(T(0));
  const auto mask = above ? greater(x, zero) : less(x, zero);
#if defined(CPU_CAPABILITY_AVX512)
  return __builtin_popcount(mask);
#else
  if constexpr (std::is_same_v<T, float>) return __builtin_popcount(_mm256_movemask_ps(mask));
  else return __builtin_popcount(_mm256_movemask_pd(mask));
#endif
#else
  T buf[Vectorized<T>::size()];
  x.store(buf);
  int64_t n = 0;
  for (T e : buf) n += above ? e > T(0) : e < T(0);
  return n;
#endif
}

// Vector sums are kept in op-math precision for a block of at most kBlockVecs vectors, then added
// into per-lane double sums: rounding stays that of a 64-term sum, and the order of every addition
// is fixed by the data layout alone (deterministic for any thread count).
constexpr int64_t kBlockVecs = 64;

// The lanes of a float vector as two double vectors (lanes [0, W/2) and [W/2, W)), exactly, from v's
// register: GCC 12 made a loop over the lanes a conversion and an add per lane (6 sums of 16 lanes
// every 64 vectors of the loss kernel: about a third of the time of its cheap terms), and a vector
// version that went through memory made it keep the kernel's accumulators in memory too.
inline std::array<Vectorized<double>, 2> widen(const Vectorized<float>& v) {
  using DVec = Vectorized<double>;
  static_assert(Vectorized<float>::size() == 2 * DVec::size(), "widen: a float vector is two double vectors");
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 x = v;
  return {DVec(_mm512_cvtps_pd(_mm512_castps512_ps256(x))), DVec(_mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1)))};
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 x = v;
  return {DVec(_mm256_cvtps_pd(_mm256_castps256_ps128(x))), DVec(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)))};
#else
  float buf[Vectorized<float>::size()];
  v.store(buf);
  double wide[Vectorized<float>::size()];
  for (int j = 0; j < Vectorized<float>::size(); ++j) wide[j] = double(buf[j]);
  return {DVec::loadu(wide), DVec::loadu(wide + DVec::size())};
#endif
}

template <typename T, int K>
struct LaneSums {
  static constexpr int W = Vectorized<T>::size();
  double lane[K][W] = {};
  void add(int k, const Vectorized<T>& v) {
    using DVec = Vectorized<double>;
    double* l = lane[k];
    if constexpr (std::is_same_v<T, float>) {
      const auto halves = widen(v);
      for (int p = 0; p < 2; ++p) (DVec::loadu(l + p * DVec::size()) + halves[p]).store(l + p * DVec::size());
    } else {
      (DVec::loadu(l) + v).store(l);
    }
  }
  // Adds W values already in double (a block's lanes of a WideLanes).
  void add(int k, const double* values) {
    for (int j = 0; j < W; ++j) lane[k][j] += values[j];
  }
  double total(int k) const {
    double s = 0;
    for (int j = 0; j < W; ++j) s += lane[k][j];
    return s;
  }
};

// A block's per-lane sums of op-math vectors kept in double: a float vector is widened (exactly) as
// it is added. The statistics' sums of the logits use it, because a mean of logits may cancel to a
// small fraction of their magnitudes: float block sums then lose digits that a mean's user (and
// relavg, which shifts by it) would see (a mean of 123 float logits off by 3e-5 of itself).
template <typename T>
struct WideLanes {
  static constexpr int W = Vectorized<T>::size();
  using DVec = Vectorized<double>;
  static constexpr int kParts = W / DVec::size();  // 2 for float, 1 for double
  DVec part[kParts];
  WideLanes() {
    for (auto& p : part) p = DVec(0.0);
  }
  void add(const Vectorized<T>& v) {
    if constexpr (std::is_same_v<T, double>) {
      part[0] += v;
    } else {
      const auto halves = widen(v);
      part[0] += halves[0];
      part[1] += halves[1];
    }
  }
  // Lane j of the vectors added so far, for j < W, added into out[j].
  void add_into(double* out) const {
    for (int p = 0; p < kParts; ++p) (DVec::loadu(out + p * DVec::size()) + part[p]).store(out + p * DVec::size());
  }
};

}  // namespace CPU_CAPABILITY
}  // namespace ganfast

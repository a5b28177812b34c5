// Helpers of the per-capability kernels (csrc/cpu/vec/*.cpp): loads and stores of any floating
// dtype as op-math vectors (float, or double for double), with partial tails, and block sums.
// Included only by files compiled per capability: everything here lives in the inline namespace
// at::vec::CPU_CAPABILITY or in ganfast::CPU_CAPABILITY, so each copy keeps its own.
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace ganfast {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Loads n (1..size) elements as op-math values; lanes from n on are 0.
template <typename scalar_t, typename T = opmath_t<scalar_t>>
inline Vectorized<T> load(const scalar_t* p, int64_t n) {
  using Vec = Vectorized<T>;
  if constexpr (std::is_same_v<scalar_t, T>) {
    return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
  } else {
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

// 1 where mask is set, else 0.
template <typename T>
inline Vectorized<T> ones_where(const Vectorized<T>& mask) {
  return Vectorized<T>::blendv(Vectorized<T>(T(0)), Vectorized<T>(T(1)), mask);
}

// Vector sums are kept in op-math precision for a block of at most kBlockVecs vectors, then added
// into per-lane double sums: rounding stays that of a 64-term sum, and the order of every addition
// is fixed by the data layout alone (deterministic for any thread count).
constexpr int64_t kBlockVecs = 64;

template <typename T, int K>
struct LaneSums {
  static constexpr int W = Vectorized<T>::size();
  double lane[K][W] = {};
  void add(int k, const Vectorized<T>& v) {
    T buf[W];
    v.store(buf);
    for (int j = 0; j < W; ++j) lane[k][j] += double(buf[j]);
  }
  double total(int k) const {
    double s = 0;
    for (int j = 0; j < W; ++j) s += lane[k][j];
    return s;
  }
};

}  // namespace CPU_CAPABILITY
}  // namespace ganfast

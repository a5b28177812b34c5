// Vectorized CPU kernels of ganfast::grad_penalty_fused and ganfast::gp_interpolate, and the sum of
// squares behind the trainer's gradient norm (grad_norm.cpp); compiled once per capability, see
// kernels.h. Rows run in parallel; each row's sum of squares is a block sum (vec_utils.h) in double
// lanes, and the rows' terms are added over chunks laid out by the row count, in chunk order:
// deterministic for any thread count.
#include "../../common/parallel.h"
#include "../../common/penalties.h"
#include "../kernels.h"
#include "vec_utils.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace ganfast {
namespace CPU_CAPABILITY {
namespace {

// Rows shorter than two vectors run the short-row kernels below, across rows: the per-row vector
// path's work (a partial vector loaded and stored through a buffer, the lanes widened to double and
// summed) cost more than the row's few elements. Rows of 2-D points (B x 2) had made both kernels
// slower than eager PyTorch. On the Zen 2, 65536 rows, a scalar loop per row in place of the vector
// path: cols 2 the tail 1029 -> 395 us (eager 924-1291), the interpolation 291 -> 130 us (eager
// 228-235); cols 8 877 -> 495, 12 1254 -> 632, 15 1176 -> 769 us. (AVX2's masked loads and stores in
// place of the buffer changed these by 1-10 %: vmaskmovps stores are microcoded on AMD.)
template <typename T>
constexpr int64_t kShortRowsBelow = 2 * Vectorized<T>::size();

// Σ_j (x_j - center)² over one contiguous range.
template <typename scalar_t, typename T = opmath_t<scalar_t>>
double sum_squares(const scalar_t* x, int64_t n, T center) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  LaneSums<T, 1> sums;
  const Vec c(center), zero(T(0));
  for (int64_t block = 0; block < n; block += kBlockVecs * W) {
    const int64_t block_end = std::min(n, block + kBlockVecs * W);
    Vec s(zero);
    for (int64_t i = block; i < block_end; i += W) {
      const int64_t m = std::min(W, block_end - i);
      Vec d = load(x + i, m) - c;
      if (m < W) d = Vec::blendv(zero, d, lanes_below<T>(m));
      s += d * d;
    }
    sums.add(0, s);
  }
  return sums.total(0);
}

template <typename scalar_t, typename T = opmath_t<scalar_t>>
double sum_values(const scalar_t* x, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  LaneSums<T, 1> sums;
  for (int64_t block = 0; block < n; block += kBlockVecs * W) {
    const int64_t block_end = std::min(n, block + kBlockVecs * W);
    Vec s(T(0));
    for (int64_t i = block; i < block_end; i += W) s += load(x + i, std::min(W, block_end - i));
    sums.add(0, s);
  }
  return sums.total(0);
}

// gp_term (common/penalties.h) for a vector of rows' s, lane by lane: the same IEEE operations (sqrt
// and division are correctly rounded), so the same numbers as the scalar function.
inline void gp_terms(int kind, const Vectorized<double>& s, double center, Vectorized<double>& norm,
                     Vectorized<double>& value, Vectorized<double>& coef) {
  using VecD = Vectorized<double>;
  norm = (s + VecD(kGpEps)).sqrt();
  if (kind == 2) {
    value = s;
    coef = VecD(2.0);
    return;
  }
  VecD d = norm - VecD(center);
  if (kind == 1) d = select(less(d, VecD(0.0)), VecD(0.0), d);  // relu that keeps NaN
  value = d * d;
  coef = VecD(2.0) * d / norm;
}

// Short rows (fewer than kShortRowsBelow elements) run in groups of kRowGroup rows, the row length C
// a compile-time constant up to kMaxShortRow (C = 0: read at run time), so that the compiler
// vectorizes across rows where a loop over each row's few elements ran scalar code; half and bfloat16
// groups go through op-math copies converted by whole vectors (converting one element at a time had
// left fp16 at 1.6-3x torch.compile's time). On a Xeon with AVX-512 (2 threads, float32), the loops
// one row at a time had taken: the tail 1.5x torch.compile's time for 65536 x 1, the interpolation
// 1.4x for 65536 x 2 and 2.3x eager's for 65536 x 1. (A gather of α per vector of the flat run was no
// faster: gathers cost ~35 cycles there.)
constexpr int64_t kRowGroup = 64;
constexpr int kMaxShortRow = 8;

// Room for one group's values, where half and bfloat16 need a copy (1 element otherwise)
template <typename scalar_t, typename T = opmath_t<scalar_t>>
constexpr int64_t kGroupCopy = std::is_same_v<scalar_t, T> ? 1 : kRowGroup * (kShortRowsBelow<T> - 1);

// n values of p as op-math values: p itself, or a copy converted into buf
template <typename scalar_t, typename T>
const T* opmath_values(const scalar_t* p, int64_t n, T* buf) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    return p;
  } else {
    constexpr int64_t W = Vectorized<T>::size();
    for (int64_t i = 0; i < n; i += W) {
      const int64_t m = std::min(W, n - i);
      load(p + i, m).store(buf + i, int(m));
    }
    return buf;
  }
}

// Where a group writes its op-math results bound for p: p itself, or buf, then written to p by
// store_values
template <typename scalar_t, typename T>
T* opmath_output(scalar_t* p, T* buf) {
  if constexpr (std::is_same_v<scalar_t, T>) return p;
  else return buf;
}

template <typename scalar_t, typename T>
void store_values(const T* values, scalar_t* p, int64_t n) {
  if constexpr (!std::is_same_v<scalar_t, T>) {
    constexpr int64_t W = Vectorized<T>::size();
    for (int64_t i = 0; i < n; i += W) {
      const int64_t m = std::min(W, n - i);
      store(p + i, Vectorized<T>::loadu(values + i, m), m);
    }
  }
}

// The tail over short rows [r0, r1), a group at a time: each row's Σ g² (double, in the row's order),
// the group's norms, terms and coefficients as vectors, then each row scaled.
template <int C, typename scalar_t, typename T = opmath_t<scalar_t>>
void grad_penalty_short_rows(const GradPenaltyArgs& args, double k, double* terms, int64_t r0, int64_t r1) {
  using VecD = Vectorized<double>;
  constexpr int64_t WD = VecD::size();
  static_assert(kRowGroup % WD == 0, "whole vectors of rows per group");
  const auto* g = static_cast<const scalar_t*>(args.g);
  auto* grad = static_cast<scalar_t*>(args.grad);
  auto* norms = static_cast<T*>(args.norms);
  const int64_t cols = C > 0 ? C : args.cols;
  const double inv2 = args.inv_scale * args.inv_scale;
  double s[kRowGroup], n[kRowGroup], coef[kRowGroup];
  T g_copy[kGroupCopy<scalar_t>], out_copy[kGroupCopy<scalar_t>];
  for (int64_t base = r0; base < r1; base += kRowGroup) {
    const int64_t count = std::min(kRowGroup, r1 - base), elements = count * cols;
    const T* x = opmath_values(g + base * cols, elements, g_copy);
    T* y = opmath_output(grad + base * cols, out_copy);
    for (int64_t i = 0; i < count; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < cols; ++j) sum += double(x[i * cols + j] * x[i * cols + j]);
      s[i] = inv2 * sum;
    }
    for (int64_t i = count; i < kRowGroup; ++i) s[i] = 0;  // lanes past the last row: computed, not written
    for (int64_t i = 0; i < kRowGroup; i += WD) {
      VecD nv, vv, cv;
      gp_terms(args.kind, VecD::loadu(s + i), args.center, nv, vv, cv);
      nv.store(n + i);
      cv.store(coef + i);
      vv.store(s + i);  // s is read: the group's terms
    }
    for (int64_t i = 0; i < count; ++i) {
      const T scale = T(k * coef[i]);
      for (int64_t j = 0; j < cols; ++j) y[i * cols + j] = scale * x[i * cols + j];
      norms[base + i] = T(n[i]);
      terms[base + i] = s[i];
    }
    store_values(y, grad + base * cols, elements);
  }
}

template <typename scalar_t>
using GradPenaltyRows = void (*)(const GradPenaltyArgs&, double, double*, int64_t, int64_t);

// grad_penalty_short_rows for a row length: with it as a constant up to kMaxShortRow
template <typename scalar_t, int... C>
GradPenaltyRows<scalar_t> short_row_tail(int64_t cols, std::integer_sequence<int, C...>) {
  static constexpr GradPenaltyRows<scalar_t> table[] = {&grad_penalty_short_rows<C, scalar_t>...};
  return table[cols < int64_t(sizeof...(C)) ? cols : 0];
}

template <typename scalar_t>
void grad_penalty_typed(const GradPenaltyArgs& args) {
  using T = opmath_t<scalar_t>;
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const auto* g = static_cast<const scalar_t*>(args.g);
  auto* grad = static_cast<scalar_t*>(args.grad);
  auto* norms = static_cast<T*>(args.norms);
  const int64_t rows = args.rows, cols = args.cols;
  std::vector<double> terms(rows);
  // s = Σ (g·inv_scale)² = inv_scale² Σ g²;  d P/d g_ij = (w / B) · coef_i · inv_scale² · g_ij
  const double inv2 = args.inv_scale * args.inv_scale;
  const double k = args.weight * inv2 / double(rows);
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1));
  const GradPenaltyRows<scalar_t> short_rows =
      cols < kShortRowsBelow<T> ? short_row_tail<scalar_t>(cols, std::make_integer_sequence<int, kMaxShortRow + 1>{}) : nullptr;
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    if (short_rows != nullptr) return short_rows(args, k, terms.data(), r0, r1);
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* row = g + r * cols;
      scalar_t* out = grad + r * cols;
      double n, v, coef;
      gp_term<double>(args.kind, inv2 * sum_squares(row, cols, T(0)), args.center, n, v, coef);
      const Vec scale(T(k * coef));
      for (int64_t j = 0; j < cols; j += W) {
        const int64_t m = std::min(W, cols - j);
        store(out + j, scale * load(row + j, m), m);
      }
      norms[r] = T(n);
      terms[r] = v;
    }
  });
  // Σ terms over chunks laid out by the row count alone, each summed in vector lanes, added in chunk
  // order: the same for any thread count. One chain of dependent additions in row order had cost
  // 4 cycles a row, ~85 us of the 197 for 65536 rows on a Xeon.
  const double total = chunked_sum<1>(rows, [&](int64_t b, int64_t e, std::array<double, 1>& acc) {
    acc[0] += sum_values(terms.data() + b, e - b);
  })[0];
  *static_cast<T*>(args.penalty) = T(args.weight * total / double(rows));
}

// The interpolation's tensors, typed
template <typename scalar_t, typename T = opmath_t<scalar_t>>
struct InterpolateData {
  const scalar_t* real;
  const scalar_t* other;  // fake, or the noise u when perturb
  const T* alpha;
  scalar_t* out;
  explicit InterpolateData(const InterpolateArgs& args)
      : real(static_cast<const scalar_t*>(args.real)), other(static_cast<const scalar_t*>(args.other)),
        alpha(static_cast<const T*>(args.alpha)), out(static_cast<scalar_t*>(args.out)) {}
};

// x̂ of a vector of elements: plain a·r + (1-a)·o;  perturb (o = u): r + (1-a)·c·σ·u (s = c·σ)
template <typename T>
inline Vectorized<T> interpolated(bool perturb, const Vectorized<T>& a, const Vectorized<T>& one_minus_a,
                                  const Vectorized<T>& s, const Vectorized<T>& xr, const Vectorized<T>& xo) {
  return perturb ? xr + one_minus_a * (s * xo) : a * xr + one_minus_a * xo;
}

// The interpolation of short rows [r0, r1), a group at a time (kPerturb: DRAGAN's x + (1-α)·c·σ·u):
// each element's α written out (vectorized across rows for C > 0), then one vector pass over the
// group's elements, which also converts half and bfloat16 by whole vectors.
template <int C, bool kPerturb, typename scalar_t, typename T = opmath_t<scalar_t>>
void interpolate_short_rows(const InterpolateArgs& args, T scale, int64_t r0, int64_t r1) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const InterpolateData<scalar_t> d(args);
  const int64_t cols = C > 0 ? C : args.cols;
  T element_alpha[kRowGroup * (kShortRowsBelow<T> - 1)];
  const Vec one(T(1)), s(scale);
  for (int64_t base = r0; base < r1; base += kRowGroup) {
    const int64_t count = std::min(kRowGroup, r1 - base), elements = count * cols;
    for (int64_t i = 0; i < count; ++i)
      for (int64_t j = 0; j < cols; ++j) element_alpha[i * cols + j] = d.alpha[base + i];
    const scalar_t *x = d.real + base * cols, *o = d.other + base * cols;
    scalar_t* y = d.out + base * cols;
    for (int64_t e = 0; e < elements; e += W) {
      const int64_t m = std::min(W, elements - e);
      const Vec a = Vec::loadu(element_alpha + e, m), one_minus_a = one - a;
      const Vec xr = load(x + e, m), xo = load(o + e, m);
      store(y + e, interpolated(kPerturb, a, one_minus_a, s, xr, xo), m);
    }
  }
}

template <typename scalar_t, typename T = opmath_t<scalar_t>>
using InterpolateRows = void (*)(const InterpolateArgs&, T, int64_t, int64_t);

// interpolate_short_rows for a row length and variant: with the length as a constant up to kMaxShortRow
template <typename scalar_t, int... C>
InterpolateRows<scalar_t> short_row_interpolation(int64_t cols, bool perturb, std::integer_sequence<int, C...>) {
  static constexpr InterpolateRows<scalar_t> table[2][sizeof...(C)] = {
      {&interpolate_short_rows<C, false, scalar_t>...}, {&interpolate_short_rows<C, true, scalar_t>...}};
  return table[perturb][cols < int64_t(sizeof...(C)) ? cols : 0];
}

template <typename scalar_t>
void interpolate_typed(const InterpolateArgs& args) {
  using T = opmath_t<scalar_t>;
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const InterpolateData<scalar_t> d(args);
  const int64_t rows = args.rows, cols = args.cols, n = rows * cols;
  T scale = T(0);
  if (args.perturb) {  // σ = unbiased std over all elements (two passes, sums in double)
    const double mean = chunked_sum<1>(n, [&](int64_t b, int64_t e, std::array<double, 1>& acc) {
      acc[0] += sum_values(d.real + b, e - b);
    })[0] / double(n);
    const double m2 = chunked_sum<1>(n, [&](int64_t b, int64_t e, std::array<double, 1>& acc) {
      acc[0] += sum_squares(d.real + b, e - b, T(mean));
    })[0];
    scale = T(args.c * std::sqrt(m2 / double(n - 1)));
  }
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1));
  const InterpolateRows<scalar_t> short_rows =
      cols < kShortRowsBelow<T>
          ? short_row_interpolation<scalar_t>(cols, args.perturb, std::make_integer_sequence<int, kMaxShortRow + 1>{})
          : nullptr;
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    if (short_rows != nullptr) return short_rows(args, scale, r0, r1);
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t *x = d.real + r * cols, *o = d.other + r * cols;
      scalar_t* y = d.out + r * cols;
      const Vec a(d.alpha[r]), one_minus_a(T(1) - d.alpha[r]), s(scale);
      for (int64_t j = 0; j < cols; j += W) {
        const int64_t m = std::min(W, cols - j);
        const Vec xr = load(x + j, m), xo = load(o + j, m);
        store(y + j, interpolated(args.perturb, a, one_minus_a, s, xr, xo), m);
      }
    }
  });
}

}  // namespace

void grad_penalty_kernel(const GradPenaltyArgs& args) {
  switch (args.dtype) {
    case c10::ScalarType::Float: return grad_penalty_typed<float>(args);
    case c10::ScalarType::Double: return grad_penalty_typed<double>(args);
    case c10::ScalarType::Half: return grad_penalty_typed<c10::Half>(args);
    case c10::ScalarType::BFloat16: return grad_penalty_typed<c10::BFloat16>(args);
    default: TORCH_CHECK(false, "ganfast::grad_penalty_fused (cpu): unsupported dtype ", args.dtype);
  }
}

void sum_squares_kernel(const SumSquaresArgs& args) {
  switch (args.dtype) {
    case c10::ScalarType::Float: *args.out = sum_squares(static_cast<const float*>(args.x), args.n, 0.0f); return;
    case c10::ScalarType::Double: *args.out = sum_squares(static_cast<const double*>(args.x), args.n, 0.0); return;
    case c10::ScalarType::Half:
      *args.out = sum_squares(static_cast<const c10::Half*>(args.x), args.n, 0.0f);
      return;
    case c10::ScalarType::BFloat16:
      *args.out = sum_squares(static_cast<const c10::BFloat16*>(args.x), args.n, 0.0f);
      return;
    default: TORCH_CHECK(false, "ganfast sum of squares (cpu): unsupported dtype ", args.dtype);
  }
}

void interpolate_kernel(const InterpolateArgs& args) {
  switch (args.dtype) {
    case c10::ScalarType::Float: return interpolate_typed<float>(args);
    case c10::ScalarType::Double: return interpolate_typed<double>(args);
    case c10::ScalarType::Half: return interpolate_typed<c10::Half>(args);
    case c10::ScalarType::BFloat16: return interpolate_typed<c10::BFloat16>(args);
    default: TORCH_CHECK(false, "ganfast::gp_interpolate (cpu): unsupported dtype ", args.dtype);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace ganfast

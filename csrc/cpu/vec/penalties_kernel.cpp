// Vectorized CPU kernels of ganfast::grad_penalty_fused and ganfast::gp_interpolate, and the sum of
// squares behind the trainer's gradient norm (grad_norm.cpp); compiled once per capability, see
// kernels.h. Rows run in parallel; each row's sum of squares is a block sum (vec_utils.h) in double
// lanes, and the mean over rows is added in row order: deterministic.
#include "../../common/parallel.h"
#include "../../common/penalties.h"
#include "../kernels.h"
#include "vec_utils.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ganfast {
namespace CPU_CAPABILITY {
namespace {

// Rows shorter than two vectors run scalar code: the vector path's per-row work (a partial vector
// loaded and stored through a buffer, the lanes widened to double and summed) cost more than a
// scalar pass over the row's few elements. Rows of 2-D points (B x 2) had made both kernels slower
// than eager PyTorch. On the Zen 2, 65536 rows: cols 2 the tail 1029 -> 395 us (eager 924-1291), the
// interpolation 291 -> 130 us (eager 228-235); cols 8 877 -> 495, 12 1254 -> 632, 15 1176 -> 769 us.
// (AVX2's masked loads and stores in place of the buffer changed these by 1-10 %: vmaskmovps stores
// are microcoded on AMD.)
template <typename T>
constexpr int64_t kScalarRowsBelow = 2 * Vectorized<T>::size();

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
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* row = g + r * cols;
      scalar_t* out = grad + r * cols;
      double n, v, coef;
      if (cols < kScalarRowsBelow<T>) {  // Σ g² in double, in the row's order
        double s = 0;
        for (int64_t j = 0; j < cols; ++j) {
          const T x = T(row[j]);
          s += double(x * x);
        }
        gp_term<double>(args.kind, inv2 * s, args.center, n, v, coef);
        const T scale = T(k * coef);
        for (int64_t j = 0; j < cols; ++j) out[j] = scalar_t(scale * T(row[j]));
      } else {
        gp_term<double>(args.kind, inv2 * sum_squares(row, cols, T(0)), args.center, n, v, coef);
        const Vec scale(T(k * coef));
        for (int64_t j = 0; j < cols; j += W) {
          const int64_t m = std::min(W, cols - j);
          store(out + j, scale * load(row + j, m), m);
        }
      }
      norms[r] = T(n);
      terms[r] = v;
    }
  });
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) total += terms[r];
  *static_cast<T*>(args.penalty) = T(args.weight * total / double(rows));
}

template <typename scalar_t>
void interpolate_typed(const InterpolateArgs& args) {
  using T = opmath_t<scalar_t>;
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const auto* real = static_cast<const scalar_t*>(args.real);
  const auto* other = static_cast<const scalar_t*>(args.other);
  const auto* alpha = static_cast<const T*>(args.alpha);
  auto* out = static_cast<scalar_t*>(args.out);
  const int64_t rows = args.rows, cols = args.cols, n = rows * cols;
  T scale = T(0);
  if (args.perturb) {  // σ = unbiased std over all elements (two passes, sums in double)
    const double mean = chunked_sum<1>(n, [&](int64_t b, int64_t e, std::array<double, 1>& acc) {
      acc[0] += sum_values(real + b, e - b);
    })[0] / double(n);
    const double m2 = chunked_sum<1>(n, [&](int64_t b, int64_t e, std::array<double, 1>& acc) {
      acc[0] += sum_squares(real + b, e - b, T(mean));
    })[0];
    scale = T(args.c * std::sqrt(m2 / double(n - 1)));
  }
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t *x = real + r * cols, *o = other + r * cols;
      scalar_t* y = out + r * cols;
      if (cols < kScalarRowsBelow<T>) {
        const T a = alpha[r], one_minus_a = T(1) - a;
        for (int64_t j = 0; j < cols; ++j) {
          const T xr = T(x[j]), xo = T(o[j]);
          y[j] = scalar_t(args.perturb ? xr + one_minus_a * (scale * xo) : a * xr + one_minus_a * xo);
        }
        continue;
      }
      const Vec a(alpha[r]), one_minus_a(T(1) - alpha[r]), s(scale);
      for (int64_t j = 0; j < cols; j += W) {
        const int64_t m = std::min(W, cols - j);
        const Vec xr = load(x + j, m), xo = load(o + j, m);
        // plain: a·r + (1-a)·o;  perturb (o = u): r + (1-a)·c·σ·u
        store(y + j, args.perturb ? xr + one_minus_a * (s * xo) : a * xr + one_minus_a * xo, m);
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

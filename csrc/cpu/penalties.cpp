// CPU kernels of ganfast::grad_penalty_fused (per-sample norms, penalty and d penalty/d g in one
// call; rows in parallel, each summed in double, the mean over rows in row order: deterministic)
// and ganfast::gp_interpolate.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../common/parallel.h"
#include "../penalties_inputs.h"

namespace ganfast {
namespace {

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
void grad_penalty_cpu_kernel(const scalar_t* g, int64_t rows, int64_t cols, int kind, double weight, double center,
                             double inv_scale, scalar_t* grad, opmath_t<scalar_t>* norms, opmath_t<scalar_t>* penalty) {
  using T = opmath_t<scalar_t>;
  std::vector<double> terms(rows);
  // d P/d g_ij = (w / B) · coef_i · h_ij · inv_scale = (w·inv_scale² / B) · coef_i · g_ij
  const double k = weight * inv_scale * inv_scale / double(rows);
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* gr = g + r * cols;
      double s = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const double h = double(T(gr[j])) * inv_scale;
        s += h * h;
      }
      double n, v, coef;
      gp_term<double>(kind, s, center, n, v, coef);
      norms[r] = T(n);
      terms[r] = v;
      const T scale = T(k * coef);
      scalar_t* out = grad + r * cols;
      for (int64_t j = 0; j < cols; ++j) out[j] = scalar_t(scale * T(gr[j]));
    }
  });
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) total += terms[r];
  *penalty = T(weight * total / double(rows));
}

template <typename scalar_t>
void interpolate_cpu_kernel(const scalar_t* real, const scalar_t* other, const opmath_t<scalar_t>* alpha, int64_t rows,
                            int64_t cols, bool perturb, double c, scalar_t* out) {
  using T = opmath_t<scalar_t>;
  const int64_t n = rows * cols;
  T scale = T(0);
  if (perturb) {  // σ = unbiased std over all elements (two passes, in double)
    const double mean = chunked_sum<1>(n, [&](int64_t b, int64_t e, std::array<double, 1>& a) {
      for (int64_t i = b; i < e; ++i) a[0] += double(T(real[i]));
    })[0] / double(n);
    const double m2 = chunked_sum<1>(n, [&](int64_t b, int64_t e, std::array<double, 1>& a) {
      for (int64_t i = b; i < e; ++i) { const double d = double(T(real[i])) - mean; a[0] += d * d; }
    })[0];
    scale = T(c * std::sqrt(m2 / double(n - 1)));
  }
  chunked_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T a = alpha[i / cols], r = T(real[i]), o = T(other[i]);
      // plain: a·r + (1-a)·o;  perturb (o = u): r + (1-a)·c·σ·u
      out[i] = scalar_t(perturb ? r + (T(1) - a) * (scale * o) : a * r + (T(1) - a) * o);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grad_penalty_fused_cpu(const at::Tensor& g, int64_t kind, double weight,
                                                                      double center, double inv_scale) {
  GradPenaltyCall c = prepare_grad_penalty(g, kind);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.g.scalar_type(), "grad_penalty_fused_cpu", [&] {
    using T = opmath_t<scalar_t>;
    grad_penalty_cpu_kernel<scalar_t>(c.g.data_ptr<scalar_t>(), c.rows, c.cols, int(kind), weight, center, inv_scale,
                                      c.grad.data_ptr<scalar_t>(), c.norms.data_ptr<T>(), c.penalty.data_ptr<T>());
  });
  return {c.penalty, c.grad, c.norms};
}

at::Tensor gp_interpolate_cpu(const at::Tensor& real, const at::Tensor& other, const at::Tensor& alpha, bool perturb,
                              double c) {
  InterpolateCall call = prepare_interpolate(real, other, alpha, perturb);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, call.real.scalar_type(), "gp_interpolate_cpu", [&] {
    using T = opmath_t<scalar_t>;
    interpolate_cpu_kernel<scalar_t>(call.real.data_ptr<scalar_t>(), call.other.data_ptr<scalar_t>(),
                                     call.alpha.data_ptr<T>(), call.rows, call.cols, perturb, c,
                                     call.out.data_ptr<scalar_t>());
  });
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("grad_penalty_fused", &grad_penalty_fused_cpu);
  m.impl("gp_interpolate", &gp_interpolate_cpu);
}

}  // namespace ganfast

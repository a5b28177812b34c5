// CPU kernels of ganfast::spectral_norm_fused and ganfast::spectral_norm_backward.
// W3[a, r, b] = M[r, a * inner + b] (see csrc/spectral_norm_inputs.h). Products are accumulated in
// float (double for double weights) with 8 independent partial sums (vectorizable), norms in double.
// Every loop is split over rows or columns, never over a reduction, so results are deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/parallel.h"
#include "../spectral_norm_inputs.h"

namespace ganfast {
namespace {

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// sum_i x[i] * y[i]
template <typename T, typename X, typename Y>
inline T dot(const X* x, const Y* y, int64_t n) {
  T acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += T(x[i + k]) * T(y[i + k]);
  T s = 0;
  for (; i < n; ++i) s += T(x[i]) * T(y[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + s;
}

template <typename T>
double sumsq(const T* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  return s;
}

// t[r] = sum_c M[r, c] v[c]   (parallel over rows)
template <typename scalar_t, typename T>
void mv(const scalar_t* w, const T* v, T* t, int64_t O, int64_t H, int64_t I) {
  at::parallel_for(0, H, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, O * I)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T acc = 0;
      for (int64_t a = 0; a < O; ++a) acc += dot<T>(w + (a * H + r) * I, v + a * I, I);
      t[r] = acc;
    }
  });
}

// s[c] = sum_r M[r, c] u[r]   (parallel over column chunks; rows summed in order)
template <typename scalar_t, typename T>
void mtv(const scalar_t* w, const T* u, T* s, int64_t O, int64_t H, int64_t I) {
  const int64_t n = O * I;
  const int64_t grain = std::max<int64_t>(64, 16384 / std::max<int64_t>(1, H));
  at::parallel_for(0, n, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1;) {  // one segment of columns sharing the same a
      const int64_t a = c / I, b0 = c % I, b1 = std::min(I, b0 + (c1 - c));
      T* out = s + a * I;
      for (int64_t b = b0; b < b1; ++b) out[b] = 0;
      for (int64_t r = 0; r < H; ++r) {
        const scalar_t* row = w + (a * H + r) * I;
        const T ur = u[r];
        for (int64_t b = b0; b < b1; ++b) out[b] += T(row[b]) * ur;
      }
      c += b1 - b0;
    }
  });
}

// x <- x / max(||x||, eps); returns ||x||
template <typename T>
double normalize(T* x, int64_t n, double eps) {
  const double norm = std::sqrt(sumsq(x, n));
  const T inv = T(1.0 / std::max(norm, eps));
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
  return norm;
}

template <typename scalar_t>
void spectral_norm_cpu_kernel(SpectralNormCall& c, int64_t n_iter, double eps) {
  using T = opmath_t<scalar_t>;
  const int64_t O = c.outer, H = c.h, I = c.inner;
  const scalar_t* w = c.w.data_ptr<scalar_t>();
  T* u = c.u_out.data_ptr<T>();
  T* v = c.v_out.data_ptr<T>();
  double sigma;
  if (n_iter == 0) {  // eval: sigma = u^T M v with the stored u, v
    std::vector<T> t(H);
    mv(w, v, t.data(), O, H, I);
    sigma = 0;
    for (int64_t r = 0; r < H; ++r) sigma += double(u[r]) * double(t[r]);
  } else {
    double norm_s = 0;
    for (int64_t it = 0; it < n_iter; ++it) {
      mv(w, v, u, O, H, I);    // u <- M v
      normalize(u, H, eps);    // u <- u / max(||u||, eps)
      mtv(w, u, v, O, H, I);   // v <- M^T u
      norm_s = normalize(v, O * I, eps);
    }
    // sigma = u^T M v = (M^T u)^T v = ||s||^2 / max(||s||, eps), s = M^T u.
    sigma = norm_s * norm_s / std::max(norm_s, eps);
  }
  *c.sigma.data_ptr<T>() = T(sigma);
  const T inv = T(1.0 / std::max(sigma, eps));
  scalar_t* out = c.out.data_ptr<scalar_t>();
  chunked_for(c.w.numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = scalar_t(T(w[i]) * inv);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_norm_fused_cpu(
    const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim, int64_t n_iter, double eps) {
  SpectralNormCall c = prepare_spectral_norm(weight, u, v, dim, n_iter, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.w.scalar_type(), "spectral_norm_fused_cpu",
                                  [&] { spectral_norm_cpu_kernel<scalar_t>(c, n_iter, eps); });
  return {c.out, c.u_out, c.v_out, c.sigma};
}

template <typename scalar_t>
void spectral_norm_backward_cpu_kernel(SpectralNormBackwardCall& c, double eps) {
  using T = opmath_t<scalar_t>;
  const int64_t O = c.outer, H = c.h, I = c.inner, n = c.w.numel();
  const scalar_t* g = c.g.data_ptr<scalar_t>();
  const scalar_t* w = c.w.data_ptr<scalar_t>();
  const T* u = c.u.data_ptr<T>();
  const T* v = c.v.data_ptr<T>();
  scalar_t* gw = c.grad_w.data_ptr<scalar_t>();
  const double sigma = double(*c.sigma.data_ptr<T>());
  const T inv = T(1.0 / std::max(sigma, eps));
  // Below eps the clamp max(sigma, eps) holds sigma constant: dW = G / eps.
  T k = 0;
  if (sigma >= eps) {
    const auto gw_dot = chunked_sum<1>(n, [&](int64_t b, int64_t e, std::array<double, 1>& a) {
      a[0] += double(dot<T>(g + b, w + b, e - b));
    });
    k = T(gw_dot[0] / sigma);  // <G, W / sigma>
  }
  // dW[a, r, b] = (G - k u[r] v[a * I + b]) / sigma
  at::parallel_for(0, O * H, std::max<int64_t>(1, 16384 / I), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t a = p / H, r = p % H;
      const T ku = k * u[r];
      const T* vv = v + a * I;
      const scalar_t* gp = g + p * I;
      scalar_t* op = gw + p * I;
      for (int64_t b = 0; b < I; ++b) op[b] = scalar_t((T(gp[b]) - ku * vv[b]) * inv);
    }
  });
}

at::Tensor spectral_norm_backward_cpu(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& u,
                                      const at::Tensor& v, const at::Tensor& sigma, int64_t dim, double eps) {
  SpectralNormBackwardCall c = prepare_spectral_norm_backward(grad, weight, u, v, sigma, dim, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.w.scalar_type(), "spectral_norm_backward_cpu",
                                  [&] { spectral_norm_backward_cpu_kernel<scalar_t>(c, eps); });
  return c.grad_w;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("spectral_norm_fused", &spectral_norm_fused_cpu);
  m.impl("spectral_norm_backward", &spectral_norm_backward_cpu);
}

}  // namespace ganfast

// Multi-tensor ops: every normalized layer of a model in one parallel loop (one layer per task; the
// per-layer loops run inline inside it). Same math as the single-layer kernels above.
namespace ganfast {
namespace {

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
spectral_norm_multi_cpu(at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims,
                        int64_t n_iter, double eps) {
  const int64_t L = int64_t(weights.size());
  TORCH_CHECK(int64_t(us.size()) == L && int64_t(vs.size()) == L && int64_t(dims.size()) == L,
              "ganfast::spectral_norm_multi: weights, u, v and dims must have the same length");
  std::vector<at::Tensor> out(L), u_out(L), v_out(L), sigma(L);
  // Checks and allocation first (outside the parallel region, so that errors surface normally).
  std::vector<SpectralNormCall> calls;
  calls.reserve(L);
  for (int64_t l = 0; l < L; ++l) calls.push_back(prepare_spectral_norm(weights[l], us[l], vs[l], dims[l], n_iter, eps));
  at::parallel_for(0, L, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      SpectralNormCall& c = calls[l];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.w.scalar_type(), "spectral_norm_multi_cpu",
                                      [&] { spectral_norm_cpu_kernel<scalar_t>(c, n_iter, eps); });
    }
  });
  for (int64_t l = 0; l < L; ++l) {
    out[l] = calls[l].out;
    u_out[l] = calls[l].u_out;
    v_out[l] = calls[l].v_out;
    sigma[l] = calls[l].sigma;
  }
  return {out, u_out, v_out, sigma};
}

std::vector<at::Tensor> spectral_norm_backward_multi_cpu(at::TensorList grads, at::TensorList weights, at::TensorList us,
                                                         at::TensorList vs, at::TensorList sigmas, at::IntArrayRef dims,
                                                         double eps) {
  const int64_t L = int64_t(weights.size());
  TORCH_CHECK(int64_t(grads.size()) == L && int64_t(us.size()) == L && int64_t(vs.size()) == L &&
                  int64_t(sigmas.size()) == L && int64_t(dims.size()) == L,
              "ganfast::spectral_norm_backward_multi: all lists must have the same length");
  std::vector<SpectralNormBackwardCall> calls;
  calls.reserve(L);
  for (int64_t l = 0; l < L; ++l)
    calls.push_back(prepare_spectral_norm_backward(grads[l], weights[l], us[l], vs[l], sigmas[l], dims[l], eps));
  at::parallel_for(0, L, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      SpectralNormBackwardCall& c = calls[l];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.w.scalar_type(), "spectral_norm_backward_multi_cpu",
                                      [&] { spectral_norm_backward_cpu_kernel<scalar_t>(c, eps); });
    }
  });
  std::vector<at::Tensor> out(L);
  for (int64_t l = 0; l < L; ++l) out[l] = calls[l].grad_w;
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("spectral_norm_multi", &spectral_norm_multi_cpu);
  m.impl("spectral_norm_backward_multi", &spectral_norm_backward_multi_cpu);
}

}  // namespace ganfast

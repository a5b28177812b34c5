// DiffAugment's per-sample coefficients, shared by the CPU (C++) and CUDA kernels. Plain C++, no
// torch headers.
//
// Parameters per sample (ganfast/ops/augment.py): color (β, s, k) as float32, geometry
// (dy, dx, y0, y1, x0, x1) as int32. The color transforms (brightness β, saturation s, contrast k)
// together are the affine map, with x̄_p the channel mean at pixel p and μ the sample's mean:
//   y = x + a (x - x̄_p) + b (x̄_p - μ) + β,   a = k s - 1,  b = k - 1
// and its transpose, with g the gradient at the (unshifted) pixel, G_p = Σ_c g_cp, G = Σ_p G_p:
//   dx = (1 + a) g + (b - a)/C · G_p - b/(C H W) · G
// Written as x + (...) so that an unaugmented sample (s = k = 1, β = 0) is x exactly.
#pragma once
#include <cstdint>

#include "hd.h"

namespace ganfast {

constexpr int kAugColor = 3;     // β, s, k
constexpr int kAugGeometry = 6;  // dy, dx, y0, y1, x0, x1

template <typename T>
struct ColorCoef {
  T beta, a, b;
};

template <typename T>
GF_HD ColorCoef<T> color_coef(const float* color, int64_t sample) {
  const float* c = color + sample * kAugColor;
  const T s = T(c[1]), k = T(c[2]);
  return {T(c[0]), k * s - T(1), k - T(1)};
}

// One sample's shift and cutout box: out[i, j] = y[i + dy, j + dx] (0 outside), zero on
// rows [y0, y1) × columns [x0, x1).
struct Geometry {
  int dy, dx, y0, y1, x0, x1;
  GF_HD bool cut(int64_t i, int64_t j) const { return i >= y0 && i < y1 && j >= x0 && j < x1; }
};

GF_HD Geometry geometry_of(const int32_t* geometry, int64_t sample) {
  const int32_t* g = geometry + sample * kAugGeometry;
  return {g[0], g[1], g[2], g[3], g[4], g[5]};
}

}  // namespace ganfast

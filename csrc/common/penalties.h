// Gradient-penalty terms shared by the CPU (C++) and CUDA kernels. Plain C++, no torch headers.
//
// For one sample with squared gradient norm s = Σ h², h = g·inv_scale, n = sqrt(s + 1e-12):
//   kind 0 (two-sided):  f = (n - c)²          df/dh = 2(n - c)/n · h
//   kind 1 (one-sided):  f = relu(n - c)²      df/dh = 2 relu(n - c)/n · h
//   kind 2 (squared):    f = s                 df/dh = 2 h
// gp_term returns f and coef with df/dh = coef · h. The kind numbering is that of
// ganfast.ops.penalties; keep the two in step.
#pragma once
#include <cmath>

#include "hd.h"

namespace ganfast {

constexpr double kGpEps = 1e-12;

template <typename T> GF_HD void gp_term(int kind, T s, T center, T& norm, T& value, T& coef) {
  norm = sqrt(s + T(kGpEps));
  if (kind == 2) {
    value = s;
    coef = T(2);
    return;
  }
  T d = norm - center;
  if (kind == 1) d = d < T(0) ? T(0) : d;  // relu that keeps NaN
  value = d * d;
  coef = T(2) * d / norm;
}

}  // namespace ganfast

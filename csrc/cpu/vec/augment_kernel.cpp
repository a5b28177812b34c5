// Vectorized CPU kernels of ganfast::diffaugment and its backward (compiled once per capability, see
// kernels.h; the math is in csrc/common/augment.h). Samples run in parallel, each in one pass over its
// image after (with color) one sum for its mean; vectors run along a row. Every sum has a fixed order
// (block sums, vec_utils.h), so the results do not depend on the thread count.
#include <ATen/Parallel.h>

#include <algorithm>

#include "../../common/augment.h"
#include "../kernels.h"
#include "vec_utils.h"

namespace ganfast {
namespace CPU_CAPABILITY {
namespace {

// Σ x over one contiguous range, in op-math vectors added into double lanes per block.
template <typename scalar_t, typename T = opmath_t<scalar_t>>
void add_sum(const scalar_t* x, int64_t n, LaneSums<T, 1>& sums) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  for (int64_t block = 0; block < n; block += kBlockVecs * W) {
    const int64_t block_end = std::min(n, block + kBlockVecs * W);
    Vec s(T(0));
    for (int64_t i = block; i < block_end; i += W) s += load(x + i, std::min(W, block_end - i));
    sums.add(0, s);
  }
}

template <typename scalar_t>
void zero(scalar_t* p, int64_t n) {
  if (n > 0) std::fill(p, p + n, scalar_t(0));
}

// The cutout's columns [x0, x1) clipped to [lo, hi).
inline void clip(const Geometry& g, int64_t lo, int64_t hi, int64_t& c0, int64_t& c1) {
  c0 = std::clamp<int64_t>(g.x0, lo, hi);
  c1 = std::clamp<int64_t>(g.x1, c0, hi);
}

template <typename scalar_t>
void forward_sample(const AugmentArgs& a, int64_t s) {
  using T = opmath_t<scalar_t>;
  using Vec = Vectorized<T>;
  constexpr int64_t VW = Vec::size();
  const int64_t C = a.channels, H = a.height, W = a.width, HW = H * W;
  const scalar_t* x = static_cast<const scalar_t*>(a.in) + s * C * HW;
  scalar_t* out = static_cast<scalar_t*>(a.out) + s * C * HW;
  const Geometry g = geometry_of(a.geometry, s);
  const bool color = a.color != nullptr;
  ColorCoef<T> cc{T(0), T(0), T(0)};
  T mu = T(0);
  if (color) {
    cc = color_coef<T>(a.color, s);
    LaneSums<T, 1> sums;
    add_sum(x, C * HW, sums);
    mu = T(sums.total(0) / double(C * HW));
  }
  const Vec va(cc.a), vb(cc.b), vbeta(cc.beta), vmu(mu), inv_c(T(1) / T(C));
  // output columns j whose source column j + dx lies in the image
  const int64_t lo = std::max<int64_t>(0, -g.dx), hi = std::min<int64_t>(W, W - g.dx);
  for (int64_t i = 0; i < H; ++i) {
    scalar_t* dst = out + i * W;
    const int64_t u = i + g.dy;  // source row
    if (u < 0 || u >= H || lo >= hi) {
      for (int64_t c = 0; c < C; ++c) zero(dst + c * HW, W);
      continue;
    }
    const scalar_t* src = x + u * W + lo + g.dx;  // src[c·HW + t] = x[c, u, lo + t + dx]
    for (int64_t c = 0; c < C; ++c) {
      zero(dst + c * HW, lo);
      zero(dst + c * HW + hi, W - hi);
    }
    if (!color) {
      for (int64_t c = 0; c < C; ++c) std::copy(src + c * HW, src + c * HW + (hi - lo), dst + c * HW + lo);
    } else {
      for (int64_t t = 0; t < hi - lo; t += VW) {
        const int64_t m = std::min(VW, hi - lo - t);
        Vec sum(T(0));
        for (int64_t c = 0; c < C; ++c) sum += load(src + c * HW + t, m);
        const Vec mean_p = sum * inv_c;
        const Vec common = vb * (mean_p - vmu) + vbeta;
        for (int64_t c = 0; c < C; ++c) {
          const Vec v = load(src + c * HW + t, m);
          store(dst + c * HW + lo + t, v + (va * (v - mean_p) + common), m);
        }
      }
    }
    if (i >= g.y0 && i < g.y1) {
      int64_t c0, c1;
      clip(g, 0, W, c0, c1);
      for (int64_t c = 0; c < C; ++c) zero(dst + c * HW + c0, c1 - c0);
    }
  }
}

// Source row u of sample s receives the gradient of output row i = u - dy: on its columns
// v = j + dx for the output columns j in [lo, hi), except those the cutout zeroed; the rest of x got
// no gradient through the shift. With color, each pixel then gets the color transpose (augment.h);
// a pixel without gradient (G_p = 0) gets the constant -b G/(C H W).
template <typename scalar_t>
void backward_sample(const AugmentArgs& a, int64_t s) {
  using T = opmath_t<scalar_t>;
  using Vec = Vectorized<T>;
  constexpr int64_t VW = Vec::size();
  const int64_t C = a.channels, H = a.height, W = a.width, HW = H * W;
  const scalar_t* grad = static_cast<const scalar_t*>(a.in) + s * C * HW;
  scalar_t* out = static_cast<scalar_t*>(a.out) + s * C * HW;
  const Geometry g = geometry_of(a.geometry, s);
  const bool color = a.color != nullptr;
  // output columns whose source is inside (as in the forward), and the cutout's part of them
  const int64_t lo = std::max<int64_t>(0, -g.dx), hi = std::min<int64_t>(W, W - g.dx);
  int64_t c0, c1;
  clip(g, lo, std::max(lo, hi), c0, c1);
  ColorCoef<T> cc{T(0), T(0), T(0)};
  T big_g = T(0);
  if (color) {  // G = Σ of the gradient that reaches x: output pixels read from inside, not cut out
    cc = color_coef<T>(a.color, s);
    LaneSums<T, 1> sums;
    const int64_t i_lo = std::max<int64_t>(0, -g.dy), i_hi = std::min<int64_t>(H, H - g.dy);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = i_lo; i < i_hi && lo < hi; ++i) {
        const scalar_t* row = grad + c * HW + i * W;
        if (i >= g.y0 && i < g.y1) {
          add_sum(row + lo, c0 - lo, sums);
          add_sum(row + c1, hi - c1, sums);
        } else {
          add_sum(row + lo, hi - lo, sums);
        }
      }
    big_g = T(sums.total(0));
  }
  const T k_all = cc.b * big_g / T(C * HW);
  const scalar_t no_grad = scalar_t(-k_all);  // dx where the output took nothing from x
  const Vec va(cc.a), k_pixel((cc.b - cc.a) / T(C)), vk_all(k_all);
  auto fill = [&](scalar_t* dst, int64_t v0, int64_t v1) {
    for (int64_t c = 0; c < C; ++c)
      if (v1 > v0) std::fill(dst + c * HW + v0, dst + c * HW + v1, no_grad);
  };
  for (int64_t u = 0; u < H; ++u) {
    scalar_t* dst = out + u * W;
    const int64_t i = u - g.dy;
    if (i < 0 || i >= H || lo >= hi) {
      fill(dst, 0, W);
      continue;
    }
    // src(c, v) = grad[c, i, v - dx], for v in [lo + dx, hi + dx)
    auto segment = [&](int64_t v0, int64_t v1) {
      if (v1 <= v0) return;
      const scalar_t* src = grad + i * W + (v0 - g.dx);  // src[c·HW + t] = grad[c, i, v0 + t - dx]
      if (!color) {
        for (int64_t c = 0; c < C; ++c) std::copy(src + c * HW, src + c * HW + (v1 - v0), dst + c * HW + v0);
        return;
      }
      for (int64_t t = 0; t < v1 - v0; t += VW) {
        const int64_t m = std::min(VW, v1 - v0 - t), v = v0 + t;
        Vec sum(T(0));
        for (int64_t c = 0; c < C; ++c) sum += load(src + c * HW + t, m);
        const Vec common = k_pixel * sum - vk_all;
        for (int64_t c = 0; c < C; ++c) {
          const Vec gv = load(src + c * HW + t, m);
          store(dst + c * HW + v, gv + (va * gv + common), m);
        }
      }
    };
    fill(dst, 0, lo + g.dx);
    fill(dst, hi + g.dx, W);
    if (i >= g.y0 && i < g.y1) {
      segment(lo + g.dx, c0 + g.dx);
      fill(dst, c0 + g.dx, c1 + g.dx);
      segment(c1 + g.dx, hi + g.dx);
    } else {
      segment(lo + g.dx, hi + g.dx);
    }
  }
}

template <typename scalar_t>
void forward_typed(const AugmentArgs& a) {
  at::parallel_for(0, a.batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t s = b0; s < b1; ++s) forward_sample<scalar_t>(a, s);
  });
}

template <typename scalar_t>
void backward_typed(const AugmentArgs& a) {
  at::parallel_for(0, a.batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t s = b0; s < b1; ++s) backward_sample<scalar_t>(a, s);
  });
}

}  // namespace

void augment_forward_kernel(const AugmentArgs& a) {
  switch (a.dtype) {
    case c10::ScalarType::Float: return forward_typed<float>(a);
    case c10::ScalarType::Double: return forward_typed<double>(a);
    case c10::ScalarType::Half: return forward_typed<c10::Half>(a);
    case c10::ScalarType::BFloat16: return forward_typed<c10::BFloat16>(a);
    default: TORCH_CHECK(false, "ganfast::diffaugment (cpu): unsupported dtype ", a.dtype);
  }
}

void augment_backward_kernel(const AugmentArgs& a) {
  switch (a.dtype) {
    case c10::ScalarType::Float: return backward_typed<float>(a);
    case c10::ScalarType::Double: return backward_typed<double>(a);
    case c10::ScalarType::Half: return backward_typed<c10::Half>(a);
    case c10::ScalarType::BFloat16: return backward_typed<c10::BFloat16>(a);
    default: TORCH_CHECK(false, "ganfast::diffaugment_backward (cpu): unsupported dtype ", a.dtype);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace ganfast

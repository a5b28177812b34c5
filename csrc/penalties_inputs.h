// Input checks and output allocation of ganfast::grad_penalty_fused and ganfast::gp_interpolate,
// shared by the CPU and CUDA kernels (the Python API checks first, with friendlier messages).
#pragma once
#include <ATen/ATen.h>

#include "common/penalties.h"
#include "output_alloc.h"

namespace ganfast {

inline at::ScalarType gp_opmath(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

struct GradPenaltyCall {
  at::Tensor g;  // contiguous, viewed as (rows, cols)
  int64_t rows, cols;
  at::Tensor penalty, grad, norms;
};

// empty_like allocates the outputs as large as the inputs (the CPU ops: from its output cache when large).
inline GradPenaltyCall prepare_grad_penalty(const at::Tensor& g, int64_t kind,
                                            EmptyLike empty_like = contiguous_empty_like) {
  TORCH_CHECK(kind >= 0 && kind <= 2, "ganfast::grad_penalty_fused: unknown kind id ", kind);
  TORCH_CHECK(g.dim() >= 1, "ganfast::grad_penalty_fused: g must have a batch dimension, got a 0-dim tensor");
  TORCH_CHECK(g.size(0) > 0, "ganfast::grad_penalty_fused: the batch is empty (B = 0)");
  TORCH_CHECK(g.numel() > 0, "ganfast::grad_penalty_fused: g is empty");
  TORCH_CHECK(at::isFloatingType(g.scalar_type()), "ganfast::grad_penalty_fused: g must be floating point, got ",
              g.scalar_type());
  GradPenaltyCall c;
  c.g = g.contiguous();
  c.rows = g.size(0);
  c.cols = g.numel() / c.rows;
  const auto acc = g.options().dtype(gp_opmath(g.scalar_type()));
  c.penalty = at::empty({}, acc);
  c.grad = empty_like(c.g);
  c.norms = at::empty({c.rows}, acc);
  return c;
}

struct InterpolateCall {
  at::Tensor real, other, alpha;  // contiguous; alpha in the op-math dtype
  int64_t rows, cols;
  at::Tensor out;
};

inline InterpolateCall prepare_interpolate(const at::Tensor& real, const at::Tensor& other, const at::Tensor& alpha,
                                           bool perturb,
                                           EmptyLike empty_like = contiguous_empty_like) {
  const char* what = "ganfast::gp_interpolate: ";
  TORCH_CHECK(real.dim() >= 1 && real.size(0) > 0, what, "real needs a non-empty batch dimension");
  TORCH_CHECK(at::isFloatingType(real.scalar_type()), what, "inputs must be floating point, got ", real.scalar_type());
  TORCH_CHECK(real.sizes() == other.sizes(), what, "real and ", perturb ? "noise" : "fake", " shapes differ: ",
              real.sizes(), " vs ", other.sizes());
  TORCH_CHECK(real.scalar_type() == other.scalar_type(), what, "real and other dtypes differ");
  TORCH_CHECK(real.device() == other.device() && real.device() == alpha.device(), what, "inputs on different devices");
  TORCH_CHECK(at::isFloatingType(alpha.scalar_type()), what, "alpha must be floating point");
  TORCH_CHECK(alpha.dim() == 1 && alpha.size(0) == real.size(0), what, "alpha must have shape (B,) = (", real.size(0),
              ",), got ", alpha.sizes());
  TORCH_CHECK(!perturb || real.numel() > 1, what, "the std of a single element is undefined");
  InterpolateCall c;
  c.real = real.contiguous();
  c.other = other.contiguous();
  c.alpha = alpha.to(gp_opmath(real.scalar_type())).contiguous();
  c.rows = real.size(0);
  c.cols = real.numel() / c.rows;
  c.out = empty_like(c.real);
  return c;
}

}  // namespace ganfast

// Input checks and output allocation of ganfast::spectral_norm_fused / _backward, shared by the CPU
// and CUDA kernels. The weight arrives as W3 = weight.reshape(outer, h, inner): the matrix M (h x w,
// w = outer * inner) of PyTorch's spectral norm is M[r, a * inner + b] = W3[a, r, b].
#pragma once
#include <ATen/ATen.h>

#include <cstring>

#include "output_alloc.h"

namespace ganfast {

inline at::ScalarType sn_opmath(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

struct SpectralNormCall {
  at::Tensor w, u, v;  // contiguous; u, v in the opmath dtype
  int64_t outer, h, inner;
  at::Tensor out, u_out, v_out, sigma;
};

struct SnDims {
  int64_t outer, h, inner;
};

inline SnDims check_sn_weight(const at::Tensor& w, int64_t dim, const char* op) {
  TORCH_CHECK(w.dim() >= 2, op, ": weight must have at least 2 dimensions, got ", w.dim());
  TORCH_CHECK(dim >= 0 && dim < w.dim(), op, ": dim ", dim, " out of range for a ", w.dim(), "-D weight");
  TORCH_CHECK(at::isFloatingType(w.scalar_type()), op, ": weight must be floating point, got ", w.scalar_type());
  TORCH_CHECK(w.numel() > 0, op, ": weight is empty (shape ", w.sizes(), ")");
  SnDims d{1, w.size(dim), 1};
  for (int64_t i = 0; i < dim; ++i) d.outer *= w.size(i);
  for (int64_t i = dim + 1; i < w.dim(); ++i) d.inner *= w.size(i);
  return d;
}

inline void check_sn_vectors(const at::Tensor& w, SnDims d, const at::Tensor& u, const at::Tensor& v, const char* op) {
  TORCH_CHECK(u.dim() == 1 && u.size(0) == d.h, op, ": u must have shape (", d.h, "), got ", u.sizes());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == d.outer * d.inner, op, ": v must have shape (", d.outer * d.inner,
              "), got ", v.sizes());
  TORCH_CHECK(at::isFloatingType(u.scalar_type()) && at::isFloatingType(v.scalar_type()), op,
              ": u and v must be floating point");
  TORCH_CHECK(u.device() == w.device() && v.device() == w.device(), op, ": weight, u and v must be on one device");
}

// A fresh contiguous copy of the vector t in dtype acc. A contiguous CPU vector already in acc (u and
// v as the modules keep them) is copied by memcpy: a copying .to() goes through the dispatcher and a
// TensorIterator, 0.66 us more a vector (measured), and the multi-tensor op copies two per layer (an
// MLP D's four small layers: 41.7 -> 36.4 us a call).
inline at::Tensor vector_copy(const at::Tensor& t, at::ScalarType acc) {
  if (t.is_cpu() && t.scalar_type() == acc && t.is_contiguous() && !t.is_conj() && !t.is_neg()) {
    at::Tensor out = at::empty(t.sizes(), t.options());
    std::memcpy(out.data_ptr(), t.const_data_ptr(), t.nbytes());
    return out;
  }
  return t.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
}

// fill_vectors: u_out, v_out start as copies of u, v (kernels that update them in place: CPU); else
// they are only allocated and u, v are kept (CUDA writes u_out, v_out from u, v: no copy launches).
// empty_like allocates the output W / sigma (the CPU ops: from their output cache when large).
inline SpectralNormCall prepare_spectral_norm(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v,
                                              int64_t dim, int64_t n_iter, double eps, bool fill_vectors = true,
                                              EmptyLike empty_like = contiguous_empty_like) {
  const char* op = "ganfast::spectral_norm_fused";
  const SnDims d = check_sn_weight(weight, dim, op);
  check_sn_vectors(weight, d, u, v, op);
  TORCH_CHECK(n_iter >= 0, op, ": n_iter must be >= 0, got ", n_iter);
  TORCH_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  SpectralNormCall c;
  const auto acc = sn_opmath(weight.scalar_type());
  c.w = weight.contiguous();
  c.outer = d.outer;
  c.h = d.h;
  c.inner = d.inner;
  if (fill_vectors) {  // fresh output vectors, filled from the inputs: the kernels update them in place
    c.u_out = vector_copy(u, acc);
    c.v_out = vector_copy(v, acc);
  } else {  // no copy for u, v of the opmath dtype that are contiguous already
    c.u = u.to(acc).contiguous();
    c.v = v.to(acc).contiguous();
    c.u_out = at::empty_like(c.u);
    c.v_out = at::empty_like(c.v);
  }
  c.out = empty_like(c.w);
  c.sigma = at::empty({}, c.w.options().dtype(acc));
  return c;
}

struct SpectralNormBackwardCall {
  at::Tensor g, w, u, v, sigma, grad_w;
  int64_t outer, h, inner;
};

inline SpectralNormBackwardCall prepare_spectral_norm_backward(const at::Tensor& grad, const at::Tensor& weight,
                                                               const at::Tensor& u, const at::Tensor& v,
                                                               const at::Tensor& sigma, int64_t dim, double eps,
                                                               EmptyLike empty_like = contiguous_empty_like) {
  const char* op = "ganfast::spectral_norm_backward";
  const SnDims d = check_sn_weight(weight, dim, op);
  check_sn_vectors(weight, d, u, v, op);
  TORCH_CHECK(grad.sizes() == weight.sizes(), op, ": grad has shape ", grad.sizes(), ", weight ", weight.sizes());
  TORCH_CHECK(sigma.numel() == 1, op, ": sigma must have one element");
  TORCH_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  const auto acc = sn_opmath(weight.scalar_type());
  SpectralNormBackwardCall c;
  c.outer = d.outer;
  c.h = d.h;
  c.inner = d.inner;
  c.w = weight.contiguous();
  c.g = grad.to(weight.scalar_type()).contiguous();
  c.u = u.to(acc).contiguous();
  c.v = v.to(acc).contiguous();
  c.sigma = sigma.to(acc).reshape({}).contiguous();
  c.grad_w = empty_like(c.w);
  return c;
}

}  // namespace ganfast

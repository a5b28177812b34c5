// Autograd for fused ops whose forward already computed the gradient of its scalar output with
// respect to each input (the Liger pattern): backward only rescales those saved gradients by the
// upstream gradient. Device-generic: registered once under the Autograd key, it serves CPU and CUDA.
#pragma once
#include <ATen/ATen.h>

namespace ganfast {

// d out / d input, scaled by the upstream gradient (a scalar); undefined stays undefined.
inline at::Tensor scale_saved_grad(const at::Tensor& saved, const at::Tensor& grad_out) {
  if (!saved.defined() || !grad_out.defined()) return at::Tensor();
  return saved * grad_out.to(saved.scalar_type());
}

}  // namespace ganfast

// Autograd for fused ops whose forward already computed the gradient of its scalar output with
// respect to each input (the Liger pattern): backward only rescales those saved gradients by the
// upstream gradient. Device-generic: registered once under the Autograd key, it serves CPU and CUDA.
#pragma once
#include <ATen/ATen.h>

namespace ganfast {

// Keys of tensors that are not plain eager data: a Python subclass or mode, functionalization
// (torch.compile), functorch's wrappers (vmap, grad).
constexpr c10::DispatchKeySet kWrappedKeys({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                            c10::DispatchKey::Functionalize, c10::DispatchKey::FuncTorchBatched,
                                            c10::DispatchKey::FuncTorchGradWrapper});

// True for an upstream gradient that is a plain CPU scalar equal to 1 (`loss.backward()`), read from
// its memory (no op is dispatched: nothing counts as a read from the device); false for traced,
// functional or wrapped tensors (torch.compile, vmap).
inline bool is_plain_cpu_one(const at::Tensor& grad_out) {
  if (grad_out.key_set().has_any(kWrappedKeys) || !grad_out.is_cpu() || grad_out.layout() != at::kStrided ||
      grad_out.dim() != 0 || !grad_out.has_storage())
    return false;
  switch (grad_out.scalar_type()) {
    case at::kFloat: return *grad_out.const_data_ptr<float>() == 1.f;
    case at::kDouble: return *grad_out.const_data_ptr<double>() == 1.0;
    case at::kHalf: return float(*grad_out.const_data_ptr<at::Half>()) == 1.f;
    case at::kBFloat16: return float(*grad_out.const_data_ptr<at::BFloat16>()) == 1.f;
    default: return false;
  }
}

// d out / d input, scaled by the upstream gradient (a scalar); undefined stays undefined. When that
// gradient is exactly 1 and no graph is being built, the saved gradient is passed on as it is: the
// multiply would read and write it once more (at B = 1M, as many bytes as the fused kernel moves).
inline at::Tensor scale_saved_grad(const at::Tensor& saved, const at::Tensor& grad_out) {
  if (!saved.defined() || !grad_out.defined()) return at::Tensor();
  if (!at::GradMode::is_enabled() && is_plain_cpu_one(grad_out)) return saved;
  return saved * grad_out.to(saved.scalar_type());
}

}  // namespace ganfast

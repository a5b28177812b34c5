// CPU ops of ganfast::diffaugment and ganfast::diffaugment_backward. The loops are in
// vec/augment_kernel.cpp, compiled once per CPU capability; this file checks the inputs, allocates
// the output (output_cache.h) and calls the copy the CPU supports (kernels.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../augment_inputs.h"
#include "kernels.h"
#include "output_cache.h"

namespace ganfast {
namespace {

AugmentArgs args_of(const AugmentCall& c) {
  return {c.x.scalar_type(), c.x.data_ptr(),  c.batch,
          c.channels,        c.height,        c.width,
          c.color.defined() ? c.color.data_ptr<float>() : nullptr,
          c.geometry.data_ptr<int32_t>(), c.out.data_ptr()};
}

at::Tensor diffaugment_cpu(const at::Tensor& x, const std::optional<at::Tensor>& color, const at::Tensor& geometry) {
  AugmentCall c = prepare_augment(x, color, geometry, "ganfast::diffaugment", cpu_output_like);
  GANFAST_CALL_CPU_KERNEL(augment_forward_kernel, args_of(c));
  return c.out;
}

at::Tensor diffaugment_backward_cpu(const at::Tensor& grad, const std::optional<at::Tensor>& color,
                                    const at::Tensor& geometry) {
  AugmentCall c = prepare_augment(grad, color, geometry, "ganfast::diffaugment_backward", cpu_output_like);
  GANFAST_CALL_CPU_KERNEL(augment_backward_kernel, args_of(c));
  return c.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("diffaugment", &diffaugment_cpu);
  m.impl("diffaugment_backward", &diffaugment_backward_cpu);
}

}  // namespace ganfast

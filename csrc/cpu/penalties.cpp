// CPU ops of ganfast::grad_penalty_fused (per-sample norms, penalty and d penalty/d g in one call)
// and ganfast::gp_interpolate. The loops are in vec/penalties_kernel.cpp, compiled once per CPU
// capability; this file checks the inputs, allocates the outputs (output_cache.h) and calls the copy
// the CPU supports (kernels.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../penalties_inputs.h"
#include "kernels.h"
#include "output_cache.h"

namespace ganfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> grad_penalty_fused_cpu(const at::Tensor& g, int64_t kind, double weight,
                                                                      double center, double inv_scale) {
  GradPenaltyCall c = prepare_grad_penalty(g, kind, cpu_output_like);
  const GradPenaltyArgs args{c.g.scalar_type(), c.g.data_ptr(),     c.rows,           c.cols,
                             int(kind),         weight,             center,           inv_scale,
                             c.grad.data_ptr(), c.norms.data_ptr(), c.penalty.data_ptr()};
  GANFAST_CALL_CPU_KERNEL(grad_penalty_kernel, args);
  return {c.penalty, c.grad, c.norms};
}

at::Tensor gp_interpolate_cpu(const at::Tensor& real, const at::Tensor& other, const at::Tensor& alpha, bool perturb,
                              double c) {
  InterpolateCall call = prepare_interpolate(real, other, alpha, perturb, cpu_output_like);
  const InterpolateArgs args{call.real.scalar_type(), call.real.data_ptr(), call.other.data_ptr(),
                             call.alpha.data_ptr(),   call.rows,            call.cols,
                             perturb,                 c,                    call.out.data_ptr()};
  GANFAST_CALL_CPU_KERNEL(interpolate_kernel, args);
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("grad_penalty_fused", &grad_penalty_fused_cpu);
  m.impl("gp_interpolate", &gp_interpolate_cpu);
}

}  // namespace ganfast

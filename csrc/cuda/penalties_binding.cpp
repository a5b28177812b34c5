// CUDA bindings of ganfast::grad_penalty_fused and ganfast::gp_interpolate: checks, allocation,
// stream; the kernels are in penalties.cu.
#include <torch/library.h>

#include "../penalties_inputs.h"
#include "binding.h"

namespace ganfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> grad_penalty_fused_cuda(const at::Tensor& g, int64_t kind,
                                                                       double weight, double center, double inv_scale) {
  GradPenaltyCall c = prepare_grad_penalty(g, kind);
  TORCH_CHECK(c.rows <= int64_t(INT32_MAX), "ganfast::grad_penalty_fused (cuda): batch too large");
  const c10::cuda::CUDAGuard guard(c.g.device());
  at::Tensor terms = at::empty({c.rows}, c.norms.options());
  cuda::GradPenaltyArgs args{c.g.data_ptr(), c.rows, c.cols, int(kind), weight, center, inv_scale,
                             c.grad.data_ptr(), c.norms.data_ptr(), terms.data_ptr(), c.penalty.data_ptr()};
  cuda::check_launch(cuda::grad_penalty(args, cuda::dtype_of(c.g), c10::cuda::getCurrentCUDAStream()), "grad_penalty");
  return {c.penalty, c.grad, c.norms};
}

at::Tensor gp_interpolate_cuda(const at::Tensor& real, const at::Tensor& other, const at::Tensor& alpha, bool perturb,
                               double c) {
  InterpolateCall call = prepare_interpolate(real, other, alpha, perturb);
  const c10::cuda::CUDAGuard guard(call.real.device());
  at::Tensor workspace = at::empty({1}, call.alpha.options());
  cuda::InterpolateArgs args{call.real.data_ptr(), call.other.data_ptr(), call.alpha.data_ptr(), call.rows, call.cols,
                             perturb, c, call.out.data_ptr(), workspace.data_ptr()};
  cuda::check_launch(cuda::gp_interpolate(args, cuda::dtype_of(call.real), c10::cuda::getCurrentCUDAStream()),
                     "gp_interpolate");
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("grad_penalty_fused", &grad_penalty_fused_cuda);
  m.impl("gp_interpolate", &gp_interpolate_cuda);
}

}  // namespace ganfast

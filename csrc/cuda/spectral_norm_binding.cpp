// CUDA binding of ganfast::spectral_norm_fused / _backward: checks, allocation, stream; kernels in
// spectral_norm.cu. The CUDA kernels run in fp32 (float, half, bfloat16 weights).
#include <torch/library.h>

#include "../spectral_norm_inputs.h"
#include "binding.h"

namespace ganfast {
namespace {

void check_cuda_dtype(const at::Tensor& w) {
  TORCH_CHECK(w.scalar_type() != at::kDouble, "ganfast (cuda): spectral norm supports float32, float16 and bfloat16 "
              "weights; use the reference backend for float64");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_norm_fused_cuda(
    const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim, int64_t n_iter, double eps) {
  check_cuda_dtype(weight);
  SpectralNormCall c = prepare_spectral_norm(weight, u, v, dim, n_iter, eps);
  const c10::cuda::CUDAGuard guard(c.w.device());
  auto work = at::empty({std::max(c.h, c.outer * c.inner) + 2}, c.w.options().dtype(at::kFloat));
  float* t = work.data_ptr<float>();
  cuda::SpectralNormArgs args{c.w.data_ptr(), c.outer, c.h, c.inner, n_iter, eps,
                              c.u_out.data_ptr<float>(), c.v_out.data_ptr<float>(), t,
                              t + std::max(c.h, c.outer * c.inner), c.sigma.data_ptr<float>(), c.out.data_ptr()};
  cuda::check_launch(cuda::spectral_norm_forward(args, cuda::dtype_of(c.w), c10::cuda::getCurrentCUDAStream()),
                     "spectral_norm_forward");
  return {c.out, c.u_out, c.v_out, c.sigma};
}

at::Tensor spectral_norm_backward_cuda(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& u,
                                       const at::Tensor& v, const at::Tensor& sigma, int64_t dim, double eps) {
  check_cuda_dtype(weight);
  SpectralNormBackwardCall c = prepare_spectral_norm_backward(grad, weight, u, v, sigma, dim, eps);
  const c10::cuda::CUDAGuard guard(c.w.device());
  auto scratch = at::empty({1}, c.w.options().dtype(at::kFloat));
  cuda::SpectralNormBackwardArgs args{c.g.data_ptr(), c.w.data_ptr(), c.outer, c.h, c.inner, eps,
                                      c.u.data_ptr<float>(), c.v.data_ptr<float>(), c.sigma.data_ptr<float>(),
                                      scratch.data_ptr<float>(), c.grad_w.data_ptr()};
  cuda::check_launch(cuda::spectral_norm_backward(args, cuda::dtype_of(c.w), c10::cuda::getCurrentCUDAStream()),
                     "spectral_norm_backward");
  return c.grad_w;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("spectral_norm_fused", &spectral_norm_fused_cuda);
  m.impl("spectral_norm_backward", &spectral_norm_backward_cuda);
}

}  // namespace ganfast

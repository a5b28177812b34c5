// CUDA binding of ganfast::spectral_norm_fused / _backward and of the multi-tensor forms (_multi,
// _backward_multi): checks, allocation, stream; kernels in spectral_norm.cu. The CUDA kernels run in
// fp32 (float, half, bfloat16 weights). Launches: none here for contiguous weights and contiguous
// fp32 u, v (the outputs and the workspace come from at::empty, the caching allocator); the kernels
// take 2 * n_iter + 1 forward (2 in eval) and 2 backward per call, for one layer or all of them.
#include <torch/library.h>

#include <map>
#include <vector>

#include "../spectral_norm_inputs.h"
#include "binding.h"

namespace ganfast {
namespace {

void check_cuda_dtype(const at::Tensor& w) {
  TORCH_CHECK(w.scalar_type() != at::kDouble, "ganfast (cuda): spectral norm supports float32, float16 and bfloat16 "
              "weights; use the reference backend for float64");
}

// Runs the forward of `calls` (one dtype, one device) with one workspace allocation.
void forward_calls(std::vector<SpectralNormCall>& calls, int64_t n_iter, double eps, const char* what) {
  int64_t floats = 0;
  for (const auto& c : calls) floats += c.h + c.outer * c.inner + cuda::spectral_norm_partials(c.outer, c.h, c.inner);
  const c10::cuda::CUDAGuard guard(calls[0].w.device());
  auto work = at::empty({floats}, calls[0].w.options().dtype(at::kFloat));
  float* at = work.data_ptr<float>();
  std::vector<cuda::SpectralNormArgs> args;
  for (auto& c : calls) {
    float* t = at;
    float* s = t + c.h;
    float* part = s + c.outer * c.inner;
    at = part + cuda::spectral_norm_partials(c.outer, c.h, c.inner);
    args.push_back({c.w.data_ptr(), c.outer, c.h, c.inner, n_iter, eps, c.u.data_ptr<float>(), c.v.data_ptr<float>(),
                    c.u_out.data_ptr<float>(), c.v_out.data_ptr<float>(), t, s, part, c.sigma.data_ptr<float>(),
                    c.out.data_ptr()});
  }
  cuda::check_launch(cuda::spectral_norm_forward(args.data(), int(args.size()), cuda::dtype_of(calls[0].w),
                                                 c10::cuda::getCurrentCUDAStream()), what);
}

void backward_calls(std::vector<SpectralNormBackwardCall>& calls, double eps, const char* what) {
  int64_t floats = 0;
  for (const auto& c : calls) floats += cuda::spectral_norm_backward_partials(c.outer, c.h, c.inner);
  const c10::cuda::CUDAGuard guard(calls[0].w.device());
  auto work = at::empty({floats}, calls[0].w.options().dtype(at::kFloat));
  float* at = work.data_ptr<float>();
  std::vector<cuda::SpectralNormBackwardArgs> args;
  std::vector<float*> parts;
  for (auto& c : calls) {
    parts.push_back(at);
    at += cuda::spectral_norm_backward_partials(c.outer, c.h, c.inner);
    args.push_back({c.g.data_ptr(), c.w.data_ptr(), c.outer, c.h, c.inner, eps, c.u.data_ptr<float>(),
                    c.v.data_ptr<float>(), c.sigma.data_ptr<float>(), c.grad_w.data_ptr()});
  }
  cuda::check_launch(cuda::spectral_norm_backward(args.data(), parts.data(), int(args.size()),
                                                  cuda::dtype_of(calls[0].w), c10::cuda::getCurrentCUDAStream()),
                     what);
}

// Indices of `weights` by dtype: one kernel call per dtype.
std::map<at::ScalarType, std::vector<size_t>> by_dtype(at::TensorList weights) {
  std::map<at::ScalarType, std::vector<size_t>> groups;
  for (size_t i = 0; i < weights.size(); ++i) groups[weights[i].scalar_type()].push_back(i);
  return groups;
}

void check_one_device(at::TensorList weights, const char* op) {
  for (const auto& w : weights)
    TORCH_CHECK(w.device() == weights[0].device(), op, ": all weights must be on one device");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_norm_fused_cuda(
    const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim, int64_t n_iter, double eps) {
  check_cuda_dtype(weight);
  std::vector<SpectralNormCall> calls{prepare_spectral_norm(weight, u, v, dim, n_iter, eps, /*fill_vectors=*/false)};
  forward_calls(calls, n_iter, eps, "spectral_norm_forward");
  const SpectralNormCall& c = calls[0];
  return {c.out, c.u_out, c.v_out, c.sigma};
}

at::Tensor spectral_norm_backward_cuda(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& u,
                                       const at::Tensor& v, const at::Tensor& sigma, int64_t dim, double eps) {
  check_cuda_dtype(weight);
  std::vector<SpectralNormBackwardCall> calls{prepare_spectral_norm_backward(grad, weight, u, v, sigma, dim, eps)};
  backward_calls(calls, eps, "spectral_norm_backward");
  return calls[0].grad_w;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
spectral_norm_multi_cuda(at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims,
                         int64_t n_iter, double eps) {
  const char* op = "ganfast::spectral_norm_multi";
  const size_t L = weights.size();
  TORCH_CHECK(us.size() == L && vs.size() == L && dims.size() == L, op,
              ": weights, u, v and dims must have the same length");
  check_one_device(weights, op);
  std::vector<at::Tensor> out(L), u_out(L), v_out(L), sigma(L);
  for (const auto& [dtype, idx] : by_dtype(weights)) {
    std::vector<SpectralNormCall> calls;
    for (size_t i : idx) {
      check_cuda_dtype(weights[i]);
      calls.push_back(prepare_spectral_norm(weights[i], us[i], vs[i], dims[i], n_iter, eps, /*fill_vectors=*/false));
    }
    forward_calls(calls, n_iter, eps, "spectral_norm_multi");
    for (size_t k = 0; k < idx.size(); ++k) {
      out[idx[k]] = calls[k].out;
      u_out[idx[k]] = calls[k].u_out;
      v_out[idx[k]] = calls[k].v_out;
      sigma[idx[k]] = calls[k].sigma;
    }
  }
  return {out, u_out, v_out, sigma};
}

std::vector<at::Tensor> spectral_norm_backward_multi_cuda(at::TensorList grads, at::TensorList weights,
                                                          at::TensorList us, at::TensorList vs, at::TensorList sigmas,
                                                          at::IntArrayRef dims, double eps) {
  const char* op = "ganfast::spectral_norm_backward_multi";
  const size_t L = weights.size();
  TORCH_CHECK(grads.size() == L && us.size() == L && vs.size() == L && sigmas.size() == L && dims.size() == L, op,
              ": all lists must have the same length");
  check_one_device(weights, op);
  std::vector<at::Tensor> out(L);
  for (const auto& [dtype, idx] : by_dtype(weights)) {
    std::vector<SpectralNormBackwardCall> calls;
    for (size_t i : idx) {
      check_cuda_dtype(weights[i]);
      calls.push_back(prepare_spectral_norm_backward(grads[i], weights[i], us[i], vs[i], sigmas[i], dims[i], eps));
    }
    backward_calls(calls, eps, "spectral_norm_backward_multi");
    for (size_t k = 0; k < idx.size(); ++k) out[idx[k]] = calls[k].grad_w;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("spectral_norm_fused", &spectral_norm_fused_cuda);
  m.impl("spectral_norm_backward", &spectral_norm_backward_cuda);
  m.impl("spectral_norm_multi", &spectral_norm_multi_cuda);
  m.impl("spectral_norm_backward_multi", &spectral_norm_backward_multi_cuda);
}

}  // namespace ganfast

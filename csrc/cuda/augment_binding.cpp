// CUDA bindings of ganfast::diffaugment and ganfast::diffaugment_backward: checks, allocation,
// stream; the kernels are in augment.cu.
#include <torch/library.h>

#include "../augment_inputs.h"
#include "binding.h"

namespace ganfast {
namespace {

at::Tensor run(const at::Tensor& in, const std::optional<at::Tensor>& color, const at::Tensor& geometry, bool backward) {
  AugmentCall c = prepare_augment(in, color, geometry, backward ? "ganfast::diffaugment_backward" : "ganfast::diffaugment");
  TORCH_CHECK(c.batch <= int64_t(INT32_MAX), "ganfast::diffaugment (cuda): batch too large");
  const c10::cuda::CUDAGuard guard(c.x.device());
  const cuda::AugmentArgs args{c.x.data_ptr(), c.batch, c.channels, c.height, c.width,
                               c.color.defined() ? c.color.data_ptr<float>() : nullptr,
                               c.geometry.data_ptr<int32_t>(), c.out.data_ptr()};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto dtype = cuda::dtype_of(c.x);
  cuda::check_launch(backward ? cuda::diffaugment_backward(args, dtype, stream) : cuda::diffaugment_forward(args, dtype, stream),
                     backward ? "diffaugment_backward" : "diffaugment");
  return c.out;
}

at::Tensor diffaugment_cuda(const at::Tensor& x, const std::optional<at::Tensor>& color, const at::Tensor& geometry) {
  return run(x, color, geometry, false);
}

at::Tensor diffaugment_backward_cuda(const at::Tensor& grad, const std::optional<at::Tensor>& color,
                                     const at::Tensor& geometry) {
  return run(grad, color, geometry, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) {
  m.impl("diffaugment", &diffaugment_cuda);
  m.impl("diffaugment_backward", &diffaugment_backward_cuda);
}

}  // namespace ganfast

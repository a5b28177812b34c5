// CUDA binding of ganfast::gan_loss_fused: checks, allocation, stream; the kernel is in gan_loss.cu.
#include <torch/library.h>

#include "../gan_loss_inputs.h"
#include "binding.h"

namespace ganfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_fused_cuda(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, bool generator) {
  GanLossCall c = prepare_gan_loss(real, fake, kind, generator);
  const c10::cuda::CUDAGuard guard(c.fake.device());
  // the per-block partial sums of a large loss (from the caching allocator, so no sync)
  const int64_t workspace = cuda::gan_loss_workspace(c.real.numel(), c.fake.numel());
  at::Tensor partials;
  if (workspace) partials = at::empty({workspace}, c.fake.options().dtype(at::kDouble));
  cuda::GanLossArgs args{c.has_real ? c.real.data_ptr() : nullptr, c.real.numel(), c.fake.data_ptr(),
                         c.fake.numel(), int(kind), generator, c.loss.data_ptr(), c.grad_real.data_ptr(),
                         c.grad_fake.data_ptr(), c.stats.data_ptr<float>(),
                         workspace ? partials.data_ptr<double>() : nullptr};
  cuda::check_launch(cuda::gan_loss(args, cuda::dtype_of(c.fake), c10::cuda::getCurrentCUDAStream()), "gan_loss");
  return {c.loss, c.grad_real, c.grad_fake, c.stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CUDA, m) { m.impl("gan_loss_fused", &gan_loss_fused_cuda); }

}  // namespace ganfast

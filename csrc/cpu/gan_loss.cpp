// CPU op of ganfast::gan_loss_fused: loss, d loss / d logits and the D statistics in one call.
// The loops are in vec/gan_loss_kernel.cpp, compiled once per CPU capability; this file checks
// the inputs, allocates the outputs (output_cache.h) and calls the copy the CPU supports (kernels.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../gan_loss_inputs.h"
#include "kernels.h"
#include "output_cache.h"

namespace ganfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_fused_cpu(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, bool generator) {
  GanLossCall c = prepare_gan_loss(real, fake, kind, generator, cpu_output_like);
  const GanLossArgs args{c.fake.scalar_type(), c.real.data_ptr(),      c.real.numel(),
                         c.fake.data_ptr(),    c.fake.numel(),         c.spec,
                         c.grad_real.data_ptr(), c.grad_fake.data_ptr(), c.loss.data_ptr(),
                         c.stats.data_ptr<float>()};
  GANFAST_CALL_CPU_KERNEL(gan_loss_kernel, args);
  return {c.loss, c.grad_real, c.grad_fake, c.stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) { m.impl("gan_loss_fused", &gan_loss_fused_cpu); }

}  // namespace ganfast

// Input checks and output allocation of ganfast::gan_loss_fused, shared by the CPU and CUDA kernels.
// (The Python API checks first with friendlier messages; these guard direct calls of the op.)
#pragma once
#include <ATen/ATen.h>

#include "common/gan_loss.h"
#include "output_alloc.h"

namespace ganfast {

struct GanLossCall {
  at::Tensor real, fake;  // contiguous; real is empty when the loss has no real term
  bool has_real;
  LossSpec spec;
  at::Tensor loss, grad_real, grad_fake, stats;
};

// empty_like allocates the gradients (the CPU op: from its output cache when large).
inline GanLossCall prepare_gan_loss(const std::optional<at::Tensor>& real_opt, const at::Tensor& fake, int64_t kind,
                                    bool generator, EmptyLike empty_like = contiguous_empty_like) {
  TORCH_CHECK(kind >= 0 && kind <= 7, "ganfast::gan_loss_fused: unknown kind id ", kind);
  TORCH_CHECK(fake.numel() > 0, "ganfast::gan_loss_fused: fake logits are empty");
  TORCH_CHECK(at::isFloatingType(fake.scalar_type()), "ganfast::gan_loss_fused: logits must be floating point");
  GanLossCall c;
  c.spec = loss_spec(int(kind), generator);
  c.has_real = real_opt.has_value() && real_opt->defined();
  TORCH_CHECK(c.has_real || c.spec.phi == Term::None, "ganfast::gan_loss_fused: this loss needs real logits");
  c.fake = fake.contiguous();
  c.real = c.has_real ? real_opt->contiguous() : at::empty({0}, fake.options());
  if (c.has_real) {
    TORCH_CHECK(c.real.numel() > 0, "ganfast::gan_loss_fused: real logits are empty");
    TORCH_CHECK(c.real.scalar_type() == c.fake.scalar_type(), "ganfast::gan_loss_fused: real and fake dtypes differ");
    TORCH_CHECK(c.real.device() == c.fake.device(), "ganfast::gan_loss_fused: real and fake devices differ");
  }
  if (c.spec.mode == Mode::Paired)
    TORCH_CHECK(c.real.sizes() == c.fake.sizes(), "ganfast::gan_loss_fused: rpgan pairs real and fake, shapes differ");
  c.loss = at::empty({}, c.fake.options());
  c.grad_real = empty_like(c.real);
  c.grad_fake = empty_like(c.fake);
  c.stats = at::empty({4}, c.fake.options().dtype(at::kFloat));
  return c;
}

}  // namespace ganfast

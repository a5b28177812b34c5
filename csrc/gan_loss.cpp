// ganfast::gan_loss = ganfast::gan_loss_fused (any device) + autograd that rescales its saved gradients.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd.h"

namespace ganfast {
namespace {

using Fused = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const std::optional<at::Tensor>&, const at::Tensor&, int64_t, bool);


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_fused(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, bool generator) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("ganfast::gan_loss_fused", "").typed<Fused>();
  return op.call(real, fake, kind, generator);
}

struct GanLossFunction : public torch::autograd::Function<GanLossFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const std::optional<at::Tensor>& real, const at::Tensor& fake,
                                                int64_t kind, bool generator) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_real, grad_fake, stats] = call_fused(real, fake, kind, generator);
    ctx->save_for_backward({grad_real, grad_fake});
    ctx->saved_data["has_real"] = real.has_value() && real->defined();
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_real = ctx->saved_data["has_real"].toBool();
    return {has_real ? scale_saved_grad(saved[0], grad_outputs[0]) : at::Tensor(),
            scale_saved_grad(saved[1], grad_outputs[0]), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> gan_loss_autograd(const std::optional<at::Tensor>& real, const at::Tensor& fake,
                                                     int64_t kind, bool generator) {
  auto out = GanLossFunction::apply(real, fake, kind, generator);
  return {out[0], out[1]};
}

// Below autograd (inference mode, tracing): the fused op without saving anything.
std::tuple<at::Tensor, at::Tensor> gan_loss_no_grad(const std::optional<at::Tensor>& real, const at::Tensor& fake,
                                                    int64_t kind, bool generator) {
  auto [loss, grad_real, grad_fake, stats] = call_fused(real, fake, kind, generator);
  return {loss, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("gan_loss", &gan_loss_autograd);
  // The fused op itself is not differentiable (its gradients are outputs); gan_loss is.
  m.impl("gan_loss_fused", torch::CppFunction::makeFallthrough());
}
TORCH_LIBRARY_IMPL(ganfast, CompositeExplicitAutograd, m) { m.impl("gan_loss", &gan_loss_no_grad); }

}  // namespace ganfast

// ganfast::grad_penalty = ganfast::grad_penalty_fused (any device) + autograd that rescales the
// gradient w.r.t. g its forward saved. The penalty's gradient reaches D's parameters through g (which
// came from a create_graph=True backward): that needs only this first derivative of the op.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd.h"

namespace ganfast {
namespace {

using Fused = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, double, double, double);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_fused(const at::Tensor& g, int64_t kind, double weight,
                                                          double center, double inv_scale) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("ganfast::grad_penalty_fused", "").typed<Fused>();
  return op.call(g, kind, weight, center, inv_scale);
}

struct GradPenaltyFunction : public torch::autograd::Function<GradPenaltyFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& g,
                                                int64_t kind, double weight, double center, double inv_scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [penalty, grad_g, norms] = call_fused(g, kind, weight, center, inv_scale);
    ctx->save_for_backward({grad_g});
    ctx->mark_non_differentiable({norms});
    ctx->set_materialize_grads(false);  // the norms get no gradient: no zero tensor made for them each backward
    return {penalty, norms};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    // With create_graph=True the engine runs this under grad mode: the saved d penalty/d g carries
    // no graph, so a second derivative would be silently wrong — refuse it.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "ganfast gradient penalties are differentiable once (their backward does not build a graph); "
                "use backend 'reference' for higher-order gradients");
    // Passed on as it is under a plain `.backward()` of an unscaled penalty (scale_saved_grad): at
    // 64x3x64x64 the multiply read and wrote 3 MiB more, into fresh memory that faulted in.
    return {scale_saved_grad(ctx->get_saved_variables()[0], grad_outputs[0]), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> grad_penalty_autograd(const at::Tensor& g, int64_t kind, double weight,
                                                         double center, double inv_scale) {
  auto out = GradPenaltyFunction::apply(g, kind, weight, center, inv_scale);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> grad_penalty_no_grad(const at::Tensor& g, int64_t kind, double weight,
                                                        double center, double inv_scale) {
  auto [penalty, grad_g, norms] = call_fused(g, kind, weight, center, inv_scale);
  return {penalty, norms};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) { m.impl("grad_penalty", &grad_penalty_autograd); }
TORCH_LIBRARY_IMPL(ganfast, CompositeExplicitAutograd, m) { m.impl("grad_penalty", &grad_penalty_no_grad); }

}  // namespace ganfast

// ganfast::gan_loss = ganfast::gan_loss_fused (any device) + autograd that rescales its saved gradients,
// and its Python entry for plain eager tensors (gan_loss_eager, ganfast._C.gan_loss_eager).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include "autograd.h"
#include "eager_entry.h"

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
    ctx->set_materialize_grads(false);  // stats get no gradient: no zero tensor made for it each backward
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

// ganfast._C.gan_loss_eager(real, fake, kind, generator) -> (loss, stats), or None when the call needs
// the dispatcher (eager_entry.h). The same autograd function that the op's Autograd kernel runs,
// without the layers of a torch.ops call (OpOverload, argument parsing, the boxed call into the
// kernel): the forward of a g_loss at B = 64 measured 5.1 us against 7.5-7.9 us through torch.ops.
PyObject* gan_loss_eager(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 4, "gan_loss_eager takes (real, fake, kind, generator), got ", nargs, " arguments");
  PyObject* real = args[0];
  PyObject* fake = args[1];
  if (!default_dispatch_state() || !takes_direct_call(fake) || !(real == Py_None || takes_direct_call(real)))
    Py_RETURN_NONE;
  const int64_t kind = PyLong_AsLongLong(args[2]);
  if (kind == -1 && PyErr_Occurred()) return nullptr;
  const int generator = PyObject_IsTrue(args[3]);
  if (generator < 0) return nullptr;
  std::optional<at::Tensor> real_tensor;
  if (real != Py_None) real_tensor = THPVariable_Unpack(real);
  std::tuple<at::Tensor, at::Tensor> out;
  {
    pybind11::gil_scoped_release no_gil;
    out = gan_loss_autograd(real_tensor, THPVariable_Unpack(fake), kind, generator != 0);
  }
  PyObject* result = PyTuple_New(2);
  if (result == nullptr) return nullptr;
  PyTuple_SET_ITEM(result, 0, THPVariable_Wrap(std::move(std::get<0>(out))));
  PyTuple_SET_ITEM(result, 1, THPVariable_Wrap(std::move(std::get<1>(out))));
  return result;
  END_HANDLE_TH_ERRORS
}

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("gan_loss", &gan_loss_autograd);
  // The fused op itself is not differentiable (its gradients are outputs); gan_loss is.
  m.impl("gan_loss_fused", torch::CppFunction::makeFallthrough());
}
TORCH_LIBRARY_IMPL(ganfast, CompositeExplicitAutograd, m) { m.impl("gan_loss", &gan_loss_no_grad); }

}  // namespace ganfast

// Autograd of ganfast::spectral_norm_fused and ganfast::spectral_norm_multi (their CPU and CUDA
// kernels), in C++: the backward is one more fused kernel (spectral_norm_backward / _backward_multi) on
// what the forward saved (W, u', v', sigma). Registered under the Autograd key of each op; the forward
// calls the kernel below autograd. Python autograd (torch.library.register_autograd) cost 22 us more
// per fwd + bwd of one layer on a 2-core CPU (16x64 weight: 113 us vs 91 us; the two kernels alone
// take 30 us), and for the multi-tensor op 80 us more per forward of 3 small layers, plus the Python
// garbage collections its objects set off (3 layers of `ganfast bench sn`: 0.3-0.4 ms a forward).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include "eager_entry.h"

namespace ganfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                          const at::Tensor&, int64_t, int64_t, double);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, int64_t, double);

struct SpectralNormFunction : public torch::autograd::Function<SpectralNormFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& u,
                               const at::Tensor& v, int64_t dim, int64_t n_iter, double eps) {
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("ganfast::spectral_norm_fused", "").typed<Forward>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, u_out, v_out, sigma] = op.call(weight, u, v, dim, n_iter, eps);
    ctx->save_for_backward({weight, u_out, v_out, sigma});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({u_out, v_out, sigma});
    ctx->set_materialize_grads(false);  // u', v', sigma get no gradient: no zero tensors for them
    return {out, u_out, v_out, sigma};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("ganfast::spectral_norm_backward", "").typed<Backward>();
    at::Tensor grad_weight;
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      const auto saved = ctx->get_saved_variables();
      grad_weight = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], ctx->saved_data["dim"].toInt(),
                            ctx->saved_data["eps"].toDouble());
    }
    return {grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_norm_autograd(
    const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim, int64_t n_iter, double eps) {
  auto out = SpectralNormFunction::apply(weight, u, v, dim, n_iter, eps);
  return {out[0], out[1], out[2], out[3]};
}

using Lists = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                         std::vector<at::Tensor>>;
using ForwardMulti = Lists(at::TensorList, at::TensorList, at::TensorList, at::IntArrayRef, int64_t, double);
using BackwardMulti = std::vector<at::Tensor>(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                                              at::TensorList, at::IntArrayRef, double);

// Inputs and outputs are flattened by torch::autograd::Function: the inputs are weights, u, v (n tensors
// each), then dims (n ints), n_iter, eps; the outputs are outs, u', v', sigma (n each).
struct SpectralNormMultiFunction : public torch::autograd::Function<SpectralNormMultiFunction> {
  static variable_list forward(AutogradContext* ctx, at::TensorList weights, at::TensorList us, at::TensorList vs,
                               at::IntArrayRef dims, int64_t n_iter, double eps) {
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("ganfast::spectral_norm_multi", "").typed<ForwardMulti>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [outs, u_out, v_out, sigma] = op.call(weights, us, vs, dims, n_iter, eps);
    variable_list saved(weights.begin(), weights.end());
    for (const auto* list : {&u_out, &v_out, &sigma}) saved.insert(saved.end(), list->begin(), list->end());
    ctx->save_for_backward(saved);
    ctx->saved_data["dims"] = dims.vec();
    ctx->saved_data["eps"] = eps;
    variable_list no_grad(saved.begin() + int64_t(weights.size()), saved.end());
    ctx->mark_non_differentiable(no_grad);
    ctx->set_materialize_grads(false);
    variable_list result(outs.begin(), outs.end());
    result.insert(result.end(), no_grad.begin(), no_grad.end());
    return result;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("ganfast::spectral_norm_backward_multi", "")
                         .typed<BackwardMulti>();
    const auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> dims = ctx->saved_data["dims"].toIntVector();
    const size_t n = dims.size();
    variable_list result(4 * n + 2);  // one per flattened input; only the weights get one
    bool any = false;
    for (size_t i = 0; i < n; ++i) any = any || (grads[i].defined() && ctx->needs_input_grad(i));
    if (!any) return result;
    const auto part = [&](size_t k) { return std::vector<at::Tensor>(saved.begin() + k * n, saved.begin() + (k + 1) * n); };
    std::vector<at::Tensor> upstream(n);
    for (size_t i = 0; i < n; ++i)  // a layer unused in the step gets a zero upstream gradient
      upstream[i] = grads[i].defined() ? grads[i] : at::zeros_like(saved[i], at::MemoryFormat::Contiguous);
    auto dw = op.call(upstream, part(0), part(1), part(2), part(3), dims, ctx->saved_data["eps"].toDouble());
    for (size_t i = 0; i < n; ++i)
      if (ctx->needs_input_grad(i)) result[i] = dw[i];
    return result;
  }
};

Lists spectral_norm_multi_autograd(at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims,
                                   int64_t n_iter, double eps) {
  const size_t n = weights.size();
  TORCH_CHECK(us.size() == n && vs.size() == n && dims.size() == n,
              "ganfast::spectral_norm_multi: weights, u, v and dims must have the same length");
  auto flat = SpectralNormMultiFunction::apply(weights, us, vs, dims, n_iter, eps);
  const auto part = [&](size_t k) { return std::vector<at::Tensor>(flat.begin() + k * n, flat.begin() + (k + 1) * n); };
  return {part(0), part(1), part(2), part(3)};
}

// The tensors of Python list `list` into `out`: false when one of them needs the dispatcher.
bool direct_tensors(PyObject* list, const char* what, std::vector<at::Tensor>& out) {
  TORCH_CHECK_TYPE(PyList_Check(list), "spectral_norm_multi_eager: ", what, " must be a list");
  const Py_ssize_t n = PyList_GET_SIZE(list);
  out.reserve(size_t(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(list, i);
    if (!takes_direct_call(item)) return false;
    out.push_back(THPVariable_Unpack(item));
  }
  return true;
}

// u', v' (when n_iter > 0) and sigma copied into the layers' buffers us, vs, sigmas, in one foreach copy.
void copy_into_buffers(std::vector<at::Tensor> us, std::vector<at::Tensor> vs, std::vector<at::Tensor> sigmas,
                       std::vector<at::Tensor> u_out, std::vector<at::Tensor> v_out, std::vector<at::Tensor> sigma,
                       int64_t n_iter) {
  std::vector<at::Tensor> dst = std::move(sigmas), src = std::move(sigma);
  if (n_iter > 0) {
    dst.insert(dst.begin(), vs.begin(), vs.end());
    dst.insert(dst.begin(), us.begin(), us.end());
    src.insert(src.begin(), v_out.begin(), v_out.end());
    src.insert(src.begin(), u_out.begin(), u_out.end());
  }
  at::NoGradGuard no_grad;
  at::_foreach_copy_(dst, src);
}

// n_iter and eps, the last two arguments of both entries; false with a Python error set.
bool parse_n_iter_eps(PyObject* n_iter_obj, PyObject* eps_obj, int64_t& n_iter, double& eps) {
  n_iter = PyLong_AsLongLong(n_iter_obj);
  if (n_iter == -1 && PyErr_Occurred()) return false;
  eps = PyFloat_AsDouble(eps_obj);
  return !(eps == -1.0 && PyErr_Occurred());
}

}  // namespace

// The Python entries of a layer's update for plain eager tensors (eager_entry.h): the op through the
// autograd function its Autograd kernel runs, then u', v' (when n_iter > 0) and sigma copied into the
// layer's buffers u, v, sigma, in one call; they return W / sigma, or None when the call needs the
// dispatcher. Without them, the update is a torch.ops call (its boxing: 4 tensors out, for the
// multi-tensor op 3 lists in and 4 out) and a second Python call for the copy.
//
// ganfast._C.spectral_norm_eager(weight, u, v, sigma, dim, n_iter, eps) -> W / sigma | None: the
// single-layer op, as a normalized module computes its weight outside sn_step.
PyObject* spectral_norm_eager(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 7, "spectral_norm_eager takes (weight, u, v, sigma, dim, n_iter, eps), got ", nargs,
              " arguments");
  if (!default_dispatch_state()) Py_RETURN_NONE;
  for (int i = 0; i < 4; ++i)
    if (!takes_direct_call(args[i])) Py_RETURN_NONE;
  const int64_t dim = PyLong_AsLongLong(args[4]);
  if (dim == -1 && PyErr_Occurred()) return nullptr;
  int64_t n_iter;
  double eps;
  if (!parse_n_iter_eps(args[5], args[6], n_iter, eps)) return nullptr;
  const at::Tensor& u = THPVariable_Unpack(args[1]);
  const at::Tensor& v = THPVariable_Unpack(args[2]);
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    auto [w_out, u_out, v_out, sigma] = spectral_norm_autograd(THPVariable_Unpack(args[0]), u, v, dim, n_iter, eps);
    copy_into_buffers({u}, {v}, {THPVariable_Unpack(args[3])}, {u_out}, {v_out}, {sigma}, n_iter);
    out = std::move(w_out);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

// ganfast._C.spectral_norm_multi_eager(weights, us, vs, sigmas, dims, n_iter, eps) -> [W / sigma] | None:
// the multi-tensor op, as sn_step(multi_tensor=True) updates every layer of a model.
PyObject* spectral_norm_multi_eager(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 7, "spectral_norm_multi_eager takes (weights, us, vs, sigmas, dims, n_iter, eps), got ",
              nargs, " arguments");
  if (!default_dispatch_state()) Py_RETURN_NONE;
  std::vector<at::Tensor> weights, us, vs, sigmas;
  if (!direct_tensors(args[0], "weights", weights) || !direct_tensors(args[1], "us", us) ||
      !direct_tensors(args[2], "vs", vs) || !direct_tensors(args[3], "sigmas", sigmas))
    Py_RETURN_NONE;
  TORCH_CHECK_TYPE(PyList_Check(args[4]), "spectral_norm_multi_eager: dims must be a list");
  std::vector<int64_t> dims(size_t(PyList_GET_SIZE(args[4])));
  for (size_t i = 0; i < dims.size(); ++i) {
    dims[i] = PyLong_AsLongLong(PyList_GET_ITEM(args[4], Py_ssize_t(i)));
    if (dims[i] == -1 && PyErr_Occurred()) return nullptr;
  }
  int64_t n_iter;
  double eps;
  if (!parse_n_iter_eps(args[5], args[6], n_iter, eps)) return nullptr;
  TORCH_CHECK(sigmas.size() == weights.size(), "ganfast::spectral_norm_multi: ", weights.size(), " weights but ",
              sigmas.size(), " sigmas");
  std::vector<at::Tensor> outs;
  {
    pybind11::gil_scoped_release no_gil;
    auto [out, u_out, v_out, sigma] = spectral_norm_multi_autograd(weights, us, vs, dims, n_iter, eps);
    copy_into_buffers(std::move(us), std::move(vs), std::move(sigmas), std::move(u_out), std::move(v_out),
                      std::move(sigma), n_iter);
    outs = std::move(out);
  }
  PyObject* result = PyList_New(Py_ssize_t(outs.size()));
  if (result == nullptr) return nullptr;
  for (size_t i = 0; i < outs.size(); ++i) PyList_SET_ITEM(result, Py_ssize_t(i), THPVariable_Wrap(std::move(outs[i])));
  return result;
  END_HANDLE_TH_ERRORS
}

TORCH_LIBRARY_IMPL(ganfast, Autograd, m) {
  m.impl("spectral_norm_fused", &spectral_norm_autograd);
  m.impl("spectral_norm_multi", &spectral_norm_multi_autograd);
}

}  // namespace ganfast

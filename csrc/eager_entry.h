// What the Python entries of ganfast._C for plain eager tensors (gan_loss_eager, spectral_norm_eager,
// spectral_norm_multi_eager) check before they call an op's autograd function directly, skipping the
// torch.ops layers (OpOverload, argument parsing, the boxed call): where either check fails they
// return None and the caller goes through torch.ops, as everything does under torch.compile.
#pragma once
#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/autograd/python_variable.h>

#include "autograd.h"

namespace ganfast {

// True when the dispatcher would send a call on `obj` straight to the op's Autograd kernel: an exact
// torch.Tensor (no __torch_function__ subclass) of plain eager data (no functorch or tracer wrapper).
inline bool takes_direct_call(PyObject* obj) {
  return THPVariable_CheckExact(obj) && !THPVariable_Unpack(obj).key_set().has_any(kWrappedKeys);
}

// True when nothing in this thread changes where a call goes: no __torch_function__ or dispatch mode,
// no tracer, functorch transform, autocast or inference mode among the thread's dispatch keys.
inline bool default_dispatch_state() {
  const auto tls = c10::impl::tls_local_dispatch_key_set();
  return tls.included_ == c10::default_included_set && tls.excluded_ == c10::default_excluded_set &&
         !at::impl::torch_function_mode_enabled();
}

}  // namespace ganfast

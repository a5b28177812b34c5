// The ganfast._C Python module. Loading it registers the C++ and CUDA kernels of the ganfast:: ops,
// whose schemas ganfast/ops/ defines (before it loads this module). Its functions are faster entries
// to ops that run on every training step, for plain eager tensors (ganfast/ops/losses.py,
// ganfast/ops/spectral_norm.py), and the trainer's gradient norm on the CPU (ganfast/train/trainer.py).
#include <Python.h>

namespace ganfast {
PyObject* gan_loss_eager(PyObject* module, PyObject* const* args, Py_ssize_t nargs);  // gan_loss.cpp
PyObject* spectral_norm_eager(PyObject* module, PyObject* const* args, Py_ssize_t nargs);  // spectral_norm.cpp
PyObject* spectral_norm_multi_eager(PyObject* module, PyObject* const* args, Py_ssize_t nargs);  // spectral_norm.cpp
PyObject* grad_norm_eager(PyObject* module, PyObject* const* args, Py_ssize_t nargs);  // cpu/grad_norm.cpp
}

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"gan_loss_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ganfast::gan_loss_eager)),
       METH_FASTCALL,
       "gan_loss_eager(real, fake, kind, generator) -> (loss, stats) | None: ganfast::gan_loss for plain "
       "eager tensors; None when the call needs the dispatcher"},
      {"spectral_norm_eager",
       reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ganfast::spectral_norm_eager)), METH_FASTCALL,
       "spectral_norm_eager(weight, u, v, sigma, dim, n_iter, eps) -> W / sigma | None: "
       "ganfast::spectral_norm_fused for plain eager tensors, writing u', v' and sigma into u, v, sigma; None "
       "when the call needs the dispatcher"},
      {"spectral_norm_multi_eager",
       reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ganfast::spectral_norm_multi_eager)), METH_FASTCALL,
       "spectral_norm_multi_eager(weights, us, vs, sigmas, dims, n_iter, eps) -> [W / sigma] | None: "
       "ganfast::spectral_norm_multi for plain eager tensors, writing u', v' and sigma into us, vs, sigmas; None "
       "when the call needs the dispatcher"},
      {"grad_norm_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ganfast::grad_norm_eager)),
       METH_FASTCALL,
       "grad_norm_eager(tensors) -> sqrt(sum of x^2 over every element) | None: the trainer's gradient norm "
       "for dense CPU tensors, in one call; None for any other list (the caller takes torch's route)"},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "ganfast kernels (registered as ganfast:: ops)",
                                          -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef GANFAST_WITH_CUDA
  PyModule_AddIntConstant(module, "built_with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "built_with_cuda", 0);
#endif
  return module;
}
}

// The ganfast._C Python module. It carries no Python functions: loading it registers the C++ and
// CUDA kernels of the ganfast:: ops, whose schemas ganfast/ops/ defines (before it loads this module).
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "ganfast kernels (registered as ganfast:: ops)",
                                          -1, nullptr};
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

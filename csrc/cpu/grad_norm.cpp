// ganfast._C.grad_norm_eager(tensors) -> Tensor | None: sqrt(Σ x²) over every element of a list of
// dense CPU tensors (a model's gradients), for the trainer's gradient-norm stat. torch's route,
// _foreach_norm + stack + vector_norm, is ~10 ops of dispatch, and in a training step, with the
// dispatcher's code and data out of cache, it took ~50 us for the 8 gradients of the MLP of `ganfast
// bench step` (~12 us in a tight loop); this is one call. Each tensor is cut into chunks whose layout
// depends on its size alone (parallel.h), the chunks' sums of squares (vec/penalties_kernel.cpp, in
// double) run in parallel when there are enough elements, and are added in order: deterministic.
// Returns None where a tensor is not a dense CPU tensor of float, double, half or bfloat16 data that
// plain eager code holds (eager_entry.h); the caller then takes torch's route.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <vector>

#include "../common/parallel.h"
#include "../eager_entry.h"
#include "kernels.h"

namespace ganfast {
namespace {

// Below this many elements in all, the chunks run on the calling thread: a parallel region's fork
// and join cost more than the sum over a small model's gradients.
constexpr int64_t kParallelFrom = 4 * kChunk;

bool takes_dtype(c10::ScalarType t) {
  return t == c10::ScalarType::Float || t == c10::ScalarType::Double || t == c10::ScalarType::Half ||
         t == c10::ScalarType::BFloat16;
}

}  // namespace

PyObject* grad_norm_eager(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 1, "grad_norm_eager takes (tensors), got ", nargs, " arguments");
  TORCH_CHECK_TYPE(PyList_Check(args[0]), "grad_norm_eager: tensors must be a list");
  const Py_ssize_t count = PyList_GET_SIZE(args[0]);
  if (count == 0) Py_RETURN_NONE;
  std::vector<SumSquaresArgs> chunks;
  bool any_double = false;
  int64_t total = 0;
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* item = PyList_GET_ITEM(args[0], i);
    if (!takes_direct_call(item)) Py_RETURN_NONE;
    const at::Tensor& t = THPVariable_Unpack(item);
    if (!t.is_cpu() || t.layout() != at::kStrided || !takes_dtype(t.scalar_type()) ||
        !t.is_non_overlapping_and_dense())
      Py_RETURN_NONE;
    // dense with positive strides: the elements fill [data_ptr, data_ptr + numel) in some order
    const int64_t n = t.numel();
    any_double = any_double || t.scalar_type() == c10::ScalarType::Double;
    total += n;
    const ChunkLayout layout(n);
    const char* base = static_cast<const char*>(t.const_data_ptr());
    for (int64_t c = 0; c < layout.count; ++c) {
      const int64_t begin = c * layout.length;
      chunks.push_back({t.scalar_type(), base + begin * t.element_size(), std::min(layout.length, n - begin), nullptr});
    }
  }
  std::vector<double> sums(chunks.size(), 0.0);
  {
    pybind11::gil_scoped_release no_gil;
    auto run = [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        SumSquaresArgs a = chunks[size_t(c)];
        a.out = &sums[size_t(c)];
        GANFAST_CALL_CPU_KERNEL(sum_squares_kernel, a);
      }
    };
    if (total >= kParallelFrom)
      at::parallel_for(0, int64_t(chunks.size()), 1, run);
    else
      run(0, int64_t(chunks.size()));
  }
  double sum = 0.0;
  for (double s : sums) sum += s;  // in chunk order
  const auto dtype = any_double ? at::kDouble : at::kFloat;
  return THPVariable_Wrap(at::scalar_tensor(std::sqrt(sum), at::TensorOptions().dtype(dtype)));
  END_HANDLE_TH_ERRORS
}

}  // namespace ganfast

// Input checks and output allocation of ganfast::diffaugment and ganfast::diffaugment_backward,
// shared by the CPU and CUDA kernels (the Python API checks first, with friendlier messages).
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "common/augment.h"
#include "output_alloc.h"

namespace ganfast {

struct AugmentCall {
  at::Tensor x;  // contiguous (B, C, H, W): the input, or the upstream gradient
  at::Tensor color, geometry;  // contiguous; color undefined when absent
  at::Tensor out;
  int64_t batch, channels, height, width;
};

// empty_like allocates the output (the CPU op: from its output cache when large).
inline AugmentCall prepare_augment(const at::Tensor& x, const std::optional<at::Tensor>& color,
                                   const at::Tensor& geometry, const char* op,
                                   EmptyLike empty_like = contiguous_empty_like) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be a batch of images (B, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, op, ": x is empty (shape ", x.sizes(), ")");
  const int64_t b = x.size(0);
  TORCH_CHECK(geometry.scalar_type() == at::kInt && geometry.dim() == 2 && geometry.size(0) == b &&
                  geometry.size(1) == kAugGeometry,
              op, ": geometry must be int32 of shape (", b, ", ", kAugGeometry, "), got ", geometry.scalar_type(), " ",
              geometry.sizes());
  TORCH_CHECK(geometry.device() == x.device(), op, ": geometry is on ", geometry.device(), ", x on ", x.device());
  TORCH_CHECK(x.numel() / b <= int64_t(INT32_MAX), op, ": one image has more than 2^31 elements");
  AugmentCall c;
  if (color.has_value() && color->defined()) {
    TORCH_CHECK(color->scalar_type() == at::kFloat && color->dim() == 2 && color->size(0) == b &&
                    color->size(1) == kAugColor,
                op, ": color must be float32 of shape (", b, ", ", kAugColor, "), got ", color->scalar_type(), " ",
                color->sizes());
    TORCH_CHECK(color->device() == x.device(), op, ": color is on ", color->device(), ", x on ", x.device());
    c.color = color->contiguous();
  }
  c.x = x.contiguous();
  c.geometry = geometry.contiguous();
  c.out = empty_like(c.x);
  c.batch = b;
  c.channels = x.size(1);
  c.height = x.size(2);
  c.width = x.size(3);
  return c;
}

}  // namespace ganfast

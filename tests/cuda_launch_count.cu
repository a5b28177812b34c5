// The counting build of the CUDA launchers (ganfast.bench.launches, tests/test_cuda_launch_count.py):
// compiled with -DGANFAST_COUNT_LAUNCHES together with csrc/cuda/*.cu, launch_kernel counts instead
// of launching, so each launcher below runs on a machine without a GPU (the pointers are never
// touched). Prints one line per case: <launcher> TAB <case> TAB <launches>.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../csrc/cuda/common.cuh"
#include "../csrc/cuda/kernels.cuh"

using namespace ganfast::cuda;

namespace {

template <typename F> void report(const char* launcher, const char* what, F&& call) {
  launch_count = 0;
  const cudaError_t err = call();
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s %s: the launcher returned error %d\n", launcher, what, int(err));
    std::exit(1);
  }
  std::printf("%s\t%s\t%d\n", launcher, what, launch_count);
}

SpectralNormArgs sn_layer(int64_t outer, int64_t h, int64_t inner, int64_t n_iter) {
  SpectralNormArgs a{};
  a.outer = outer;
  a.h = h;
  a.inner = inner;
  a.n_iter = n_iter;
  a.eps = 1e-12;
  return a;
}

SpectralNormBackwardArgs sn_backward_layer(int64_t outer, int64_t h, int64_t inner) {
  SpectralNormBackwardArgs a{};
  a.outer = outer;
  a.h = h;
  a.inner = inner;
  a.eps = 1e-12;
  return a;
}

}  // namespace

int main() {
  const struct { const char* name; int id; } kinds[] = {{"ns", 0}, {"hinge", 2}, {"rahinge", 5}};
  for (const auto& k : kinds) {
    for (bool generator : {false, true}) {
      for (int64_t n : {int64_t(64), int64_t(1) << 20}) {  // one block; the grid of blocks
        const std::string what =
            std::string("kind=") + k.name + (generator ? " g" : " d") + (n > 64 ? " n=2^20" : "");
        GanLossArgs a{};
        a.n_real = n;
        a.n_fake = n;
        a.kind = k.id;
        a.generator = generator;
        report("gan_loss", what.c_str(), [&] { return gan_loss(a, DType::Float32, nullptr); });
      }
    }
  }
  for (int kind = 0; kind < 3; ++kind) {
    GradPenaltyArgs a{};
    a.rows = 64;
    a.cols = 192;
    a.kind = kind;
    const std::string what = "kind=" + std::to_string(kind);
    report("grad_penalty", what.c_str(), [&] { return grad_penalty(a, DType::Float32, nullptr); });
  }
  for (int perturb = 0; perturb < 2; ++perturb) {
    InterpolateArgs a{};
    a.rows = 64;
    a.cols = 192;
    a.perturb = perturb;
    const std::string what = "perturb=" + std::to_string(perturb);
    report("gp_interpolate", what.c_str(), [&] { return gp_interpolate(a, DType::Float32, nullptr); });
  }
  // One layer as ganfast.bench.launches counts it (64 x 32 x 3 x 3, dim 0), then a DCGAN D at 32x32.
  for (int64_t n_iter = 0; n_iter < 3; ++n_iter) {
    const SpectralNormArgs a = sn_layer(1, 64, 32 * 9, n_iter);
    const std::string what = "n_iter=" + std::to_string(n_iter);
    report("spectral_norm_forward", what.c_str(), [&] { return spectral_norm_forward(&a, 1, DType::Float32, nullptr); });
  }
  {
    const SpectralNormBackwardArgs a = sn_backward_layer(1, 64, 32 * 9);
    float* part = nullptr;
    report("spectral_norm_backward", "", [&] { return spectral_norm_backward(&a, &part, 1, DType::Float32, nullptr); });
  }
  const int64_t d_layers[][3] = {{1, 32, 3 * 16}, {1, 64, 32 * 16}, {1, 128, 64 * 16}, {1, 1, 128 * 16}};
  for (int64_t n_iter = 0; n_iter < 2; ++n_iter) {
    std::vector<SpectralNormArgs> layers;
    for (const auto& d : d_layers) layers.push_back(sn_layer(d[0], d[1], d[2], n_iter));
    const std::string what = "layers=4 n_iter=" + std::to_string(n_iter);
    report("spectral_norm_multi_forward", what.c_str(),
           [&] { return spectral_norm_forward(layers.data(), int(layers.size()), DType::Float32, nullptr); });
  }
  {
    std::vector<SpectralNormBackwardArgs> layers;
    for (const auto& d : d_layers) layers.push_back(sn_backward_layer(d[0], d[1], d[2]));
    std::vector<float*> parts(layers.size(), nullptr);
    report("spectral_norm_multi_backward", "layers=4", [&] {
      return spectral_norm_backward(layers.data(), parts.data(), int(layers.size()), DType::Float32, nullptr);
    });
  }
  {  // more layers than one table holds: one more set of launches per 24 layers
    std::vector<SpectralNormArgs> layers(30, sn_layer(1, 8, 8, 1));
    report("spectral_norm_multi_forward", "layers=30 n_iter=1",
           [&] { return spectral_norm_forward(layers.data(), int(layers.size()), DType::Float32, nullptr); });
  }
  {  // the fused augmentation: one launch each way, whatever the policy
    AugmentArgs a{};
    a.batch = 64;
    a.channels = 3;
    a.height = a.width = 32;
    report("diffaugment_forward", "", [&] { return diffaugment_forward(a, DType::Float32, nullptr); });
    report("diffaugment_backward", "", [&] { return diffaugment_backward(a, DType::Float32, nullptr); });
  }
  return 0;
}

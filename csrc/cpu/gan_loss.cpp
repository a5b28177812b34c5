// CPU kernel of ganfast::gan_loss_fused: loss, d loss / d logits and the D statistics in one call.
// Terms are evaluated in float (double for double inputs) and summed in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../common/parallel.h"
#include "../gan_loss_inputs.h"

namespace ganfast {
namespace {

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
void gan_loss_cpu_kernel(const scalar_t* r, int64_t nr, const scalar_t* f, int64_t nf, LossSpec spec,
                         scalar_t* gr, scalar_t* gf, scalar_t* loss, float* stats) {
  using T = opmath_t<scalar_t>;
  // Pass 1: the statistics (and the means the relativistic kinds need).
  const auto rs = chunked_sum<2>(nr, [&](int64_t b, int64_t e, std::array<double, 2>& a) {
    for (int64_t i = b; i < e; ++i) { T x = T(r[i]); a[0] += x; a[1] += x > T(0); }
  });
  const auto fs = chunked_sum<2>(nf, [&](int64_t b, int64_t e, std::array<double, 2>& a) {
    for (int64_t i = b; i < e; ++i) { T x = T(f[i]); a[0] += x; a[1] += x < T(0); }
  });
  // Without real logits (a non-relativistic G loss) the real statistics are 0.
  const double mean_r = nr ? rs[0] / nr : 0.0, mean_f = fs[0] / nf;
  stats[kRealMean] = float(mean_r);
  stats[kFakeMean] = float(mean_f);
  stats[kRealAcc] = nr ? float(rs[1] / nr) : 0.f;
  stats[kFakeAcc] = float(fs[1] / nf);

  if (spec.mode == Mode::Paired) {  // L = mean phi(r_i - f_i)
    const T inv_n = T(1) / T(nf);
    const auto s = chunked_sum<1>(nf, [&](int64_t b, int64_t e, std::array<double, 1>& a) {
      for (int64_t i = b; i < e; ++i) {
        T v, d;
        term_eval(spec.phi, T(r[i]) - T(f[i]), v, d);
        a[0] += v;
        gr[i] = scalar_t(d * inv_n);
        gf[i] = scalar_t(-d * inv_n);
      }
    });
    *loss = scalar_t(s[0] / nf);
    return;
  }
  // plain: shift 0; relavg: phi(r_i - mean f), psi(f_j - mean r).
  const bool relavg = spec.mode == Mode::RelAvg;
  const T shift_r = relavg ? T(mean_f) : T(0), shift_f = relavg ? T(mean_r) : T(0);
  // Pass 2: the terms and the sums of their derivatives (a relavg gradient needs the other side's).
  const auto sr = chunked_sum<2>(spec.phi == Term::None ? 0 : nr, [&](int64_t b, int64_t e, std::array<double, 2>& a) {
    for (int64_t i = b; i < e; ++i) {
      T v, d;
      term_eval(spec.phi, T(r[i]) - shift_r, v, d);
      a[0] += v; a[1] += d;
      if (!relavg) gr[i] = scalar_t(d / T(nr));
    }
  });
  const auto sf = chunked_sum<2>(spec.psi == Term::None ? 0 : nf, [&](int64_t b, int64_t e, std::array<double, 2>& a) {
    for (int64_t i = b; i < e; ++i) {
      T v, d;
      term_eval(spec.psi, T(f[i]) - shift_f, v, d);
      a[0] += v; a[1] += d;
      if (!relavg) gf[i] = scalar_t(d / T(nf));
    }
  });
  *loss = scalar_t((spec.phi == Term::None ? 0.0 : sr[0] / nr) + (spec.psi == Term::None ? 0.0 : sf[0] / nf));
  if (spec.phi == Term::None && nr > 0) chunked_for(nr, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) gr[i] = scalar_t(0);
  });
  if (!relavg) return;
  // Pass 3: dL/dr_i = (phi'(x_i) - mean_j psi'(y_j)) / Nr,  dL/df_j = (psi'(y_j) - mean_i phi'(x_i)) / Nf.
  const T mean_dpsi = T(sf[1] / nf), mean_dphi = T(sr[1] / nr);
  chunked_for(nr, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T v, d;
      term_eval(spec.phi, T(r[i]) - shift_r, v, d);
      gr[i] = scalar_t((d - mean_dpsi) / T(nr));
    }
  });
  chunked_for(nf, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T v, d;
      term_eval(spec.psi, T(f[i]) - shift_f, v, d);
      gf[i] = scalar_t((d - mean_dphi) / T(nf));
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_fused_cpu(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, bool generator) {
  GanLossCall c = prepare_gan_loss(real, fake, kind, generator);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.fake.scalar_type(), "gan_loss_fused_cpu", [&] {
    gan_loss_cpu_kernel<scalar_t>(c.real.data_ptr<scalar_t>(), c.real.numel(), c.fake.data_ptr<scalar_t>(),
                                  c.fake.numel(), c.spec, c.grad_real.data_ptr<scalar_t>(),
                                  c.grad_fake.data_ptr<scalar_t>(), c.loss.data_ptr<scalar_t>(), c.stats.data_ptr<float>());
  });
  return {c.loss, c.grad_real, c.grad_fake, c.stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) { m.impl("gan_loss_fused", &gan_loss_fused_cpu); }

}  // namespace ganfast

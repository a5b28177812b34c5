// CPU kernel of ganfast::gan_loss_fused: loss, d loss / d logits and the D statistics in one call.
// Terms are evaluated in float (double for double inputs) with the term fixed at compile time, and
// summed in double, per fixed-size chunk (deterministic whatever the thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <type_traits>

#include "../common/parallel.h"
#include "../gan_loss_inputs.h"

namespace ganfast {
namespace {

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Calls f(std::integral_constant<Term, t>) for the run-time term t: one loop instantiation per term.
template <typename F>
auto with_term(Term t, F&& f) {
  using std::integral_constant;
  switch (t) {
    case Term::SoftplusNeg: return f(integral_constant<Term, Term::SoftplusNeg>{});
    case Term::SoftplusPos: return f(integral_constant<Term, Term::SoftplusPos>{});
    case Term::NegSoftplusPos: return f(integral_constant<Term, Term::NegSoftplusPos>{});
    case Term::HingeNeg: return f(integral_constant<Term, Term::HingeNeg>{});
    case Term::HingePos: return f(integral_constant<Term, Term::HingePos>{});
    case Term::Neg: return f(integral_constant<Term, Term::Neg>{});
    case Term::Pos: return f(integral_constant<Term, Term::Pos>{});
    case Term::HalfSqMinus1: return f(integral_constant<Term, Term::HalfSqMinus1>{});
    case Term::HalfSq: return f(integral_constant<Term, Term::HalfSq>{});
    default: return f(integral_constant<Term, Term::None>{});
  }
}

// Sums of a term's values and derivatives over x_i = a[i] - (b ? b[i] : shift). With grad_a, also
// writes grad_a[i] = d_i * scale (and grad_b[i] = -d_i * scale).
// The sums run in kLanes independent double accumulators: one chain of dependent adds would bound
// the loop by the add latency, and lanes keep the order of each sum fixed (deterministic).
constexpr int kLanes = 8;

template <Term t, typename scalar_t, typename T = opmath_t<scalar_t>>
std::array<double, 2> term_pass(const scalar_t* a, const scalar_t* b, T shift, int64_t n, scalar_t* grad_a,
                                scalar_t* grad_b, T scale) {
  return chunked_sum<2>(n, [&](int64_t begin, int64_t end, std::array<double, 2>& acc) {
    double sum_v[kLanes] = {}, sum_d[kLanes] = {};  // locals, not acc[]: the stores below could alias it
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        T v, d;
        term_eval<t>(T(a[i + j]) - (b ? T(b[i + j]) : shift), v, d);
        sum_v[j] += v;
        sum_d[j] += d;
        if (grad_a) grad_a[i + j] = scalar_t(d * scale);
        if (grad_b) grad_b[i + j] = scalar_t(-d * scale);
      }
    }
    for (int j = 0; i < end; ++i, ++j) {
      T v, d;
      term_eval<t>(T(a[i]) - (b ? T(b[i]) : shift), v, d);
      sum_v[j] += v;
      sum_d[j] += d;
      if (grad_a) grad_a[i] = scalar_t(d * scale);
      if (grad_b) grad_b[i] = scalar_t(-d * scale);
    }
    for (int j = 0; j < kLanes; ++j) {
      acc[0] += sum_v[j];
      acc[1] += sum_d[j];
    }
  });
}

// Relativistic-average gradient: grad[i] = (d_i - mean_other) * scale, d_i the term's derivative.
template <Term t, typename scalar_t, typename T = opmath_t<scalar_t>>
void relavg_grad_pass(const scalar_t* a, T shift, int64_t n, T mean_other, T scale, scalar_t* grad) {
  chunked_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T v, d;
      term_eval<t>(T(a[i]) - shift, v, d);
      grad[i] = scalar_t((d - mean_other) * scale);
    }
  });
}

template <typename scalar_t>
void gan_loss_cpu_kernel(const scalar_t* r, int64_t nr, const scalar_t* f, int64_t nf, LossSpec spec,
                         scalar_t* gr, scalar_t* gf, scalar_t* loss, float* stats) {
  using T = opmath_t<scalar_t>;
  // Pass 1: the statistics (and the means the relativistic kinds need).
  auto moments = [](const scalar_t* x, int64_t n, const bool count_positive) {
    return chunked_sum<2>(n, [&](int64_t b, int64_t e, std::array<double, 2>& acc) {
      double sum[kLanes] = {};
      int64_t hits[kLanes] = {};  // integer counts: adding a bool as a double stalls on the conversion
      int64_t i = b;
      for (; i + kLanes <= e; i += kLanes)
        for (int j = 0; j < kLanes; ++j) {
          T v = T(x[i + j]);
          sum[j] += v;
          hits[j] += count_positive ? v > T(0) : v < T(0);
        }
      for (int j = 0; i < e; ++i, ++j) {
        T v = T(x[i]);
        sum[j] += v;
        hits[j] += count_positive ? v > T(0) : v < T(0);
      }
      for (int j = 0; j < kLanes; ++j) { acc[0] += sum[j]; acc[1] += double(hits[j]); }
    });
  };
  const auto rs = moments(r, nr, true);   // sum of r, count of r > 0
  const auto fs = moments(f, nf, false);  // sum of f, count of f < 0
  // Without real logits (a non-relativistic G loss) the real statistics are 0.
  const double mean_r = nr ? rs[0] / nr : 0.0, mean_f = fs[0] / nf;
  stats[kRealMean] = float(mean_r);
  stats[kFakeMean] = float(mean_f);
  stats[kRealAcc] = nr ? float(rs[1] / nr) : 0.f;
  stats[kFakeAcc] = float(fs[1] / nf);

  if (spec.mode == Mode::Paired) {  // L = mean phi(r_i - f_i)
    const auto s = with_term(spec.phi, [&](auto t) {
      return term_pass<decltype(t)::value>(r, f, T(0), nf, gr, gf, T(1) / T(nf));
    });
    *loss = scalar_t(s[0] / nf);
    return;
  }
  // plain: shift 0; relavg: phi(r_i - mean f), psi(f_j - mean r).
  const bool relavg = spec.mode == Mode::RelAvg;
  const T shift_r = relavg ? T(mean_f) : T(0), shift_f = relavg ? T(mean_r) : T(0);
  // Pass 2: the terms and the sums of their derivatives (a relavg gradient needs the other side's).
  const auto sr = with_term(spec.phi, [&](auto t) {
    return term_pass<decltype(t)::value>(r, (const scalar_t*)nullptr, shift_r, spec.phi == Term::None ? 0 : nr,
                                         relavg ? nullptr : gr, (scalar_t*)nullptr, T(1) / T(nr ? nr : 1));
  });
  const auto sf = with_term(spec.psi, [&](auto t) {
    return term_pass<decltype(t)::value>(f, (const scalar_t*)nullptr, shift_f, spec.psi == Term::None ? 0 : nf,
                                         relavg ? nullptr : gf, (scalar_t*)nullptr, T(1) / T(nf));
  });
  *loss = scalar_t((spec.phi == Term::None ? 0.0 : sr[0] / nr) + (spec.psi == Term::None ? 0.0 : sf[0] / nf));
  if (spec.phi == Term::None && nr > 0) std::fill(gr, gr + nr, scalar_t(0));  // real logits passed but unused
  if (!relavg) return;
  // Pass 3: dL/dr_i = (phi'(x_i) - mean_j psi'(y_j)) / Nr,  dL/df_j = (psi'(y_j) - mean_i phi'(x_i)) / Nf.
  with_term(spec.phi, [&](auto t) {
    relavg_grad_pass<decltype(t)::value>(r, shift_r, nr, T(sf[1] / nf), T(1) / T(nr), gr);
  });
  with_term(spec.psi, [&](auto t) {
    relavg_grad_pass<decltype(t)::value>(f, shift_f, nf, T(sr[1] / nr), T(1) / T(nf), gf);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gan_loss_fused_cpu(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, bool generator) {
  GanLossCall c = prepare_gan_loss(real, fake, kind, generator);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.fake.scalar_type(), "gan_loss_fused_cpu", [&] {
    gan_loss_cpu_kernel<scalar_t>(c.real.data_ptr<scalar_t>(), c.real.numel(), c.fake.data_ptr<scalar_t>(),
                                  c.fake.numel(), c.spec, c.grad_real.data_ptr<scalar_t>(),
                                  c.grad_fake.data_ptr<scalar_t>(), c.loss.data_ptr<scalar_t>(),
                                  c.stats.data_ptr<float>());
  });
  return {c.loss, c.grad_real, c.grad_fake, c.stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(ganfast, CPU, m) { m.impl("gan_loss_fused", &gan_loss_fused_cpu); }

}  // namespace ganfast

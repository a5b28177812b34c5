// Vectorized CPU kernel of ganfast::gan_loss_fused (compiled once per capability, see kernels.h):
// the loss, d loss / d logits and the D statistics. Terms are evaluated in op-math vectors (float,
// double for double inputs) with ATen's Vectorized (exp and log1p: see softplus_sigmoid); sums
// follow vec_utils.h (blocks, then double lanes, then fixed-size chunks in order: deterministic
// whatever the thread count), except the sums of the logits themselves (the means of the statistics
// and of relavg, and a linear term's values), which are double from the first addition (WideLanes).
//
// Passes over the logits (each reads them once):
//   plain:   one pass per side: statistics, term values, and the gradient d_i / N written.
//   paired:  one pass over (r, f): statistics of both, phi(r_i - f_i), both gradients written.
//   relavg:  statistics (the means shift the terms); terms and their derivatives d_i (written
//            raw into the gradient); then grad_i = (d_i - mean of the other side's d) / N.
// The two sides' passes run in one parallel region (chunked_sum_pair, for_chunks_of_two in
// common/parallel.h).
#include "../../common/parallel.h"
#include "../kernels.h"
#include "vec_utils.h"

#include <algorithm>
#include <array>
#include <functional>

namespace ganfast {
namespace CPU_CAPABILITY {
namespace {

// softplus(y) = max(y, 0) + log1p(e) and sigmoid(y) = (y < 0 ? e : 1) / (1 + e), e = exp(-|y|),
// as softplus_sigmoid in common/gan_loss.h; selecting on `y < 0` keeps NaN in both.
//
// In float, exp and log1p are written out here, inline and with one division between them: SLEEF's
// log1p cost ten times its exp, and its calls spilled every vector register. Error, measured over
// |y| in [1e-30, 100]: softplus within 4 ulp, sigmoid within 3.2 ulp (of values above 1e-37); an
// exp that would fall below 2^-126 (|y| > 87.3) is 0 (absolute error < 1.2e-38).
//   exp(x), x <= 0: x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two parts), e^r by Cephes' degree-7
//     polynomial (0.94 ulp), times 2^n built in the exponent bits.
//   log1p(e), e in [0, 1]: 1 + e = 2^k (1 + s) / (1 - s), k = 0 (e <= sqrt2 - 1) or 1, so
//     s = e / (2 + e) or (e - 1) / (e + 3), |s| <= 0.1716, and log1p(e) = k ln2 + 2 atanh(s), the
//     series 2s (1 + z/3 + z^2/5 + z^3/7 + z^4/9), z = s^2, cut at a relative 2e-9. It keeps its
//     relative accuracy as e -> 0 (log1p(e) ~ e), where log(1 + e) would not.
//   The shared division: w = 1 / ((1 + e)(2 + e or 3 + e)) gives both 1 / (1 + e) and s.
// In double, SLEEF's exp and log1p (1 ulp) through Vectorized.
// Each function below computes N independent vectors statement by statement (each() loops over
// them): with N > 1 the N dependency chains interleave in program order, which the AVX2 copy needs
// (see kInterleaveSoftplus); with N = 1 it is the plain one-vector code. Either way every lane gets
// the same operations, so results do not depend on N.
template <int N, typename F>
C10_ALWAYS_INLINE void each(F&& f) {
  for (int k = 0; k < N; ++k) f(k);
}

template <int N>
C10_ALWAYS_INLINE void exp_nonpositive(const Vectorized<float> (&x)[N], Vectorized<float> (&out)[N]) {
  using Vec = Vectorized<float>;
  using IVec = Vectorized<int32_t>;
  Vec n[N], r[N], p[N];
  each<N>([&](int k) { n[k] = (x[k] * Vec(1.44269504088896341f)).round(); });
  each<N>([&](int k) { r[k] = at::vec::fmadd(n[k], Vec(-0.693359375f), x[k]); });
  each<N>([&](int k) { r[k] = at::vec::fmadd(n[k], Vec(2.12194440e-4f), r[k]); });
  each<N>([&](int k) { p[k] = at::vec::fmadd(Vec(1.9875691500e-4f), r[k], Vec(1.3981999507e-3f)); });
  each<N>([&](int k) { p[k] = at::vec::fmadd(p[k], r[k], Vec(8.3334519073e-3f)); });
  each<N>([&](int k) { p[k] = at::vec::fmadd(p[k], r[k], Vec(4.1665795894e-2f)); });
  each<N>([&](int k) { p[k] = at::vec::fmadd(p[k], r[k], Vec(1.6666665459e-1f)); });
  each<N>([&](int k) { p[k] = at::vec::fmadd(p[k], r[k], Vec(5.0000001201e-1f)); });
  each<N>([&](int k) {
    const Vec er = at::vec::fmadd(p[k], r[k] * r[k], r[k] + Vec(1.f));
    // n in [-126, 0] where the result is kept: 2^n = float with exponent bits n + 127
    const Vec two_n = at::vec::cast<float>(shift_left<23>(at::vec::convert_to_int_of_same_size(n[k]) + IVec(127)));
    out[k] = select(less(x[k], Vec(-87.33654f)), Vec(0.f), er * two_n);  // also exp(-inf) = 0; NaN stays NaN
  });
}

template <int N, typename T>
C10_ALWAYS_INLINE void softplus_sigmoid(const Vectorized<T> (&y)[N], Vectorized<T> (&sp)[N], Vectorized<T> (&sg)[N]) {
  using Vec = Vectorized<T>;
  const Vec zero(T(0)), one(T(1));
  if constexpr (std::is_same_v<T, float>) {
    Vec minus_abs[N], e[N], one_plus_e[N], den[N], w[N], s[N], series[N];
    each<N>([&](int k) { minus_abs[k] = y[k] | Vec(-0.f); });  // -|y|: the sign bit set
    exp_nonpositive<N>(minus_abs, e);
    each<N>([&](int k) {
      one_plus_e[k] = one + e[k];
      den[k] = select(greater(e[k], Vec(0.41421356f)), e[k] + Vec(3.f), e[k] + Vec(2.f));
      w[k] = one / (one_plus_e[k] * den[k]);
    });
    each<N>([&](int k) {
      const auto big = greater(e[k], Vec(0.41421356f));
      s[k] = select(big, e[k] - one, e[k]) * (one_plus_e[k] * w[k]);  // (e or e - 1) / (2 + e or 3 + e)
      const Vec q = den[k] * w[k];                                      // 1 / (1 + e)
      sg[k] = select(less(y[k], zero), e[k] * q, q);
    });
    each<N>([&](int k) { series[k] = at::vec::fmadd(s[k] * s[k], Vec(1.f / 9.f), Vec(1.f / 7.f)); });
    each<N>([&](int k) { series[k] = at::vec::fmadd(series[k], s[k] * s[k], Vec(1.f / 5.f)); });
    each<N>([&](int k) { series[k] = at::vec::fmadd(series[k], s[k] * s[k], Vec(1.f / 3.f)); });
    each<N>([&](int k) { series[k] = at::vec::fmadd(series[k], s[k] * s[k], one); });
    each<N>([&](int k) {
      const auto big = greater(e[k], Vec(0.41421356f));
      const Vec log1p_e = at::vec::fmadd(s[k] + s[k], series[k], select(big, Vec(0.69314718f), zero));
      sp[k] = select(less(y[k], zero), zero, y[k]) + log1p_e;
    });
  } else {
    each<N>([&](int k) {
      const Vec e = y[k].abs().neg().exp();
      sp[k] = select(less(y[k], zero), zero, y[k]) + e.log1p();
      const Vec q = one / (one + e);
      sg[k] = select(less(y[k], zero), e * q, q);
    });
  }
}

// The default copy (no AVX2) runs the scalar terms of common/gan_loss.h (the CUDA kernel's math,
// with the C library's exp and log1p) instead of Vectorized: ATen's generic Vectorized does each
// comparison and blend lane by lane through memory, which made this copy 35x slower than the AVX2
// one and slower than eager PyTorch on the same path. Sums keep the vector loop's lanes and order.
#if defined(CPU_CAPABILITY_DEFAULT)
constexpr bool kScalarTerms = true;
#else
constexpr bool kScalarTerms = false;
#endif

// Vectors per step of the loss loop, for the softplus terms and for the others. The dependency
// chains of N vectors, side by side in program order (each() above), overlap where one chain at a
// time did not. The softplus' chain (exp, a division, log1p: ~100 cycles) wants four: the fused
// d_loss ns at B = 1M on one thread of a Zen 2 (AVX2) took 5.1 ms with one vector a step, 4.0 with
// two, 3.0 with four, 3.1-3.2 with three, six or eight (2026-12-05); on a Sapphire Rapids Xeon
// (AVX-512) the softplus part of g_loss ns at 1M (its time less hinge's) took 805-910 us with one,
// 690 with two, 575-615 with four or eight (2026-12-06). The cheap terms' chains are short: two
// took wasserstein's g_loss at B = 57600 on one Zen 2 thread from 19.5 to 15 us, and four were
// slower than two for hinge (25 -> 28 us at 57600 on two threads). (The default copy runs the
// scalar terms, kScalarTerms, and takes no steps.)
constexpr int kInterleaveSoftplus = 4;
constexpr int kInterleave = 2;

template <Term t>
constexpr bool kSoftplusTerm = t == Term::SoftplusNeg || t == Term::SoftplusPos || t == Term::NegSoftplusPos;

// step(N, i, m_last) over [begin, end): steps of kStep full vectors (W lanes each), then one vector
// at a time, the last with m_last < W live lanes when W does not divide the range.
template <int kStep, int64_t W, typename Step>
C10_ALWAYS_INLINE void for_steps(int64_t begin, int64_t end, Step&& step) {
  int64_t i = begin;
  for (; i + kStep * W <= end; i += kStep * W) step(std::integral_constant<int, kStep>{}, i, W);
  for (; i < end; i += W) step(std::integral_constant<int, 1>{}, i, std::min(W, end - i));
}

// Values and derivatives of one term on N vectors (the vector form of term_eval in
// common/gan_loss.h).
template <Term t, int N, typename T>
C10_ALWAYS_INLINE void term_vec(const Vectorized<T> (&x)[N], Vectorized<T> (&v)[N], Vectorized<T> (&d)[N]) {
  using Vec = Vectorized<T>;
  const Vec zero(T(0)), one(T(1));
  if constexpr (t == Term::SoftplusNeg) {
    Vec y[N];
    each<N>([&](int k) { y[k] = x[k].neg(); });
    softplus_sigmoid<N>(y, v, d);
    each<N>([&](int k) { d[k] = d[k].neg(); });
  } else if constexpr (t == Term::SoftplusPos) {
    softplus_sigmoid<N>(x, v, d);
  } else if constexpr (t == Term::NegSoftplusPos) {
    softplus_sigmoid<N>(x, v, d);
    each<N>([&](int k) { v[k] = v[k].neg(); d[k] = d[k].neg(); });
  } else {
    each<N>([&](int k) {
      if constexpr (t == Term::HingeNeg) { const Vec a = one - x[k]; v[k] = select(less(a, zero), zero, a); d[k] = select(greater(a, zero), one.neg(), zero); }
      else if constexpr (t == Term::HingePos) { const Vec a = one + x[k]; v[k] = select(less(a, zero), zero, a); d[k] = select(greater(a, zero), one, zero); }
      else if constexpr (t == Term::Neg) { v[k] = x[k].neg(); d[k] = one.neg(); }
      else if constexpr (t == Term::Pos) { v[k] = x[k]; d[k] = one; }
      else if constexpr (t == Term::HalfSqMinus1) { d[k] = x[k] - one; v[k] = Vec(T(0.5)) * d[k] * d[k]; }
      else if constexpr (t == Term::HalfSq) { v[k] = Vec(T(0.5)) * x[k] * x[k]; d[k] = x[k]; }
      else { v[k] = zero; d[k] = zero; }
    });
  }
}

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

// What a pass writes into the gradients: nothing; d_i·scale into grad_a (and -d_i·scale into
// grad_b when paired); or the raw d_i into grad_a (relavg, rescaled by a later pass).
enum class GradWrite { None, Scaled, Raw };

// The sums a pass returns.
enum Sum : int { kSumA = 0, kHitsA, kSumB, kHitsB, kSumValue, kSumDeriv, kNumSums };

using Sums = std::array<double, kNumSums>;
// A pass's body over [begin, end), adding into its sums (chunked_sum's body), type-erased so that the
// two sides of a loss, each with its own term, can share one parallel region (chunked_sum_pair).
using PassBody = std::function<void(int64_t, int64_t, Sums&)>;

// The body of one pass over x_i = a_i - b_i (paired) or a_i - shift: the sums of a (and b), the
// counts of a > 0 (a < 0 when !count_a_positive) and of b < 0, the sums of the term's values and
// derivatives; writes the gradients as gw says.
template <Term t, bool kPaired, GradWrite gw, typename scalar_t, typename T = opmath_t<scalar_t>>
auto term_body(const scalar_t* a, const scalar_t* b, T shift, bool count_a_positive, scalar_t* grad_a,
               scalar_t* grad_b, T scale) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  // Sums no one reads are not kept: the values' without a term, the derivatives' outside relavg
  // (its term pass, whose gradient is written raw or not at all, is the only one that reads them).
  // A linear term's values sum to ±(sum of a - sum of b or n·shift): taken from the double sums of a
  // and b below, not summed again.
  constexpr bool kLinear = t == Term::Pos || t == Term::Neg;
  constexpr bool kSumsValue = t != Term::None && !kLinear;
  constexpr bool kSumsDeriv = t != Term::None && gw != GradWrite::Scaled;
  // The term's sums, in Sum's order, kept in op-math blocks (part); the sums of a and b are kept in
  // double lanes instead (WideLanes), the hits in integers (hits_a, hits_b).
  constexpr std::array<bool, kNumSums> kKept = {false, false, false, false, kSumsValue, kSumsDeriv};
  return [=](int64_t begin, int64_t end, Sums& acc) {
    LaneSums<T, kNumSums> sums;
    int64_t hits_a = 0, hits_b = 0;  // the counts of the statistics, exact (not lane sums)
    for (int64_t block = begin; block < end; block += kBlockVecs * W) {
      const int64_t block_end = std::min(end, block + kBlockVecs * W);
      const Vec zero(T(0));
      Vec part[kNumSums];  // this block's sums, lane by lane
      double wide_a[W] = {}, wide_b[W] = {};  // this block's sums of a and b, lane by lane
      if constexpr (kScalarTerms) {
        // Lane j takes elements block + k W + j, as the vector loop's lanes do (the inner loop over
        // j is the one the compiler can vectorize).
        T lane[kNumSums][W] = {};
        for (int64_t k = block; k < block_end; k += W)
        for (int64_t j = 0; j < std::min(W, block_end - k); ++j) {
          const int64_t i = k + j;
          const T xa = T(a[i]), xb = kPaired ? T(b[i]) : shift;
          T v, d;
          term_eval<t>(xa - xb, v, d);
          lane[kSumValue][j] += v;
          lane[kSumDeriv][j] += d;
          wide_a[j] += double(xa);
          hits_a += count_a_positive ? xa > T(0) : xa < T(0);
          if constexpr (kPaired) {
            wide_b[j] += double(xb);
            hits_b += xb < T(0);
          }
          if constexpr (gw == GradWrite::Scaled) {
            grad_a[i] = scalar_t(d * scale);
            if constexpr (kPaired) grad_b[i] = scalar_t(-d * scale);
          } else if constexpr (gw == GradWrite::Raw) {
            grad_a[i] = scalar_t(d);
          }
        }
        for (int q = 0; q < kNumSums; ++q) part[q] = Vec::loadu(lane[q]);
      } else {
        // Copies of the captured values: the compiler must otherwise reload them after each store
        // into the gradients (a masked store may write anywhere, as far as it knows).
        const scalar_t* const pa = a;
        const scalar_t* const pb = b;
        scalar_t* const ga = grad_a;
        scalar_t* const gb = grad_b;
        const bool positive = count_a_positive;
        const Vec vshift(shift), vscale(scale);
        for (int q = 0; q < kNumSums; ++q) part[q] = zero;
        WideLanes<T> sum_a, sum_b;
        // N vectors from i on, the last of them with m_last live lanes (the others full). Always
        // inlined: where for_steps' two loops take the same N, GCC kept this body out of line, a call
        // per vector (and its sums in memory).
        auto step = [&](auto n_vecs, int64_t i, int64_t m_last) C10_ALWAYS_INLINE_ATTRIBUTE {
          constexpr int N = decltype(n_vecs)::value;
          Vec xa[N], xb[N], x[N], v[N], d[N];
          each<N>([&](int k) {
            const int64_t m = k == N - 1 ? m_last : W;
            xa[k] = load(pa + i + k * W, m);  // lanes past m are 0: they add nothing to the sums of a and b
            xb[k] = kPaired ? load(pb + i + k * W, m) : vshift;
            x[k] = xa[k] - xb[k];
          });
          term_vec<t, N>(x, v, d);
          each<N>([&](int k) {  // in the order of the vectors, as one at a time would
            const int64_t m = k == N - 1 ? m_last : W;
            if (m < W) {
              const Vec live = lanes_below<T>(m);
              v[k] = Vec::blendv(zero, v[k], live);
              d[k] = Vec::blendv(zero, d[k], live);
            }
            if constexpr (kSumsValue) part[kSumValue] += v[k];
            if constexpr (kSumsDeriv) part[kSumDeriv] += d[k];
            sum_a.add(xa[k]);
            hits_a += count_sign(xa[k], positive);
            if constexpr (kPaired) {
              sum_b.add(xb[k]);
              hits_b += count_sign(xb[k], false);
            }
            const int64_t at = i + k * W;
            if constexpr (gw == GradWrite::Scaled) {
              store(ga + at, d[k] * vscale, m);
              if constexpr (kPaired) store(gb + at, d[k].neg() * vscale, m);
            } else if constexpr (gw == GradWrite::Raw) {
              store(ga + at, d[k], m);
            }
          });
        };
        for_steps<kSoftplusTerm<t> ? kInterleaveSoftplus : kInterleave, W>(block, block_end, step);
        sum_a.add_into(wide_a);
        if constexpr (kPaired) sum_b.add_into(wide_b);
      }
      for (int q = 0; q < kNumSums; ++q)
        if (kKept[q]) sums.add(q, part[q]);
      sums.add(kSumA, wide_a);
      if constexpr (kPaired) sums.add(kSumB, wide_b);
    }
    for (int k = 0; k < kNumSums; ++k) acc[k] += sums.total(k);
    if constexpr (kLinear) {
      const double x_sum = sums.total(kSumA) - (kPaired ? sums.total(kSumB) : double(shift) * double(end - begin));
      acc[kSumValue] += t == Term::Pos ? x_sum : -x_sum;
    }
    acc[kHitsA] += double(hits_a);
    acc[kHitsB] += double(hits_b);
  };
}

// term_body for the term t given at run time.
template <bool kPaired, GradWrite gw, typename scalar_t, typename T = opmath_t<scalar_t>>
PassBody pass_body(Term t, const scalar_t* a, const scalar_t* b, T shift, bool count_a_positive, scalar_t* grad_a,
                   scalar_t* grad_b, T scale) {
  return with_term(t, [&](auto term) -> PassBody {
    constexpr Term tt = decltype(term)::value;
    constexpr GradWrite w = tt == Term::None ? GradWrite::None : gw;  // no term: nothing to write
    return term_body<tt, kPaired, w>(a, b, shift, count_a_positive, grad_a, grad_b, scale);
  });
}

// A gradient pass's body over [begin, end), type-erased as PassBody is.
using GradBody = std::function<void(int64_t, int64_t)>;

// Relativistic-average gradient: grad_i = (d_i - mean_other) · scale, with d_i the term's
// derivative at a_i - shift. In op-math dtypes, d_i was stored in grad by the term pass and is
// rescaled in place; in half/bfloat16 it is recomputed (rounding d_i to 8-11 bits first would cost
// the difference its precision).
template <typename scalar_t, typename T = opmath_t<scalar_t>>
GradBody relavg_grad_body(Term term, const scalar_t* a, T shift, T mean_other, T scale, scalar_t* grad) {
  return with_term(term, [&](auto term_constant) -> GradBody {
    constexpr Term t = decltype(term_constant)::value;
    using Vec = Vectorized<T>;
    constexpr int64_t W = Vec::size();
    if constexpr (kScalarTerms) {
      return [=](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          T v, d;
          if constexpr (std::is_same_v<scalar_t, T>) d = grad[i];
          else term_eval<t>(T(a[i]) - shift, v, d);
          grad[i] = scalar_t((d - mean_other) * scale);
        }
      };
    } else {
      constexpr bool kRecompute = !std::is_same_v<scalar_t, T>;
      return [=](int64_t begin, int64_t end) {
        const Vec vshift(shift), vmean(mean_other), vscale(scale);
        // N vectors from i on, the last of them with m_last live lanes
        auto step = [&](auto n_vecs, int64_t i, int64_t m_last) C10_ALWAYS_INLINE_ATTRIBUTE {
          constexpr int N = decltype(n_vecs)::value;
          Vec x[N], v[N], d[N];
          each<N>([&](int k) {
            const int64_t m = k == N - 1 ? m_last : W;
            if constexpr (kRecompute) x[k] = load(a + i + k * W, m) - vshift;
            else d[k] = load(grad + i + k * W, m);
          });
          if constexpr (kRecompute) term_vec<t, N>(x, v, d);
          each<N>([&](int k) { store(grad + i + k * W, (d[k] - vmean) * vscale, k == N - 1 ? m_last : W); });
        };
        // recomputing a softplus: as many vectors a step as the term pass (kInterleaveSoftplus)
        for_steps<kRecompute && kSoftplusTerm<t> ? kInterleaveSoftplus : 1, W>(begin, end, step);
      };
    }
  });
}

template <typename scalar_t>
void gan_loss_typed(const GanLossArgs& args) {
  using T = opmath_t<scalar_t>;
  const auto* r = static_cast<const scalar_t*>(args.real);
  const auto* f = static_cast<const scalar_t*>(args.fake);
  auto* gr = static_cast<scalar_t*>(args.grad_real);
  auto* gf = static_cast<scalar_t*>(args.grad_fake);
  const int64_t nr = args.nreal, nf = args.nfake;
  const LossSpec spec = args.spec;
  const scalar_t* none = nullptr;
  scalar_t* no_out = nullptr;
  auto set_stats = [&](double sum_r, double hits_r, double sum_f, double hits_f) {
    // Without real logits (a non-relativistic G loss) the real statistics are 0.
    args.stats[kRealMean] = nr ? float(sum_r / nr) : 0.f;
    args.stats[kFakeMean] = float(sum_f / nf);
    args.stats[kRealAcc] = nr ? float(hits_r / nr) : 0.f;
    args.stats[kFakeAcc] = float(hits_f / nf);
  };

  if (spec.mode == Mode::Paired) {  // L = mean phi(r_i - f_i): one pass over both
    const auto s = chunked_sum<kNumSums>(
        nf, pass_body<true, GradWrite::Scaled>(spec.phi, r, f, T(0), true, gr, gf, T(1) / T(nf)));
    set_stats(s[kSumA], s[kHitsA], s[kSumB], s[kHitsB]);
    *static_cast<scalar_t*>(args.loss) = scalar_t(s[kSumValue] / nf);
    return;
  }

  // The two sides' passes share one parallel region (chunked_sum_pair).
  auto both_sides = [&](const PassBody& real_body, const PassBody& fake_body) {
    return chunked_sum_pair<kNumSums>(nr, real_body, nf, fake_body);
  };
  if (spec.mode == Mode::Plain) {  // L = mean phi(r_i) + mean psi(f_j): one pass per side
    const auto [sr, sf] = both_sides(
        pass_body<false, GradWrite::Scaled>(spec.phi, r, none, T(0), true, gr, no_out, T(1) / T(nr ? nr : 1)),
        pass_body<false, GradWrite::Scaled>(spec.psi, f, none, T(0), false, gf, no_out, T(1) / T(nf)));
    if (spec.phi == Term::None) std::fill(gr, gr + nr, scalar_t(0));  // real logits passed but unused
    set_stats(sr[kSumA], sr[kHitsA], sf[kSumA], sf[kHitsA]);
    *static_cast<scalar_t*>(args.loss) =
        scalar_t((spec.phi == Term::None ? 0.0 : sr[kSumValue] / nr) + sf[kSumValue] / nf);
    return;
  }

  // relavg: L = mean phi(r_i - mean f) + mean psi(f_j - mean r)
  const auto [mr, mf] =
      both_sides(pass_body<false, GradWrite::None>(Term::None, r, none, T(0), true, no_out, no_out, T(0)),
                 pass_body<false, GradWrite::None>(Term::None, f, none, T(0), false, no_out, no_out, T(0)));
  set_stats(mr[kSumA], mr[kHitsA], mf[kSumA], mf[kHitsA]);
  const T shift_r = T(mf[kSumA] / nf), shift_f = T(mr[kSumA] / nr);
  constexpr GradWrite gw = std::is_same_v<scalar_t, T> ? GradWrite::Raw : GradWrite::None;
  const auto [sr, sf] = both_sides(pass_body<false, gw>(spec.phi, r, none, shift_r, true, gr, no_out, T(0)),
                                   pass_body<false, gw>(spec.psi, f, none, shift_f, false, gf, no_out, T(0)));
  *static_cast<scalar_t*>(args.loss) = scalar_t(sr[kSumValue] / nr + sf[kSumValue] / nf);
  // dL/dr_i = (phi'(x_i) - mean_j psi'(y_j)) / Nr,  dL/df_j = (psi'(y_j) - mean_i phi'(x_i)) / Nf.
  const GradBody grad_r = relavg_grad_body(spec.phi, r, shift_r, T(sf[kSumDeriv] / nf), T(1) / T(nr), gr);
  const GradBody grad_f = relavg_grad_body(spec.psi, f, shift_f, T(sr[kSumDeriv] / nr), T(1) / T(nf), gf);
  for_chunks_of_two(nr, nf, [&](int side, int64_t, int64_t begin, int64_t end) {
    (side == 0 ? grad_r : grad_f)(begin, end);
  });
}

}  // namespace

void gan_loss_kernel(const GanLossArgs& args) {
  switch (args.dtype) {
    case c10::ScalarType::Float: return gan_loss_typed<float>(args);
    case c10::ScalarType::Double: return gan_loss_typed<double>(args);
    case c10::ScalarType::Half: return gan_loss_typed<c10::Half>(args);
    case c10::ScalarType::BFloat16: return gan_loss_typed<c10::BFloat16>(args);
    default: TORCH_CHECK(false, "ganfast::gan_loss_fused (cpu): unsupported dtype ", args.dtype);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace ganfast

// GAN loss terms shared by the CPU (C++) and CUDA kernels. Plain C++, no torch headers, so that
// nvcc can compile the CUDA kernels on a machine whose torch has no CUDA headers.
//
// Every loss kind is a pair of elementwise terms and a mode:
//   plain:   L = mean_i phi(r_i) + mean_j psi(f_j)
//   relavg:  L = mean_i phi(r_i - mean f) + mean_j psi(f_j - mean r)       (relativistic average)
//   paired:  L = mean_i phi(r_i - f_i)                                      (relativistic pairing)
// The kind numbering is ganfast.ops.losses.KIND_IDS; keep the two in step.
#pragma once
#include <cmath>

#include "hd.h"

namespace ganfast {

#if !defined(__CUDACC__)
using std::exp;  // the float overloads on the host
using std::fabs;
using std::log1p;
#endif

enum class Term : int { None = 0, SoftplusNeg, SoftplusPos, NegSoftplusPos, HingeNeg, HingePos, Neg, Pos, HalfSqMinus1, HalfSq };
enum class Mode : int { Plain = 0, RelAvg, Paired };

struct LossSpec {
  Term phi;  // term over real logits (or over r - f when paired)
  Term psi;  // term over fake logits
  Mode mode;
};

// kind ids: 0 ns, 1 minimax, 2 hinge, 3 wasserstein, 4 ls, 5 rahinge, 6 rans, 7 rpgan.
GF_HD LossSpec loss_spec(int kind, bool generator) {
  switch (kind) {
    case 0: return generator ? LossSpec{Term::None, Term::SoftplusNeg, Mode::Plain}
                             : LossSpec{Term::SoftplusNeg, Term::SoftplusPos, Mode::Plain};
    case 1: return generator ? LossSpec{Term::None, Term::NegSoftplusPos, Mode::Plain}
                             : LossSpec{Term::SoftplusNeg, Term::SoftplusPos, Mode::Plain};
    case 2: return generator ? LossSpec{Term::None, Term::Neg, Mode::Plain}
                             : LossSpec{Term::HingeNeg, Term::HingePos, Mode::Plain};
    case 3: return generator ? LossSpec{Term::None, Term::Neg, Mode::Plain}
                             : LossSpec{Term::Neg, Term::Pos, Mode::Plain};
    case 4: return generator ? LossSpec{Term::None, Term::HalfSqMinus1, Mode::Plain}
                             : LossSpec{Term::HalfSqMinus1, Term::HalfSq, Mode::Plain};
    case 5: return generator ? LossSpec{Term::HingePos, Term::HingeNeg, Mode::RelAvg}
                             : LossSpec{Term::HingeNeg, Term::HingePos, Mode::RelAvg};
    case 6: return generator ? LossSpec{Term::SoftplusPos, Term::SoftplusNeg, Mode::RelAvg}
                             : LossSpec{Term::SoftplusNeg, Term::SoftplusPos, Mode::RelAvg};
    default: return generator ? LossSpec{Term::SoftplusPos, Term::None, Mode::Paired}
                              : LossSpec{Term::SoftplusNeg, Term::None, Mode::Paired};
  }
}

// softplus(y) = log(1 + e^y) and sigmoid(y) = 1 / (1 + e^-y) from one exp(-|y|), without overflow;
// `y < 0 ? 0 : y` keeps NaN (fmax would not).
template <typename T> GF_HD void softplus_sigmoid(T y, T& sp, T& sg) {
  const T e = exp(-fabs(y));
  sp = (y < T(0) ? T(0) : y) + log1p(e);
  sg = y >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

// Value and derivative of one term at x, the term fixed at compile time (the CPU kernel's loops).
template <Term t, typename T> GF_HD void term_eval(T x, T& value, T& deriv) {
  if constexpr (t == Term::SoftplusNeg) { softplus_sigmoid(-x, value, deriv); deriv = -deriv; }
  else if constexpr (t == Term::SoftplusPos) { softplus_sigmoid(x, value, deriv); }
  else if constexpr (t == Term::NegSoftplusPos) { softplus_sigmoid(x, value, deriv); value = -value; deriv = -deriv; }
  else if constexpr (t == Term::HingeNeg) { T a = T(1) - x; value = a < T(0) ? T(0) : a; deriv = a > T(0) ? T(-1) : T(0); }
  else if constexpr (t == Term::HingePos) { T a = T(1) + x; value = a < T(0) ? T(0) : a; deriv = a > T(0) ? T(1) : T(0); }
  else if constexpr (t == Term::Neg) { value = -x; deriv = T(-1); }
  else if constexpr (t == Term::Pos) { value = x; deriv = T(1); }
  else if constexpr (t == Term::HalfSqMinus1) { value = T(0.5) * (x - T(1)) * (x - T(1)); deriv = x - T(1); }
  else if constexpr (t == Term::HalfSq) { value = T(0.5) * x * x; deriv = x; }
  else { value = T(0); deriv = T(0); }
}

// The same with the term chosen at run time (the CUDA kernel: the branch is uniform across threads).
template <typename T> GF_HD void term_eval(Term t, T x, T& value, T& deriv) {
  switch (t) {
    case Term::SoftplusNeg: return term_eval<Term::SoftplusNeg>(x, value, deriv);
    case Term::SoftplusPos: return term_eval<Term::SoftplusPos>(x, value, deriv);
    case Term::NegSoftplusPos: return term_eval<Term::NegSoftplusPos>(x, value, deriv);
    case Term::HingeNeg: return term_eval<Term::HingeNeg>(x, value, deriv);
    case Term::HingePos: return term_eval<Term::HingePos>(x, value, deriv);
    case Term::Neg: return term_eval<Term::Neg>(x, value, deriv);
    case Term::Pos: return term_eval<Term::Pos>(x, value, deriv);
    case Term::HalfSqMinus1: return term_eval<Term::HalfSqMinus1>(x, value, deriv);
    case Term::HalfSq: return term_eval<Term::HalfSq>(x, value, deriv);
    default: return term_eval<Term::None>(x, value, deriv);
  }
}

// Indices into the stats output (fp32, 4 values).
enum Stat : int { kRealMean = 0, kFakeMean = 1, kRealAcc = 2, kFakeAcc = 3 };

}  // namespace ganfast

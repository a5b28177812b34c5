// CUDA kernel of ganfast::gan_loss_fused: one block walks the logits three times at most
// (statistics, terms, relativistic gradient correction); deterministic block reductions (CUB).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

#include "../common/gan_loss.h"
#include "common.cuh"
#include "kernels.cuh"

namespace ganfast {
namespace cuda {
namespace {

constexpr int kThreads = 1024;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) gan_loss_kernel(GanLossArgs a) {
  using T = typename OpMath<scalar_t>::type;
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ double shared_sum;
  // Sum over the block in fp64 (a handful per launch), returned to every thread.
  auto block_sum = [&](double v) -> T {
    double s = Reduce(tmp).Sum(v);
    if (threadIdx.x == 0) shared_sum = s;
    __syncthreads();
    double out = shared_sum;
    __syncthreads();
    return T(out);
  };
  const scalar_t* r = static_cast<const scalar_t*>(a.real);
  const scalar_t* f = static_cast<const scalar_t*>(a.fake);
  scalar_t* gr = static_cast<scalar_t*>(a.grad_real);
  scalar_t* gf = static_cast<scalar_t*>(a.grad_fake);
  const int64_t nr = a.n_real, nf = a.n_fake;
  const LossSpec spec = loss_spec(a.kind, a.generator);

  // Pass 1: statistics and means; the sums of logits in fp64, as their mean can cancel to ~0.
  double sum_r = 0, sum_f = 0;
  T pos_r = 0, neg_f = 0;
  for (int64_t i = threadIdx.x; i < nr; i += kThreads) { T x = load(r, i); sum_r += x; pos_r += x > T(0); }
  for (int64_t i = threadIdx.x; i < nf; i += kThreads) { T x = load(f, i); sum_f += x; neg_f += x < T(0); }
  // Without real logits (a non-relativistic G loss) the real statistics are 0.
  const T mean_r = nr ? T(double(block_sum(sum_r)) / double(nr)) : T(0);
  const T mean_f = T(double(block_sum(sum_f)) / double(nf));
  pos_r = block_sum(pos_r); neg_f = block_sum(neg_f);
  if (threadIdx.x == 0) {
    a.stats[kRealMean] = float(mean_r);
    a.stats[kFakeMean] = float(mean_f);
    a.stats[kRealAcc] = nr ? float(pos_r / T(nr)) : 0.f;
    a.stats[kFakeAcc] = float(neg_f / T(nf));
  }

  if (spec.mode == Mode::Paired) {  // L = mean phi(r_i - f_i)
    T s = 0;
    for (int64_t i = threadIdx.x; i < nf; i += kThreads) {
      T v, d;
      term_eval(spec.phi, load(r, i) - load(f, i), v, d);
      s += v;
      store(gr, i, d / T(nf));
      store(gf, i, -d / T(nf));
    }
    s = block_sum(s);
    if (threadIdx.x == 0) store(static_cast<scalar_t*>(a.loss), 0, s / T(nf));
    return;
  }
  const bool relavg = spec.mode == Mode::RelAvg;
  const T shift_r = relavg ? mean_f : T(0), shift_f = relavg ? mean_r : T(0);
  // Pass 2: terms and the sums of their derivatives.
  T vr = 0, dr = 0, vf = 0, df = 0;
  for (int64_t i = threadIdx.x; i < nr; i += kThreads) {
    T v, d;
    term_eval(spec.phi, load(r, i) - shift_r, v, d);
    vr += v; dr += d;
    if (!relavg) store(gr, i, d / T(nr));
  }
  for (int64_t i = threadIdx.x; i < nf; i += kThreads) {
    T v, d;
    term_eval(spec.psi, load(f, i) - shift_f, v, d);
    vf += v; df += d;
    if (!relavg) store(gf, i, d / T(nf));
  }
  vr = block_sum(vr); dr = block_sum(dr); vf = block_sum(vf); df = block_sum(df);
  if (threadIdx.x == 0) {
    T loss = (spec.phi == Term::None ? T(0) : vr / T(nr)) + (spec.psi == Term::None ? T(0) : vf / T(nf));
    store(static_cast<scalar_t*>(a.loss), 0, loss);
  }
  if (!relavg) return;
  // Pass 3: dL/dr_i = (phi'(x_i) - mean psi') / Nr,  dL/df_j = (psi'(y_j) - mean phi') / Nf.
  const T mean_dpsi = df / T(nf), mean_dphi = dr / T(nr);
  for (int64_t i = threadIdx.x; i < nr; i += kThreads) {
    T v, d;
    term_eval(spec.phi, load(r, i) - shift_r, v, d);
    store(gr, i, (d - mean_dpsi) / T(nr));
  }
  for (int64_t i = threadIdx.x; i < nf; i += kThreads) {
    T v, d;
    term_eval(spec.psi, load(f, i) - shift_f, v, d);
    store(gf, i, (d - mean_dphi) / T(nf));
  }
}

template <typename scalar_t>
cudaError_t launch(const GanLossArgs& args, cudaStream_t stream) {
  return launch_kernel(gan_loss_kernel<scalar_t>, 1, kThreads, 0, stream, args);
}

}  // namespace

cudaError_t gan_loss(const GanLossArgs& args, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch<decltype(tag)>(args, stream); });
}

}  // namespace cuda
}  // namespace ganfast

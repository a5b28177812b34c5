// CUDA kernels of ganfast::gan_loss_fused. Up to kSingleBlockMax logits a side, one block walks them
// three times at most (statistics, terms, relativistic gradient correction). Above that, a grid of
// blocks writes per-block partial sums, and the next launch sums them (2 launches, 3 relativistic).
// Every sum has a fixed order, so the results are deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

#include "../common/gan_loss.h"
#include "common.cuh"
#include "kernels.cuh"

namespace ganfast {
namespace cuda {
namespace {

constexpr int kThreads = 1024;  // the single block
// One block costs about 0.65 ns per logit on an H200 (first GPU run), a launch a few us: above this
// size the extra launches of the grid cost less than the one block's serial walk.
constexpr int64_t kSingleBlockMax = 8192;
constexpr int kGridThreads = 256;
// A fixed upper bound (not one from the GPU's SM count), so that the partials, and the result, are
// the same on every GPU.
constexpr int kMaxBlocks = 256;
constexpr int kLogitsPerThread = 4;

// The sum of v over the block (CUB's fixed tree, fp64), returned to every thread.
template <int Threads> struct BlockSum {
  using Reduce = cub::BlockReduce<double, Threads>;
  struct Storage {
    typename Reduce::TempStorage reduce;
    double result;
  };
  Storage& storage;
  __device__ double operator()(double v) {
    const double sum = Reduce(storage.reduce).Sum(v);
    if (threadIdx.x == 0) storage.result = sum;
    __syncthreads();
    const double out = storage.result;
    __syncthreads();
    return out;
  }
};

// One row of kSlots per block in GanLossArgs::partials.
enum Slot : int { kSumR = 0, kSumF, kPosR, kNegF, kValR, kDerR, kValF, kDerF, kSlots };

// The call's logits, gradients, sizes and loss spec, typed: every kernel's first lines.
template <typename scalar_t> struct Logits {
  const scalar_t* r;
  const scalar_t* f;
  scalar_t* gr;
  scalar_t* gf;
  int64_t nr, nf;
  LossSpec spec;
};
template <typename scalar_t> __device__ Logits<scalar_t> typed_logits(const GanLossArgs& a) {
  return {static_cast<const scalar_t*>(a.real), static_cast<const scalar_t*>(a.fake),
          static_cast<scalar_t*>(a.grad_real), static_cast<scalar_t*>(a.grad_fake), a.n_real, a.n_fake,
          loss_spec(a.kind, a.generator)};
}

// The relativistic gradients over this thread's indices (first, first + stride, ...):
// dL/dr_i = (phi'(r_i - mean f) - mean psi') / Nr,  dL/df_j = (psi'(f_j - mean r) - mean phi') / Nf.
template <typename scalar_t, typename T>
__device__ void store_relavg_grads(const Logits<scalar_t>& t, T mean_r, T mean_f, T mean_dphi, T mean_dpsi,
                                   int64_t first, int64_t stride) {
  for (int64_t i = first; i < t.nr; i += stride) {
    T v, d;
    term_eval(t.spec.phi, load(t.r, i) - mean_f, v, d);
    store(t.gr, i, (d - mean_dpsi) / T(t.nr));
  }
  for (int64_t i = first; i < t.nf; i += stride) {
    T v, d;
    term_eval(t.spec.psi, load(t.f, i) - mean_r, v, d);
    store(t.gf, i, (d - mean_dphi) / T(t.nf));
  }
}

int grid_blocks(int64_t n_real, int64_t n_fake) {
  const int64_t n = n_real > n_fake ? n_real : n_fake;
  if (n <= kSingleBlockMax) return 1;
  const int64_t per_block = int64_t(kGridThreads) * kLogitsPerThread;
  const int64_t blocks = (n + per_block - 1) / per_block;
  return int(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) gan_loss_single_block_kernel(GanLossArgs a) {
  using T = typename OpMath<scalar_t>::type;
  __shared__ typename BlockSum<kThreads>::Storage storage;
  BlockSum<kThreads> block_sum_fp64{storage};
  auto block_sum = [&](double v) { return T(block_sum_fp64(v)); };
  const Logits<scalar_t> logits = typed_logits<scalar_t>(a);
  const auto [r, f, gr, gf, nr, nf, spec] = logits;

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
  // Pass 3: the gradients, with the means of the derivatives.
  store_relavg_grads(logits, mean_r, mean_f, dr / T(nr), df / T(nf), threadIdx.x, kThreads);
}

// The grid's sum of one slot: every block adds the partials in the same order.
template <int Threads>
__device__ double partials_total(BlockSum<Threads>& block_sum, const double* partials, int blocks, Slot slot) {
  double s = 0;
  for (int b = threadIdx.x; b < blocks; b += Threads) s += partials[b * kSlots + slot];
  return block_sum(s);
}

// Grid pass 1: each block's statistics; outside the relativistic mode also the terms and the gradients
// (which need no grid-wide value there).
template <typename scalar_t>
__global__ void __launch_bounds__(kGridThreads) gan_loss_grid_terms_kernel(GanLossArgs a) {
  using T = typename OpMath<scalar_t>::type;
  __shared__ typename BlockSum<kGridThreads>::Storage storage;
  BlockSum<kGridThreads> block_sum{storage};
  const Logits<scalar_t> logits = typed_logits<scalar_t>(a);
  const auto [r, f, gr, gf, nr, nf, spec] = logits;
  const bool plain = spec.mode == Mode::Plain, paired = spec.mode == Mode::Paired;
  const int64_t first = int64_t(blockIdx.x) * kGridThreads + threadIdx.x, stride = int64_t(gridDim.x) * kGridThreads;

  double sum_r = 0, sum_f = 0;
  T pos_r = 0, neg_f = 0, val_r = 0, val_f = 0;
  for (int64_t i = first; i < nr; i += stride) {
    const T x = load(r, i);
    sum_r += x;
    pos_r += x > T(0);
    if (plain) {
      T v, d;
      term_eval(spec.phi, x, v, d);
      val_r += v;
      store(gr, i, d / T(nr));
    }
  }
  for (int64_t i = first; i < nf; i += stride) {
    const T y = load(f, i);
    sum_f += y;
    neg_f += y < T(0);
    T v, d;
    if (plain) {
      term_eval(spec.psi, y, v, d);
      val_f += v;
      store(gf, i, d / T(nf));
    } else if (paired) {  // L = mean phi(r_i - f_i), summed into the real slot
      term_eval(spec.phi, load(r, i) - y, v, d);
      val_r += v;
      store(gr, i, d / T(nf));
      store(gf, i, -d / T(nf));
    }
  }
  double* row = a.partials + int64_t(blockIdx.x) * kSlots;
  const double sums[] = {block_sum(sum_r), block_sum(sum_f), block_sum(pos_r), block_sum(neg_f),
                         block_sum(val_r), block_sum(val_f)};
  if (threadIdx.x == 0) {
    row[kSumR] = sums[0]; row[kSumF] = sums[1]; row[kPosR] = sums[2]; row[kNegF] = sums[3];
    row[kValR] = sums[4]; row[kValF] = sums[5];
  }
}

// Grid pass 2 (relativistic only): the terms at the shifted logits and their derivatives' sums.
template <typename scalar_t>
__global__ void __launch_bounds__(kGridThreads) gan_loss_grid_relavg_kernel(GanLossArgs a) {
  using T = typename OpMath<scalar_t>::type;
  __shared__ typename BlockSum<kGridThreads>::Storage storage;
  BlockSum<kGridThreads> block_sum{storage};
  const auto [r, f, gr, gf, nr, nf, spec] = typed_logits<scalar_t>(a);
  const int blocks = gridDim.x;
  // the mean of each side shifts the other's logits: x_i = r_i - mean f, y_j = f_j - mean r
  const T mean_r = T(partials_total(block_sum, a.partials, blocks, kSumR) / double(nr));
  const T mean_f = T(partials_total(block_sum, a.partials, blocks, kSumF) / double(nf));
  const int64_t first = int64_t(blockIdx.x) * kGridThreads + threadIdx.x, stride = int64_t(blocks) * kGridThreads;
  T val_r = 0, der_r = 0, val_f = 0, der_f = 0;
  for (int64_t i = first; i < nr; i += stride) {
    T v, d;
    term_eval(spec.phi, load(r, i) - mean_f, v, d);
    val_r += v; der_r += d;
  }
  for (int64_t i = first; i < nf; i += stride) {
    T v, d;
    term_eval(spec.psi, load(f, i) - mean_r, v, d);
    val_f += v; der_f += d;
  }
  double* row = a.partials + int64_t(blockIdx.x) * kSlots;  // other slots than the ones read above
  const double sums[] = {block_sum(val_r), block_sum(der_r), block_sum(val_f), block_sum(der_f)};
  if (threadIdx.x == 0) { row[kValR] = sums[0]; row[kDerR] = sums[1]; row[kValF] = sums[2]; row[kDerF] = sums[3]; }
}

// Last grid pass: the totals, then the loss and the statistics (block 0); in the relativistic mode
// also dL/dr_i = (phi'(x_i) - mean psi') / Nr and dL/df_j = (psi'(y_j) - mean phi') / Nf.
template <typename scalar_t>
__global__ void __launch_bounds__(kGridThreads) gan_loss_grid_finish_kernel(GanLossArgs a, int blocks) {
  using T = typename OpMath<scalar_t>::type;
  __shared__ typename BlockSum<kGridThreads>::Storage storage;
  BlockSum<kGridThreads> block_sum{storage};
  const Logits<scalar_t> logits = typed_logits<scalar_t>(a);
  const int64_t nr = logits.nr, nf = logits.nf;
  const LossSpec spec = logits.spec;
  double total[kSlots];
  for (int s = 0; s < kSlots; ++s) total[s] = partials_total(block_sum, a.partials, blocks, Slot(s));
  const T mean_r = nr ? T(total[kSumR] / double(nr)) : T(0);
  const T mean_f = T(total[kSumF] / double(nf));
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    a.stats[kRealMean] = float(mean_r);
    a.stats[kFakeMean] = float(mean_f);
    a.stats[kRealAcc] = nr ? float(total[kPosR] / double(nr)) : 0.f;
    a.stats[kFakeAcc] = float(total[kNegF] / double(nf));
    const double loss = spec.mode == Mode::Paired
                            ? total[kValR] / double(nf)
                            : (spec.phi == Term::None ? 0.0 : total[kValR] / double(nr)) +
                                  (spec.psi == Term::None ? 0.0 : total[kValF] / double(nf));
    store(static_cast<scalar_t*>(a.loss), 0, T(loss));
  }
  if (spec.mode != Mode::RelAvg) return;
  store_relavg_grads(logits, mean_r, mean_f, T(total[kDerR] / double(nr)), T(total[kDerF] / double(nf)),
                     int64_t(blockIdx.x) * kGridThreads + threadIdx.x, int64_t(gridDim.x) * kGridThreads);
}

template <typename scalar_t>
cudaError_t launch(const GanLossArgs& args, cudaStream_t stream) {
  const int blocks = grid_blocks(args.n_real, args.n_fake);
  if (blocks == 1) return launch_kernel(gan_loss_single_block_kernel<scalar_t>, 1, kThreads, 0, stream, args);
  cudaError_t err = launch_kernel(gan_loss_grid_terms_kernel<scalar_t>, blocks, kGridThreads, 0, stream, args);
  if (err != cudaSuccess) return err;
  const bool relavg = loss_spec(args.kind, args.generator).mode == Mode::RelAvg;
  if (relavg) {
    err = launch_kernel(gan_loss_grid_relavg_kernel<scalar_t>, blocks, kGridThreads, 0, stream, args);
    if (err != cudaSuccess) return err;
  }
  // the finish needs the whole grid only for the relativistic gradients
  return launch_kernel(gan_loss_grid_finish_kernel<scalar_t>, relavg ? blocks : 1, kGridThreads, 0, stream, args,
                       blocks);
}

}  // namespace

int64_t gan_loss_workspace(int64_t n_real, int64_t n_fake) {
  const int blocks = grid_blocks(n_real, n_fake);
  return blocks == 1 ? 0 : int64_t(blocks) * kSlots;
}

cudaError_t gan_loss(const GanLossArgs& args, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return launch<decltype(tag)>(args, stream); });
}

}  // namespace cuda
}  // namespace ganfast

// CPU kernels of ganfast::spectral_norm_fused / _backward and their multi-tensor forms (_multi,
// _backward_multi). W3[a, r, b] = M[r, a * inner + b] (see csrc/spectral_norm_inputs.h): row r of M
// is made of `outer` segments W3[a, r, :] of `inner` contiguous elements (one segment when dim = 0).
//
// Forward, one power iteration in ONE pass over W: for each row, t_r = <M_r, v>, then the same row,
// still in L1, is added into s += t_r M_r. So s = M^T t with t = M v, and with u = t / max(||t||, eps):
// M^T u = s / max(||t||, eps), v' = normalize(M^T u), sigma = ||M^T u||^2 / max(||M^T u||, eps)
// (= u^T M v' exactly). Then out = W * (1 / max(sigma, eps)) in a second pass: 2 reads + 1 write of W.
// Backward: dW = (G - k u v^T) / sigma, k = <G, W> / sigma: one pass for <G, W>, one writing dW.
//
// Threads: rows are cut into blocks that depend on the shape only; each block adds into its own s
// (blocks x w scratch), and the blocks are summed in block order; sums over W are over fixed chunks
// added in chunk order. So results are the same for any thread count. Every phase is one parallel
// loop over the tasks of ALL layers, so the multi-tensor ops run one loop per phase for a whole model.
//
// The inner loops (csrc/cpu/spectral_norm_kernels.h) are compiled for AVX-512, AVX2 and baseline
// x86-64 here (GCC target pragmas), and the copy of ganfast's CPU capability in force runs (the same
// switch as the loss and penalty kernels: csrc/cpu/kernels.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>  // F16C's half conversions, non-temporal stores (spectral_norm_kernels.h)
#endif

#include "../common/parallel.h"
#include "../spectral_norm_inputs.h"
#include "kernels.h"
#include "output_cache.h"

namespace ganfast {
namespace sn {

// 16-bit storage as raw bits (the kernels convert with vector instructions, not c10's scalar code)
struct half_bits {
  uint16_t x;
};
struct bf16_bits {
  uint16_t x;
};

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GANFAST_SN_X86 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define SN_VECTOR_BYTES 64
namespace avx512 {
#include "spectral_norm_kernels.h"
}
#undef SN_VECTOR_BYTES
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SN_VECTOR_BYTES 32
namespace avx2 {
#include "spectral_norm_kernels.h"
}
#undef SN_VECTOR_BYTES
#pragma GCC pop_options
#endif
#define SN_VECTOR_BYTES 16
namespace baseline {
#include "spectral_norm_kernels.h"
}
#undef SN_VECTOR_BYTES

enum Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The instruction set of the vectorized CPU kernels in force (csrc/cpu/capability.cpp: cpuid, lowered
// by GANFAST_CPU_CAPABILITY or ganfast_cpu::set_capability), where this file has that copy.
Isa active_isa() {
#ifdef GANFAST_SN_X86
  return Isa(int(cpu_capability()));
#else
  return kBaseline;
#endif
}

template <class S> using opmath = std::conditional_t<std::is_same_v<S, double>, double, float>;

// The inner loops of one storage type, for the chosen instruction set.
template <class S> struct Kernels {
  using T = opmath<S>;
  T (*dot_v)(const S*, const T*, int64_t);   // <x, y>, y opmath
  void (*dot4)(const S*, int64_t, const T*, int64_t, T*);  // 4 rows at once
  void (*axpy4)(const T*, const S*, int64_t, T*, int64_t, bool);
  T (*dot_w)(const S*, const S*, int64_t);   // <x, y>, both stored
  void (*axpy)(T, const S*, T*, int64_t, bool);
  void (*add_into)(const T*, T*, int64_t);
  void (*scale)(const S*, T, S*, int64_t, bool);
  void (*grad_row)(const S*, const T*, T, T, S*, int64_t, bool);
};

#define GANFAST_SN_TABLE(ns) \
  Kernels<S> { &ns::dot<S, T>, &ns::dot4<S>, &ns::axpy4<S>, &ns::dot<S, S>, &ns::axpy<S>, &ns::add_into<T>, &ns::scale<S>, &ns::grad_row<S> }

template <class S> Kernels<S> kernels(Isa isa) {
  using T = opmath<S>;
#ifdef GANFAST_SN_X86
  if (isa == kAvx512) return GANFAST_SN_TABLE(avx512);
  if (isa == kAvx2) return GANFAST_SN_TABLE(avx2);
#endif
  (void)isa;
  return GANFAST_SN_TABLE(baseline);
}
#undef GANFAST_SN_TABLE

// f(S{}) with S the storage type of `t`
template <class F> void with_storage(at::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kHalf: return f(half_bits{});
    case at::kBFloat16: return f(bf16_bits{});
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t);
  }
}

// A phase touching fewer elements than this runs on the calling thread: a parallel region costs
// 10-15 us to open on the 2-core Zen 2, more than a second thread saves on the smallest weights.
// Multi-tensor op on MLP Ds under spectral norm (4 layers), serial against two threads, medians of
// six alternating processes each (2026-12-05): hidden 128 (33K elements) forward 63 / 70 us,
// forward + backward 325 / 329 us; hidden 192 (74K) 78 / 70 and 401 / 392 us, hidden 256 (132K)
// 97 / 85 and 486 / 454 us: two threads win from about 64K on. (Toggling the thread count inside one
// process had put the crossover near 200K: each switch resizes the thread pool.)
constexpr int64_t kSerialWork = 4 * kChunk;

// Tasks of several layers in one index space: task i belongs to the layer whose range holds it.
// Threads get equal shares of WORK, not of tasks: the layers' tasks differ in size (a layer has at most
// 16 row blocks, so a 4608x512 weight's blocks are 4x a 2304x256 one's), and at::parallel_for's equal
// task counts left one thread of two with 64% of the power iteration of `ganfast bench sn`'s 3 layers
// (sharing by work made their multi-tensor fwd + bwd 2.5-3.5% faster). Which thread runs a task does
// not change what it computes, so the results stay the same for any thread count.
struct TaskList {
  std::vector<int64_t> start{0};  // layer l owns [start[l], start[l + 1])
  std::vector<int64_t> work;      // elements touched by all of layer l's tasks
  void add(int64_t tasks, int64_t elements) {
    start.push_back(start.back() + tasks);
    work.push_back(elements);
  }
  int64_t size() const { return start.back(); }
  int64_t total_work() const {
    int64_t s = 0;
    for (int64_t w : work) s += w;
    return s;
  }
  template <class F> void run(const F& body) const {  // body(layer, local task)
    const int64_t n = size(), total = total_work();
    auto run_tasks = [&](int64_t b, int64_t e) {
      int64_t l = int64_t(std::upper_bound(start.begin(), start.end(), b) - start.begin()) - 1;
      for (int64_t i = b; i < e; ++i) {
        while (i >= start[l + 1]) ++l;
        body(l, i - start[l]);
      }
    };
    const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
    if (threads <= 1 || total < kSerialWork || at::in_parallel_region()) {
      run_tasks(0, n);
      return;
    }
    // Thread j runs the tasks whose middle, on the cumulative work axis, lies in its share
    // [j, j + 1) * total / threads.
    std::vector<int64_t> bound(threads + 1, n);
    bound[0] = 0;
    double done = 0;
    int64_t j = 1;
    for (size_t l = 0; l + 1 < start.size(); ++l) {
      const int64_t tasks = start[l + 1] - start[l];
      const double per_task = double(work[l]) / double(std::max<int64_t>(tasks, 1));
      for (int64_t i = start[l]; i < start[l + 1]; ++i, done += per_task)
        while (j < threads && done + per_task / 2 >= double(total) * double(j) / double(threads)) bound[j++] = i;
    }
    at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) run_tasks(bound[t], bound[t + 1]);
    });
  }
};

// After a task's non-temporal stores (store_stream), by the thread that made them: they are weakly
// ordered, and must be visible before the op returns.
inline void fence_streamed_stores() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

constexpr int64_t kColumnChunk = 2048;  // columns per task when summing the blocks' s

struct LayerState {
  SpectralNormCall* c;
  int64_t w, rows_per_block, blocks;
  at::Tensor partial;  // blocks x w, opmath: each block's s
  double norm_t = 0;
  std::vector<double> sumsq_s;  // per column chunk
};

// Row blocks, from the shape only: 64K elements or more each, at most 16 (the scratch is blocks x w),
// a power of two (so that 2, 4, 8 or 16 threads get equal shares).
void plan_blocks(LayerState& L) {
  const int64_t h = L.c->h, numel = h * L.w;
  int64_t want = 1;
  while (want < 16 && 2 * want <= h && 2 * want * 65536 <= numel) want *= 2;
  L.rows_per_block = (h + want - 1) / want;
  L.blocks = (h + L.rows_per_block - 1) / L.rows_per_block;
}

// One block of rows: u[r] = t_r = <M_r, v> (or t_r = u[r] given, when use_u), s_block = sum_r t_r M_r.
template <class S> void power_block(const Kernels<S>& k, LayerState& L, int64_t block, bool use_u) {
  using T = opmath<S>;
  SpectralNormCall& c = *L.c;
  const int64_t O = c.outer, H = c.h, I = c.inner;
  const S* W = reinterpret_cast<const S*>(c.w.data_ptr());
  T* u = c.u_out.data_ptr<T>();
  const T* v = c.v_out.data_ptr<T>();
  T* s = L.partial.data_ptr<T>() + block * L.w;
  const int64_t r0 = block * L.rows_per_block, r1 = std::min(H, r0 + L.rows_per_block);
  int64_t r = r0;
  // 4 rows at a time: v and s are loaded once for the 4 (segments of consecutive rows are I apart)
  for (; r + 4 <= r1; r += 4) {
    T t[4] = {0, 0, 0, 0};
    if (use_u) {
      for (int j = 0; j < 4; ++j) t[j] = u[r + j];
    } else {
      for (int64_t a = 0; a < O; ++a) {
        T ta[4];
        k.dot4(W + (a * H + r) * I, I, v + a * I, I, ta);
        for (int j = 0; j < 4; ++j) t[j] += ta[j];
      }
      for (int j = 0; j < 4; ++j) u[r + j] = t[j];
    }
    for (int64_t a = 0; a < O; ++a) k.axpy4(t, W + (a * H + r) * I, I, s + a * I, I, r != r0);
  }
  for (; r < r1; ++r) {
    T t = 0;
    if (use_u) {
      t = u[r];
    } else {
      for (int64_t a = 0; a < O; ++a) t += k.dot_v(W + (a * H + r) * I, v + a * I, I);
      u[r] = t;
    }
    for (int64_t a = 0; a < O; ++a) k.axpy(t, W + (a * H + r) * I, s + a * I, I, r != r0);
  }
}

// v[cols] = sum over blocks (in order) of s_block[cols]; returns sum of v[cols]^2.
template <class T> double sum_blocks(const Kernels<T>& k, LayerState& L, int64_t chunk) {
  const int64_t c0 = chunk * kColumnChunk, n = std::min(L.w, c0 + kColumnChunk) - c0;
  const T* p = L.partial.data_ptr<T>();
  T* v = L.c->v_out.data_ptr<T>() + c0;
  std::memcpy(v, p + c0, size_t(n) * sizeof(T));
  for (int64_t b = 1; b < L.blocks; ++b) k.add_into(p + b * L.w + c0, v, n);
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(v[i]) * double(v[i]);
  return ss;
}

template <class T> double sumsq(const T* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  return s;
}

template <class T> void scale_vec(T* x, int64_t n, double f) {
  const T g = T(f);
  for (int64_t i = 0; i < n; ++i) x[i] *= g;
}

// Kernels of the opmath type of layer l's storage (for the s sums)
template <class F> void with_layer(const LayerState& L, const char* op, F&& f) {
  with_storage(L.c->w.scalar_type(), op, std::forward<F>(f));
}

// The forward of every layer in `calls` (one layer: the single-tensor op).
void spectral_norm_forward_layers(std::vector<SpectralNormCall>& calls, int64_t n_iter, double eps, const char* op) {
  const Isa isa = active_isa();
  const int64_t nl = int64_t(calls.size());
  std::vector<LayerState> layers(nl);
  for (int64_t l = 0; l < nl; ++l) {
    LayerState& L = layers[l];
    L.c = &calls[l];
    L.w = L.c->outer * L.c->inner;
    plan_blocks(L);
  }
  std::vector<double> sigma(nl, 0.0);
  if (n_iter == 0) {  // eval: sigma = u^T M v with the stored u, v (no update)
    TaskList rows;
    for (auto& L : layers) rows.add(L.blocks, L.c->h * L.w);
    std::vector<at::Tensor> t(nl);
    for (int64_t l = 0; l < nl; ++l) t[l] = at::empty({layers[l].c->h}, layers[l].c->u_out.options());
    rows.run([&](int64_t l, int64_t block) {
      LayerState& L = layers[l];
      with_layer(L, op, [&](auto tag) {
        using S = decltype(tag);
        using T = opmath<S>;
        const Kernels<S> k = kernels<S>(isa);
        const SpectralNormCall& c = *L.c;
        const S* W = reinterpret_cast<const S*>(c.w.data_ptr());
        const T* v = c.v_out.data_ptr<T>();
        T* tt = t[l].data_ptr<T>();
        const int64_t r0 = block * L.rows_per_block, r1 = std::min(c.h, r0 + L.rows_per_block);
        for (int64_t r = r0; r < r1; ++r) {
          T acc = 0;
          for (int64_t a = 0; a < c.outer; ++a) acc += k.dot_v(W + (a * c.h + r) * c.inner, v + a * c.inner, c.inner);
          tt[r] = acc;
        }
      });
    });
    for (int64_t l = 0; l < nl; ++l) {  // sigma = <t, u> in double, in row order (no ATen ops: ~3 us each)
      with_layer(layers[l], op, [&](auto tag) {
        using T = opmath<decltype(tag)>;
        const T* tt = t[l].data_ptr<T>();
        const T* u = calls[l].u_out.data_ptr<T>();
        double acc = 0;
        for (int64_t r = 0; r < calls[l].h; ++r) acc += double(tt[r]) * double(u[r]);
        sigma[l] = acc;
      });
    }
  } else {
    for (auto& L : layers) {
      L.partial = at::empty({L.blocks, L.w}, L.c->u_out.options());
      L.sumsq_s.assign((L.w + kColumnChunk - 1) / kColumnChunk, 0.0);
    }
    // One power iteration of the layers in `which`: the fused pass, then the block sums of s.
    auto iterate = [&](const std::vector<int64_t>& which, bool use_u) {
      TaskList blocks, columns;
      for (int64_t l : which) {
        blocks.add(layers[l].blocks, layers[l].c->h * layers[l].w);
        columns.add(int64_t(layers[l].sumsq_s.size()), layers[l].blocks * layers[l].w);
      }
      blocks.run([&](int64_t i, int64_t b) {
        LayerState& L = layers[which[i]];
        with_layer(L, op, [&](auto tag) {
          using S = decltype(tag);
          power_block<S>(kernels<S>(isa), L, b, use_u);
        });
      });
      columns.run([&](int64_t i, int64_t chunk) {
        LayerState& L = layers[which[i]];
        with_layer(L, op, [&](auto tag) {
          using T = opmath<decltype(tag)>;
          L.sumsq_s[chunk] = sum_blocks<T>(kernels<T>(isa), L, chunk);
        });
      });
    };
    std::vector<int64_t> all(nl);
    for (int64_t l = 0; l < nl; ++l) all[l] = l;
    for (int64_t it = 0; it < n_iter; ++it) {
      iterate(all, false);
      // u = t / max(||t||, eps). Where ||t|| is so small or large that s = M^T t could leave the
      // normal range (an all-zero weight included), s is recomputed as M^T u, u normalized first.
      std::vector<int64_t> redo;
      for (int64_t l = 0; l < nl; ++l) {
        LayerState& L = layers[l];
        with_layer(L, op, [&](auto tag) {
          using T = opmath<decltype(tag)>;
          T* u = L.c->u_out.data_ptr<T>();
          L.norm_t = std::sqrt(sumsq(u, L.c->h));
          scale_vec(u, L.c->h, 1.0 / std::max(L.norm_t, eps));
          const double range = std::is_same_v<T, double> ? 1e140 : 1e15;
          if (!(L.norm_t > 1 / range && L.norm_t < range)) redo.push_back(l);
        });
      }
      if (!redo.empty()) {
        iterate(redo, true);
        for (int64_t l : redo) layers[l].norm_t = 1.0;  // s is M^T u already
      }
      for (int64_t l = 0; l < nl; ++l) {
        LayerState& L = layers[l];
        double ss = 0;
        for (double x : L.sumsq_s) ss += x;
        // M^T u = s / max(||t||, eps), so ||M^T u|| = ||s|| / max(||t||, eps); v = normalize(M^T u)
        const double t_scale = 1.0 / std::max(L.norm_t, eps);
        const double norm_s = std::sqrt(ss) * t_scale;
        with_layer(L, op, [&](auto tag) {
          using T = opmath<decltype(tag)>;
          scale_vec(L.c->v_out.data_ptr<T>(), L.w, t_scale / std::max(norm_s, eps));
        });
        sigma[l] = norm_s * norm_s / std::max(norm_s, eps);
      }
    }
  }
  // out = W / max(sigma, eps), in fixed chunks over all layers. The layer's matmul reads out next:
  // where out fits the last-level cache it is still there for it (Linear 4608->512, fp32, 9.4 MB, with
  // a B = 16 matmul after the op: 0.90x with non-temporal stores, although the op alone ran 1.38x
  // faster); from the whole cache on it is not, and streaming saves the read for ownership
  // (1024x4608, 18.9 MB: 1.01-1.10x with a B = 16 or 64 matmul; 1024x8192 1.02x).
  std::vector<char> stream(nl);
  for (int64_t l = 0; l < nl; ++l) stream[l] = int64_t(calls[l].out.nbytes()) / 2 >= nontemporal_min_bytes();
  TaskList chunks;
  for (auto& L : layers) chunks.add((L.c->w.numel() + kChunk - 1) / kChunk, L.c->w.numel());
  for (int64_t l = 0; l < nl; ++l) {
    with_layer(layers[l], op, [&](auto tag) {
      using T = opmath<decltype(tag)>;
      *calls[l].sigma.data_ptr<T>() = T(sigma[l]);
    });
  }
  chunks.run([&](int64_t l, int64_t chunk) {
    with_layer(layers[l], op, [&](auto tag) {
      using S = decltype(tag);
      using T = opmath<S>;
      const SpectralNormCall& c = *layers[l].c;
      const int64_t b = chunk * kChunk, n = std::min(c.w.numel(), b + kChunk) - b;
      kernels<S>(isa).scale(reinterpret_cast<const S*>(c.w.data_ptr()) + b, T(1.0 / std::max(sigma[l], eps)),
                            reinterpret_cast<S*>(c.out.data_ptr()) + b, n, stream[l]);
      if (stream[l]) fence_streamed_stores();
    });
  });
}

// The backward of every layer in `calls`.
void spectral_norm_backward_layers(std::vector<SpectralNormBackwardCall>& calls, double eps, const char* op) {
  const Isa isa = active_isa();
  const int64_t nl = int64_t(calls.size());
  // <G, W> over fixed chunks, added in chunk order
  TaskList chunks, rows;
  std::vector<std::vector<double>> gw(nl);
  std::vector<int64_t> segs_per_task(nl);
  // dW is read next by the optimizer, after the rest of the backward. Where dW is half the
  // last-level cache or more (so dW, G and W are 1.5 times it), dW goes around the cache: a cached
  // store first reads each line from memory. Forward + backward on the Zen 2 (16 MB L3), streamed
  // against cached: Linear 4608->512 fp32 (dW 9.4 MB) 1.50-1.70 against 1.59-1.88 ms; 2304->512
  // (4.7 MB) 0.68-0.80 against 0.58-0.59 ms, where dW stays in the cache for its next use.
  std::vector<char> stream(nl);
  const int64_t stream_from = nontemporal_min_bytes();
  for (int64_t l = 0; l < nl; ++l) {
    stream[l] = int64_t(calls[l].grad_w.nbytes()) >= stream_from;
    const int64_t n = calls[l].w.numel();
    gw[l].assign((n + kChunk - 1) / kChunk, 0.0);
    chunks.add(int64_t(gw[l].size()), 2 * n);
    segs_per_task[l] = std::max<int64_t>(1, kChunk / calls[l].inner);
    rows.add((calls[l].outer * calls[l].h + segs_per_task[l] - 1) / segs_per_task[l], 3 * n);
  }
  chunks.run([&](int64_t l, int64_t chunk) {
    with_storage(calls[l].w.scalar_type(), op, [&](auto tag) {
      using S = decltype(tag);
      const SpectralNormBackwardCall& c = calls[l];
      const int64_t b = chunk * kChunk, n = std::min(c.w.numel(), b + kChunk) - b;
      gw[l][chunk] = double(kernels<S>(isa).dot_w(reinterpret_cast<const S*>(c.g.data_ptr()) + b,
                                                  reinterpret_cast<const S*>(c.w.data_ptr()) + b, n));
    });
  });
  std::vector<double> k(nl, 0.0), inv(nl);
  for (int64_t l = 0; l < nl; ++l) {
    with_storage(calls[l].w.scalar_type(), op, [&](auto tag) {
      using T = opmath<decltype(tag)>;
      const double sigma = double(*calls[l].sigma.data_ptr<T>());
      inv[l] = 1.0 / std::max(sigma, eps);
      // Below eps the clamp max(sigma, eps) holds sigma constant: dW = G / eps.
      if (sigma >= eps) {
        double dot = 0;
        for (double x : gw[l]) dot += x;
        k[l] = dot / sigma;  // <G, W / sigma>
      }
    });
  }
  // dW[a, r, :] = G[a, r, :] / sigma - (k u[r] / sigma) v[a * inner : (a + 1) * inner]
  rows.run([&](int64_t l, int64_t task) {
    with_storage(calls[l].w.scalar_type(), op, [&](auto tag) {
      using S = decltype(tag);
      using T = opmath<S>;
      const SpectralNormBackwardCall& c = calls[l];
      const Kernels<S> kk = kernels<S>(isa);
      const int64_t I = c.inner, H = c.h;
      const int64_t p0 = task * segs_per_task[l], p1 = std::min(c.outer * H, p0 + segs_per_task[l]);
      const S* g = reinterpret_cast<const S*>(c.g.data_ptr());
      S* out = reinterpret_cast<S*>(c.grad_w.data_ptr());
      const T* u = c.u.data_ptr<T>();
      const T* v = c.v.data_ptr<T>();
      const T ki = T(k[l] * inv[l]);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t a = p / H, r = p % H;
        kk.grad_row(g + p * I, v + a * I, ki * u[r], T(inv[l]), out + p * I, I, stream[l]);
      }
      if (stream[l]) fence_streamed_stores();
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> spectral_norm_fused_cpu(
    const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v, int64_t dim, int64_t n_iter, double eps) {
  std::vector<SpectralNormCall> calls{
      prepare_spectral_norm(weight, u, v, dim, n_iter, eps, /*fill_vectors=*/true, cpu_output_like)};
  spectral_norm_forward_layers(calls, n_iter, eps, "ganfast::spectral_norm_fused");
  const SpectralNormCall& c = calls[0];
  return {c.out, c.u_out, c.v_out, c.sigma};
}

at::Tensor spectral_norm_backward_cpu(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& u,
                                      const at::Tensor& v, const at::Tensor& sigma, int64_t dim, double eps) {
  std::vector<SpectralNormBackwardCall> calls{
      prepare_spectral_norm_backward(grad, weight, u, v, sigma, dim, eps, cpu_output_like)};
  spectral_norm_backward_layers(calls, eps, "ganfast::spectral_norm_backward");
  return calls[0].grad_w;
}

// The multi-tensor ops run their layers in consecutive groups of at most kGroupBytes of weights (a
// larger layer alone), each group's phases one after the other: a phase then finds the group's weights
// in cache from the phase before, as the single-layer op does. With all layers in one group, the
// three layers of `ganfast bench sn` (16.5 MB of weights; a Zen 2 with a 16 MB L3) spent 45-60 % more
// time in the passes that write (W / sigma, dW) than one op per layer did, and the whole fwd+bwd
// took 6.60 ms against 6.05 ms; in groups, 5.95 ms (medians of 8 alternating processes, 2026-12-05).
// The backward runs the groups last first, as autograd runs one op per layer: the forward left the
// last group's weights in cache. In forward order the same fwd+bwd took 1.7-4.3 % longer (three
// in-process runs of 80 alternating rounds) and lost to one op per layer by 2-3 %; in a trainer's D
// step (DCGAN-32 width 128, 10 MB of weights) the order made no difference (0.1-0.3 %).
// Each layer's math is the same in any group and order (bitwise).
constexpr int64_t kGroupBytes = int64_t(4) << 20;

template <class Call, class Run>
void run_in_cache_groups(std::vector<Call>& calls, bool last_first, const Run& run) {
  std::vector<size_t> bounds{0};  // group g is [bounds[g], bounds[g + 1])
  while (bounds.back() < calls.size()) {
    size_t end = bounds.back() + 1;
    int64_t bytes = int64_t(calls[end - 1].w.nbytes());
    while (end < calls.size() && bytes + int64_t(calls[end].w.nbytes()) <= kGroupBytes) bytes += int64_t(calls[end++].w.nbytes());
    bounds.push_back(end);
  }
  const size_t groups = bounds.size() - 1;
  if (groups == 1) return run(calls);
  for (size_t i = 0; i < groups; ++i) {
    const size_t g = last_first ? groups - 1 - i : i;
    std::vector<Call> group(std::make_move_iterator(calls.begin() + bounds[g]),
                            std::make_move_iterator(calls.begin() + bounds[g + 1]));
    run(group);
    std::move(group.begin(), group.end(), calls.begin() + bounds[g]);
  }
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
spectral_norm_multi_cpu(at::TensorList weights, at::TensorList us, at::TensorList vs, at::IntArrayRef dims,
                        int64_t n_iter, double eps) {
  const int64_t L = int64_t(weights.size());
  TORCH_CHECK(int64_t(us.size()) == L && int64_t(vs.size()) == L && int64_t(dims.size()) == L,
              "ganfast::spectral_norm_multi: weights, u, v and dims must have the same length");
  std::vector<SpectralNormCall> calls;
  calls.reserve(L);
  for (int64_t l = 0; l < L; ++l)
    calls.push_back(
        prepare_spectral_norm(weights[l], us[l], vs[l], dims[l], n_iter, eps, /*fill_vectors=*/true, cpu_output_like));
  run_in_cache_groups(calls, /*last_first=*/false, [&](std::vector<SpectralNormCall>& group) {
    spectral_norm_forward_layers(group, n_iter, eps, "ganfast::spectral_norm_multi");
  });
  std::vector<at::Tensor> out(L), u_out(L), v_out(L), sigma(L);
  for (int64_t l = 0; l < L; ++l) {
    out[l] = calls[l].out;
    u_out[l] = calls[l].u_out;
    v_out[l] = calls[l].v_out;
    sigma[l] = calls[l].sigma;
  }
  return {out, u_out, v_out, sigma};
}

std::vector<at::Tensor> spectral_norm_backward_multi_cpu(at::TensorList grads, at::TensorList weights, at::TensorList us,
                                                         at::TensorList vs, at::TensorList sigmas, at::IntArrayRef dims,
                                                         double eps) {
  const int64_t L = int64_t(weights.size());
  TORCH_CHECK(int64_t(grads.size()) == L && int64_t(us.size()) == L && int64_t(vs.size()) == L &&
                  int64_t(sigmas.size()) == L && int64_t(dims.size()) == L,
              "ganfast::spectral_norm_backward_multi: all lists must have the same length");
  std::vector<SpectralNormBackwardCall> calls;
  calls.reserve(L);
  for (int64_t l = 0; l < L; ++l)
    calls.push_back(
        prepare_spectral_norm_backward(grads[l], weights[l], us[l], vs[l], sigmas[l], dims[l], eps, cpu_output_like));
  run_in_cache_groups(calls, /*last_first=*/true, [&](std::vector<SpectralNormBackwardCall>& group) {
    spectral_norm_backward_layers(group, eps, "ganfast::spectral_norm_backward_multi");
  });
  std::vector<at::Tensor> out(L);
  for (int64_t l = 0; l < L; ++l) out[l] = calls[l].grad_w;
  return out;
}

}  // namespace sn

TORCH_LIBRARY_IMPL(ganfast, CPU, m) {
  m.impl("spectral_norm_fused", &sn::spectral_norm_fused_cpu);
  m.impl("spectral_norm_backward", &sn::spectral_norm_backward_cpu);
  m.impl("spectral_norm_multi", &sn::spectral_norm_multi_cpu);
  m.impl("spectral_norm_backward_multi", &sn::spectral_norm_backward_multi_cpu);
}

}  // namespace ganfast

// Inner loops of the CPU spectral norm, written once with GCC vector extensions and compiled once per
// instruction set: csrc/cpu/spectral_norm.cpp includes this file inside `namespace ...::avx512`,
// `::avx2` and `::baseline`, each under its own `#pragma GCC target`, and picks one at run time. No
// include guard on purpose; the includes it needs (<cstdint>, <cstring>) come before.
//
// A vector is one register of the instruction set, SN_VECTOR_BYTES (defined by the includer): 64 bytes
// with AVX-512, 32 with AVX2, 16 with SSE2. (A 64-byte vector everywhere kept the lanes, and so the
// rounding, the same on every copy, but GCC 12 keeps a vector wider than the registers on the stack and
// moves it through general registers: 2-3x slower loops with AVX2.) Products are summed in the opmath
// type T (float, or double for double weights) in 4 vectors of independent lanes, added in a fixed
// order. S is the storage type: float, double, half_bits, bf16_bits.
#define SN_HALF_BYTES (SN_VECTOR_BYTES / 2)

typedef float vfloat __attribute__((vector_size(SN_VECTOR_BYTES)));
typedef double vdouble __attribute__((vector_size(SN_VECTOR_BYTES)));
typedef uint32_t vu32 __attribute__((vector_size(SN_VECTOR_BYTES)));
typedef int32_t vi32 __attribute__((vector_size(SN_VECTOR_BYTES)));
typedef uint16_t vu16 __attribute__((vector_size(SN_HALF_BYTES)));
typedef _Float16 vf16 __attribute__((vector_size(SN_HALF_BYTES)));

#define SN_INLINE static inline __attribute__((always_inline))

template <class S> struct Lanes;  // opmath vector of S, its width N, and loads/stores of N elements

template <> struct Lanes<float> {
  using T = float;
  using V = vfloat;
  static constexpr int N = SN_VECTOR_BYTES / 4;
  using Raw = vfloat;  // N elements as stored
  typedef float RawU __attribute__((vector_size(SN_VECTOR_BYTES), aligned(1), may_alias));  // Raw at any address
  SN_INLINE V widen(Raw r) { return r; }
  SN_INLINE Raw narrow(V x) { return x; }
};

template <> struct Lanes<double> {
  using T = double;
  using V = vdouble;
  static constexpr int N = SN_VECTOR_BYTES / 8;
  using Raw = vdouble;
  typedef double RawU __attribute__((vector_size(SN_VECTOR_BYTES), aligned(1), may_alias));
  SN_INLINE V widen(Raw r) { return r; }
  SN_INLINE Raw narrow(V x) { return x; }
};

template <> struct Lanes<half_bits> {
  using T = float;
  using V = vfloat;
  static constexpr int N = SN_VECTOR_BYTES / 4;
  using Raw = vf16;
  typedef _Float16 RawU __attribute__((vector_size(SN_HALF_BYTES), aligned(1), may_alias));
  // F16C's vcvtph2ps / vcvtps2ph on AVX2 and AVX-512 (round to nearest even): GCC 12 converts
  // _Float16 vectors one element at a time (a vpinsrw and a scalar conversion each), which made the
  // fp16 spectral norm 2.9x slower than bf16 (Conv2d 256->512 3x3 fwd 1.18 against 0.41 ms, Zen 2).
#if SN_VECTOR_BYTES == 64
  SN_INLINE V widen(Raw r) { return (V)_mm512_cvtph_ps((__m256i)r); }
  SN_INLINE Raw narrow(V x) { return (Raw)_mm512_cvtps_ph((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
#elif SN_VECTOR_BYTES == 32
  SN_INLINE V widen(Raw r) { return (V)_mm256_cvtph_ps((__m128i)r); }
  SN_INLINE Raw narrow(V x) { return (Raw)_mm256_cvtps_ph((__m256)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
#else  // SSE2 has no half conversion: libgcc's, element by element
  SN_INLINE V widen(Raw r) { return __builtin_convertvector(r, vfloat); }
  SN_INLINE Raw narrow(V x) { return __builtin_convertvector(x, vf16); }  // round to nearest even
#endif
};

template <> struct Lanes<bf16_bits> {
  using T = float;
  using V = vfloat;
  static constexpr int N = SN_VECTOR_BYTES / 4;
  using Raw = vu16;
  typedef uint16_t RawU __attribute__((vector_size(SN_HALF_BYTES), aligned(1), may_alias));
  SN_INLINE V widen(Raw r) { return (vfloat)(__builtin_convertvector(r, vu32) << 16); }
  // Round to nearest even, NaN -> quiet NaN (as c10::BFloat16).
  SN_INLINE Raw narrow(V x) {
    const vu32 bits = (vu32)x;
    const vu32 rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const vi32 nan = x != x;
    return __builtin_convertvector(nan ? vu32{} + 0x7FC0u : rounded, vu16);
  }
};

// Full vectors move through RawU, an unaligned vector type (one unaligned load or store).
template <class S> SN_INLINE typename Lanes<S>::V load(const S* p) {
  return Lanes<S>::widen(*reinterpret_cast<const typename Lanes<S>::RawU*>(p));
}

template <class S> SN_INLINE typename Lanes<S>::V load_n(const S* p, int64_t n) {  // n < N, rest 0
  typename Lanes<S>::Raw r = {};
  memcpy(&r, p, size_t(n) * sizeof(S));
  return Lanes<S>::widen(r);
}

template <class S> SN_INLINE void store(S* p, typename Lanes<S>::V x) {
  *reinterpret_cast<typename Lanes<S>::RawU*>(p) = Lanes<S>::narrow(x);
}

template <class S> SN_INLINE void store_n(S* p, typename Lanes<S>::V x, int64_t n) {
  const typename Lanes<S>::Raw r = Lanes<S>::narrow(x);
  memcpy(p, &r, size_t(n) * sizeof(S));
}

// A full vector stored with a non-temporal store (around the caches), p aligned to the stored bytes.
template <class S> SN_INLINE void store_stream(S* p, typename Lanes<S>::V x) {
  const typename Lanes<S>::Raw r = Lanes<S>::narrow(x);
#if defined(__x86_64__)
  if constexpr (sizeof(r) == 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), (__m512i)r);
  } else if constexpr (sizeof(r) == 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), (__m256i)r);
  } else if constexpr (sizeof(r) == 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), (__m128i)r);
  } else {
    static_assert(sizeof(r) == 8, "a vector of 8, 16, 32 or 64 bytes");
    long long bits;
    memcpy(&bits, &r, 8);
    _mm_stream_si64(reinterpret_cast<long long*>(p), bits);
  }
#else
  *reinterpret_cast<typename Lanes<S>::RawU*>(p) = r;
#endif
}

template <class V> SN_INLINE auto lane_sum(V x) {  // pairwise, fixed order
  constexpr int N = sizeof(V) / sizeof(x[0]);
  decltype(x[0] + x[0]) s[N];
  for (int i = 0; i < N; ++i) s[i] = x[i];
  for (int w = N / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) s[i] += s[i + w];
  return s[0];
}

// sum_i x[i] * y[i]
template <class SX, class SY> typename Lanes<SX>::T dot(const SX* x, const SY* y, int64_t n) {
  using L = Lanes<SX>;
  constexpr int N = L::N;
  typename L::V a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    a0 += load(x + i) * load(y + i);
    a1 += load(x + i + N) * load(y + i + N);
    a2 += load(x + i + 2 * N) * load(y + i + 2 * N);
    a3 += load(x + i + 3 * N) * load(y + i + 3 * N);
  }
  for (; i + N <= n; i += N) a0 += load(x + i) * load(y + i);
  if (i < n) a1 += load_n(x + i, n - i) * load_n(y + i, n - i);
  return lane_sum((a0 + a1) + (a2 + a3));
}

// t[j] = sum_i x_j[i] * y[i] for the 4 rows x_j = x + j * ld (v is loaded once for the 4)
template <class S> void dot4(const S* x, int64_t ld, const typename Lanes<S>::T* y, int64_t n,
                             typename Lanes<S>::T* t) {
  using L = Lanes<S>;
  constexpr int N = L::N;
  typename L::V a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const typename L::V yv = load(y + i);
    a0 += load(x + i) * yv;
    a1 += load(x + ld + i) * yv;
    a2 += load(x + 2 * ld + i) * yv;
    a3 += load(x + 3 * ld + i) * yv;
  }
  if (i < n) {
    const typename L::V yv = load_n(y + i, n - i);
    a0 += load_n(x + i, n - i) * yv;
    a1 += load_n(x + ld + i, n - i) * yv;
    a2 += load_n(x + 2 * ld + i, n - i) * yv;
    a3 += load_n(x + 3 * ld + i, n - i) * yv;
  }
  t[0] = lane_sum(a0);
  t[1] = lane_sum(a1);
  t[2] = lane_sum(a2);
  t[3] = lane_sum(a3);
}

// y[i] = sum_j a[j] x_j[i] (accumulate == false) or y[i] += ..., for the 4 rows x_j = x + j * ld
template <class S> void axpy4(const typename Lanes<S>::T* a, const S* x, int64_t ld, typename Lanes<S>::T* y,
                              int64_t n, bool accumulate) {
  using L = Lanes<S>;
  using T = typename L::T;
  constexpr int N = L::N;
  const T a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    typename L::V acc = (a0 * load(x + i) + a1 * load(x + ld + i)) + (a2 * load(x + 2 * ld + i) + a3 * load(x + 3 * ld + i));
    if (accumulate) acc = load(y + i) + acc;
    store<T>(y + i, acc);
  }
  if (i < n) {
    const int64_t m = n - i;
    typename L::V acc = (a0 * load_n(x + i, m) + a1 * load_n(x + ld + i, m)) +
                        (a2 * load_n(x + 2 * ld + i, m) + a3 * load_n(x + 3 * ld + i, m));
    if (accumulate) acc = load_n(y + i, m) + acc;
    store_n<T>(y + i, acc, m);
  }
}

// y[i] = a * x[i] (accumulate == false) or y[i] += a * x[i]; y in the opmath type
template <class S> void axpy(typename Lanes<S>::T a, const S* x, typename Lanes<S>::T* y, int64_t n, bool accumulate) {
  using L = Lanes<S>;
  using T = typename L::T;
  constexpr int N = L::N;
  int64_t i = 0;
  if (accumulate) {
    for (; i + N <= n; i += N) store(y + i, load(y + i) + a * load(x + i));
    if (i < n) store_n(y + i, load_n(y + i, n - i) + a * load_n(x + i, n - i), n - i);
  } else {
    for (; i + N <= n; i += N) store<T>(y + i, a * load(x + i));
    if (i < n) store_n<T>(y + i, a * load_n(x + i, n - i), n - i);
  }
}

// y[i] += x[i] (both opmath)
template <class T> void add_into(const T* x, T* y, int64_t n) {
  constexpr int N = Lanes<T>::N;
  int64_t i = 0;
  for (; i + N <= n; i += N) store(y + i, load(y + i) + load(x + i));
  for (; i < n; ++i) y[i] += x[i];
}

// out[0, n) from full(i), the N elements from i on, and part(i, m), the m < N elements from i on: full
// vectors stored, or with `stream` from the first one aligned to a whole vector on around the caches
// (store_stream; the elements before it through part).
template <class S, class Full, class Part>
SN_INLINE void write_out(S* out, int64_t n, bool stream, const Full& full, const Part& part) {
  constexpr int N = Lanes<S>::N;
  int64_t i = 0;
  if (stream) {
    constexpr uintptr_t kBytes = sizeof(typename Lanes<S>::Raw);
    const int64_t head = std::min<int64_t>(n, int64_t((kBytes - reinterpret_cast<uintptr_t>(out) % kBytes) % kBytes / sizeof(S)));
    if (head > 0) store_n(out, part(0, head), head);
    for (i = head; i + N <= n; i += N) store_stream(out + i, full(i));
  }
  for (; i + N <= n; i += N) store(out + i, full(i));
  if (i < n) store_n(out + i, part(i, n - i), n - i);
}

// out[i] = x[i] * a; `stream`: see write_out
template <class S> void scale(const S* x, typename Lanes<S>::T a, S* out, int64_t n, bool stream) {
  constexpr int N = Lanes<S>::N;
  if (stream) {
    write_out(out, n, true, [&](int64_t i) { return load(x + i) * a; },
              [&](int64_t i, int64_t m) { return load_n(x + i, m) * a; });
    return;
  }
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    store(out + i, load(x + i) * a);
    store(out + i + N, load(x + i + N) * a);
  }
  for (; i + N <= n; i += N) store(out + i, load(x + i) * a);
  if (i < n) store_n(out + i, load_n(x + i, n - i) * a, n - i);
}

// out[i] = g[i] * inv - c * v[i]   (one row of dW = (G - k u v^T) / sigma, with c = k u[r] / sigma);
// `stream`: see write_out
template <class S> void grad_row(const S* g, const typename Lanes<S>::T* v, typename Lanes<S>::T c,
                                 typename Lanes<S>::T inv, S* out, int64_t n, bool stream) {
  write_out(out, n, stream, [&](int64_t i) { return load(g + i) * inv - c * load(v + i); },
            [&](int64_t i, int64_t m) { return load_n(g + i, m) * inv - c * load_n(v + i, m); });
}

#undef SN_INLINE
#undef SN_HALF_BYTES

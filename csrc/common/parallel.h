// Deterministic parallel sums on the CPU: [0, n) is cut into fixed-size chunks (independent of the
// thread count), chunks run in parallel, and their partial sums are added in chunk order.
#pragma once
#include <ATen/Parallel.h>
#include <array>
#include <utility>
#include <cstdint>
#include <vector>

namespace ganfast {

constexpr int64_t kChunk = 16384;

// body(begin, end, acc) adds into acc (an std::array<double, K>); returns the ordered total.
template <size_t K, typename Body>
std::array<double, K> chunked_sum(int64_t n, const Body& body) {
  std::array<double, K> total{};
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (chunks <= 1) {
    body(int64_t(0), n, total);
    return total;
  }
  std::vector<std::array<double, K>> partial(chunks, std::array<double, K>{});
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk;
      const int64_t end = begin + kChunk < n ? begin + kChunk : n;
      body(begin, end, partial[c]);
    }
  });
  for (const auto& p : partial)
    for (size_t k = 0; k < K; ++k) total[k] += p[k];
  return total;
}

// Two sums, over [0, na) with body_a and [0, nb) with body_b, in one parallel region: one fork and
// join instead of two, and the chunks of both shared out together (57600 + 57600 elements on two
// threads: 57600 each, where two chunked_sum calls give one thread 2 x 32768). Each sum keeps
// chunked_sum's chunks and order, so the results are the same as two chunked_sum calls.
template <size_t K, typename BodyA, typename BodyB>
std::pair<std::array<double, K>, std::array<double, K>> chunked_sum_pair(int64_t na, const BodyA& body_a, int64_t nb,
                                                                          const BodyB& body_b) {
  const int64_t chunks_a = (na + kChunk - 1) / kChunk, chunks_b = (nb + kChunk - 1) / kChunk;
  if (na + nb <= kChunk) {  // too little to share out
    std::array<double, K> a{}, b{};
    if (na) body_a(int64_t(0), na, a);
    if (nb) body_b(int64_t(0), nb, b);
    return {a, b};
  }
  std::vector<std::array<double, K>> partial(chunks_a + chunks_b, std::array<double, K>{});
  at::parallel_for(0, chunks_a + chunks_b, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const bool in_a = c < chunks_a;
      const int64_t n = in_a ? na : nb;
      const int64_t begin = (in_a ? c : c - chunks_a) * kChunk;
      const int64_t end = begin + kChunk < n ? begin + kChunk : n;
      if (in_a) body_a(begin, end, partial[c]);
      else body_b(begin, end, partial[c]);
    }
  });
  std::pair<std::array<double, K>, std::array<double, K>> total{};
  for (int64_t c = 0; c < chunks_a + chunks_b; ++c)
    for (size_t k = 0; k < K; ++k) (c < chunks_a ? total.first : total.second)[k] += partial[c][k];
  return total;
}

// Elementwise loop over [0, n), parallel above one chunk.
template <typename Body>
void chunked_for(int64_t n, const Body& body) {
  if (n <= kChunk) {
    body(int64_t(0), n);
    return;
  }
  at::parallel_for(0, n, kChunk, body);
}

}  // namespace ganfast

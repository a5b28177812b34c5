// Deterministic parallel sums on the CPU: [0, n) is cut into fixed-size chunks (independent of the
// thread count), chunks run in parallel, and their partial sums are added in chunk order.
#pragma once
#include <ATen/Parallel.h>
#include <array>
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

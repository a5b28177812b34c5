// Deterministic parallel sums on the CPU: [0, n) is cut into fixed-size chunks (independent of the
// thread count), chunks run in parallel, and their partial sums are added in chunk order.
#pragma once
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <array>
#include <cstdint>
#include <utility>

namespace ganfast {

constexpr int64_t kChunk = 16384;

// chunk(side, c, begin, end) for every chunk of [0, na) (side 0) and of [0, nb) (side 1), c counting
// the chunks of both sides in order (side 0's first), in one parallel region: one fork and join
// instead of two, and the chunks of both shared out together (57600 + 57600 elements on two threads:
// 57600 each, where a region per side gives one thread 2 x 32768).
template <typename Chunk>
void for_chunks_of_two(int64_t na, int64_t nb, const Chunk& chunk) {
  const int64_t chunks_a = (na + kChunk - 1) / kChunk, chunks_b = (nb + kChunk - 1) / kChunk;
  auto run = [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int side = c < chunks_a ? 0 : 1;
      const int64_t n = side == 0 ? na : nb;
      const int64_t begin = (side == 0 ? c : c - chunks_a) * kChunk;
      chunk(side, c, begin, begin + kChunk < n ? begin + kChunk : n);
    }
  };
  if (na + nb <= kChunk) run(0, chunks_a + chunks_b);  // too little to share out
  else at::parallel_for(0, chunks_a + chunks_b, 1, run);
}

// Two sums, over [0, na) with body_a and [0, nb) with body_b (body(begin, end, acc) adds into acc, an
// std::array<double, K>), in one parallel region (for_chunks_of_two); each total adds its side's
// chunks in order.
template <size_t K, typename BodyA, typename BodyB>
std::pair<std::array<double, K>, std::array<double, K>> chunked_sum_pair(int64_t na, const BodyA& body_a, int64_t nb,
                                                                          const BodyB& body_b) {
  const size_t chunks_a = (na + kChunk - 1) / kChunk;
  // inline room for the serial case (at most two chunks): no allocation for small inputs
  c10::SmallVector<std::array<double, K>, 2> partial(chunks_a + (nb + kChunk - 1) / kChunk, std::array<double, K>{});
  for_chunks_of_two(na, nb, [&](int side, int64_t c, int64_t begin, int64_t end) {
    if (side == 0) body_a(begin, end, partial[c]);
    else body_b(begin, end, partial[c]);
  });
  std::pair<std::array<double, K>, std::array<double, K>> total{};
  for (size_t c = 0; c < partial.size(); ++c)
    for (size_t k = 0; k < K; ++k) (c < chunks_a ? total.first : total.second)[k] += partial[c][k];
  return total;
}

// One sum over [0, n): the first side of chunked_sum_pair.
template <size_t K, typename Body>
std::array<double, K> chunked_sum(int64_t n, const Body& body) {
  return chunked_sum_pair<K>(n, body, 0, body).first;
}

}  // namespace ganfast

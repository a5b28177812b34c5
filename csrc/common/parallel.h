// Deterministic parallel sums on the CPU: [0, n) is cut into chunks whose layout depends on n alone
// (ChunkLayout, never on the thread count), chunks run in parallel, and their partial sums are added
// in chunk order.
#pragma once
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <array>
#include <cstdint>
#include <utility>

namespace ganfast {

constexpr int64_t kChunk = 16384;

// The chunks of [0, n): an even number of them when more than one (ceil(n / kChunk) rounded up), of
// one length, a multiple of 64 elements, with the last one shorter. Equal chunks share out evenly:
// with chunks of kChunk, a g_loss at B = 57600 (3.5 chunks) gave one of two threads 57 % of the work.
// The layout depends on n alone, never on the thread count.
struct ChunkLayout {
  int64_t length = 1, count = 0;
  explicit ChunkLayout(int64_t n) {
    if (n <= 0) return;
    int64_t wanted = (n + kChunk - 1) / kChunk;
    if (wanted > 1) wanted += wanted % 2;
    length = ((n + wanted - 1) / wanted + 63) / 64 * 64;
    count = (n + length - 1) / length;
  }
};

// chunk(side, c, begin, end) for every chunk of [0, na) (side 0) and of [0, nb) (side 1), c counting
// the chunks of both sides in order (side 0's first), in one parallel region: one fork and join
// instead of two, and the chunks of both shared out together (57600 + 57600 elements on two threads:
// 57600 each, where a region per side gives one thread 2 x 32768).
template <typename Chunk>
void for_chunks_of_two(int64_t na, int64_t nb, const Chunk& chunk) {
  const ChunkLayout a(na), b(nb);
  auto run = [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int side = c < a.count ? 0 : 1;
      const int64_t n = side == 0 ? na : nb, length = side == 0 ? a.length : b.length;
      const int64_t begin = (side == 0 ? c : c - a.count) * length;
      chunk(side, c, begin, begin + length < n ? begin + length : n);
    }
  };
  if (na + nb <= kChunk) run(0, a.count + b.count);  // too little to share out
  else at::parallel_for(0, a.count + b.count, 1, run);
}

// Two sums, over [0, na) with body_a and [0, nb) with body_b (body(begin, end, acc) adds into acc, an
// std::array<double, K>), in one parallel region (for_chunks_of_two); each total adds its side's
// chunks in order.
template <size_t K, typename BodyA, typename BodyB>
std::pair<std::array<double, K>, std::array<double, K>> chunked_sum_pair(int64_t na, const BodyA& body_a, int64_t nb,
                                                                          const BodyB& body_b) {
  const size_t chunks_a = ChunkLayout(na).count;
  // inline room for the serial case (at most two chunks): no allocation for small inputs
  c10::SmallVector<std::array<double, K>, 2> partial(chunks_a + ChunkLayout(nb).count, std::array<double, K>{});
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

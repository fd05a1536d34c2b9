#include "pyserve/token_ids.h"

#include <stdexcept>

namespace pyserve {

namespace {
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

void check_range(int32_t low, int32_t high) {
  if (!(low < high)) throw std::invalid_argument("token id range needs low < high");
}
}  // namespace

int32_t splitmix_token(uint64_t z, int32_t low, int32_t high) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  const uint64_t span = uint64_t(int64_t(high) - int64_t(low));
  return int32_t(int64_t(z % span) + low);
}

void draw_token_ids(uint64_t seed, int64_t n, int32_t low, int32_t high, int32_t* out) {
  if (n < 0) throw std::invalid_argument("draw_token_ids: n must be >= 0");
  check_range(low, high);
  uint64_t z = seed;
  for (int64_t i = 0; i < n; ++i) out[i] = splitmix_token(z += kGolden, low, high);
}

void hash_block_token_ids(const uint64_t* hash_ids, int64_t num_ids, int block_tokens, int32_t low,
                          int32_t high, int32_t* out) {
  if (block_tokens < 1) throw std::invalid_argument("hash_block_token_ids: block_tokens >= 1");
  if (num_ids < 0) throw std::invalid_argument("hash_block_token_ids: num_ids must be >= 0");
  check_range(low, high);
  for (int64_t k = 0; k < num_ids; ++k) {
    const uint64_t base = hash_ids[k] * uint64_t(block_tokens) + kGolden;
    for (int i = 0; i < block_tokens; ++i) *out++ = splitmix_token(base + uint64_t(i), low, high);
  }
}

}  // namespace pyserve

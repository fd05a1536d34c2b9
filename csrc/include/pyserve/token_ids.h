// Deterministic synthetic token ids (the simulator's traces): SplitMix64, counter-based.
#pragma once
#include <cstdint>

namespace pyserve {

/// SplitMix64's output for state `z` (Vigna's finaliser), mapped to [low, high) by modulo.
int32_t splitmix_token(uint64_t z, int32_t low, int32_t high);

/// n ids: id i (0-based) is splitmix_token(seed + (i + 1) * golden), i.e. SplitMix64's i-th
/// output from state `seed`. A prefix of a longer draw equals a shorter draw (shared prefixes).
/// Throws std::invalid_argument unless n >= 0 and low < high.
void draw_token_ids(uint64_t seed, int64_t n, int32_t low, int32_t high, int32_t* out);

/// block_tokens ids per hash id, concatenated: id (k, i) is
/// splitmix_token(hash_ids[k] * block_tokens + i + golden), so equal hash ids give equal blocks.
/// Throws std::invalid_argument unless block_tokens >= 1 and low < high.
void hash_block_token_ids(const uint64_t* hash_ids, int64_t num_ids, int block_tokens, int32_t low,
                          int32_t high, int32_t* out);

}  // namespace pyserve

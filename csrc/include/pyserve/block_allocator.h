// Paged KV block pools: a GPU pool with a hash-chained prefix cache and a plain CPU swap pool.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "pyserve/types.h"

namespace pyserve {

/// Chained hash of one full block: H(parent_hash, tokens[0..n), salt_hash).
uint64_t hash_block(uint64_t parent_hash, const TokenId* tokens, int n, uint64_t salt_hash);
uint64_t hash_string(const std::string& s);

/// GPU block pool. Blocks with ref_count 0 sit in a free list in LRU order (least recently freed
/// first). A full, computed block may be registered in the prefix cache under its chained hash;
/// it stays cached after being freed until the allocator hands its memory out again.
///
/// NOTE: a cache hit is verified, never trusted: the candidate's stored tokens must equal the
/// query's and its parent must be the exact block (id and generation) verified one level up, so a
/// hash collision can never alias different token sequences.
class BlockAllocator {
 public:
  BlockAllocator(int num_blocks, int block_size, uint64_t hash_mask);

  int num_blocks() const { return static_cast<int>(meta_.size()); }
  int block_size() const { return block_size_; }
  int num_free() const { return num_free_; }
  int num_cached() const { return static_cast<int>(cache_.size()); }
  int ref_count(BlockId b) const { return check_id(b), meta_[b].ref; }
  bool is_cached(BlockId b) const { return check_id(b), meta_[b].hash_valid; }
  /// Bumped each time the block's memory is handed out again.
  uint32_t generation(BlockId b) const { return meta_[b].gen; }

  /// Takes the least recently freed block (evicting its cache entry). Returns kNoBlock if none.
  BlockId allocate();
  void incref(BlockId b);
  /// Drops one reference; at zero the block joins the free list (MRU end), keeping its cache entry.
  void decref(BlockId b);

  /// Longest run of cached full blocks matching tokens[0..n) from the start; each hit gets a
  /// reference. `hashes` receives the chained hash of each hit block.
  void lookup(const TokenId* tokens, int n, uint64_t salt_hash, std::vector<BlockId>* hits,
              std::vector<uint64_t>* hashes);
  /// Registers full block `b` holding tokens[0..block_size) whose parent is the cached block
  /// `parent` (kNoBlock for the first block). Stores the chained hash in *hash and returns the
  /// canonical cached block for this content: `b`, or an equal block cached earlier. A collision
  /// with different content keeps the old entry and returns `b` uncached.
  BlockId register_block(BlockId b, BlockId parent, uint64_t parent_hash, const TokenId* tokens,
                         uint64_t salt_hash, uint64_t* hash);

  /// Free-list order, least recently freed first (tests).
  std::vector<BlockId> free_list() const;
  /// Throws std::logic_error if internal structures disagree.
  void check() const;

 private:
  struct Meta {
    int32_t ref = 0;
    BlockId prev = kNoBlock, next = kNoBlock;  // free-list links
    bool in_free_list = false;
    bool hash_valid = false;
    uint64_t hash = 0;
    BlockId parent = kNoBlock;
    uint32_t parent_gen = 0;
    uint32_t gen = 0;  // bumped each time the block's memory is reused
    uint64_t salt = 0;
  };
  void check_id(BlockId b) const;
  void unlink(BlockId b);
  void push_back(BlockId b);
  void evict(BlockId b);
  const TokenId* tokens_of(BlockId b) const { return &tokens_[size_t(b) * block_size_]; }
  bool matches(BlockId b, BlockId parent, const TokenId* tokens, uint64_t salt_hash) const;

  int block_size_;
  uint64_t hash_mask_;
  std::vector<Meta> meta_;
  std::vector<TokenId> tokens_;  // NOTE: [num_blocks * block_size], valid where hash_valid
  std::unordered_map<uint64_t, BlockId> cache_;
  BlockId head_ = kNoBlock, tail_ = kNoBlock;
  int num_free_ = 0;
};

/// CPU swap pool: plain free stack, no caching.
class CpuPool {
 public:
  explicit CpuPool(int num_blocks);
  int num_blocks() const { return total_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  BlockId allocate();
  void free(BlockId b);
  bool is_free(BlockId b) const { return is_free_[b]; }

 private:
  int total_;
  std::vector<BlockId> free_;
  std::vector<bool> is_free_;
};

}  // namespace pyserve

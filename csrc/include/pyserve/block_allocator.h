// Paged KV block pools with a hash-chained prefix cache: one class for both tiers (GPU and host).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "pyserve/block_index.h"
#include "pyserve/types.h"

namespace pyserve {

/// Chained hash of one full block: H(parent_hash, tokens[0..n), salt_hash).
uint64_t hash_block(uint64_t parent_hash, const TokenId* tokens, int n, uint64_t salt_hash);
uint64_t hash_string(const std::string& s);

/// What identifies one cached block's content, whichever tier holds it. `uid` is unique per
/// registration and travels with the content when it moves between tiers; children name their
/// parent by uid, so a chain stays verifiable across tiers.
struct CacheEntry {
  uint64_t hash = 0;
  uint64_t uid = 0;         // 0: not cached
  uint64_t parent_uid = 0;  // 0: first block of a sequence
  uint64_t salt = 0;
  uint64_t owner = 0;  // hash_string of the registering call's program key (retention policies)
  const TokenId* tokens = nullptr;  // NOTE: block_size tokens, owned by the allocator
};

/// One KV block pool (the GPU pool, or the host pool used for swap and the host cache tier).
/// Blocks with ref_count 0 sit in a free list in LRU order (least recently freed first). A full,
/// computed block may be registered in the prefix cache under its chained hash; it stays cached
/// after being freed until the allocator hands its memory out again (then the evict hook, if set,
/// sees its entry first: the scheduler may move it to the host tier).
///
/// NOTE: a cache hit is verified, never trusted: the candidate's stored tokens must equal the
/// query's and its parent must be the exact entry (uid) verified one level up, so a hash collision
/// can never alias different token sequences.
class BlockAllocator {
 public:
  using EvictHook = std::function<void(BlockId, const CacheEntry&)>;

  BlockAllocator(int num_blocks, int block_size, uint64_t hash_mask);

  int num_blocks() const { return static_cast<int>(meta_.size()); }
  int block_size() const { return block_size_; }
  int num_free() const { return num_free_; }
  int num_cached() const { return cache_.size(); }
  int ref_count(BlockId b) const { return check_id(b), meta_[b].ref; }
  bool is_cached(BlockId b) const { return check_id(b), meta_[b].hash_valid; }
  /// Uid of the block's cache entry (0 when not cached).
  uint64_t uid(BlockId b) const { return check_id(b), meta_[b].hash_valid ? meta_[b].uid : 0; }
  /// Called with a cached block's entry just before allocate() drops it.
  void set_evict_hook(EvictHook hook) { on_evict_ = std::move(hook); }

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
  /// The same under a parent named by uid (0: first block), with the block's chained hash `h`
  /// computed by the caller (masked_hash of its parent's hash and tokens); `owner` tags the entry.
  BlockId register_child(BlockId b, uint64_t parent_uid, uint64_t h, const TokenId* tokens,
                         uint64_t salt_hash, uint64_t owner);
  /// Caches block `b` under an entry copied from the other tier (same uid). Returns false, leaving
  /// `b` uncached, when the hash slot is taken.
  bool adopt(BlockId b, const CacheEntry& e);
  /// The cached block for chain level hash `h` whose parent is `parent_uid` and whose content is
  /// tokens[0..block_size), or kNoBlock. No reference is taken.
  BlockId match(uint64_t h, uint64_t parent_uid, const TokenId* tokens, uint64_t salt_hash) const;
  /// Whether entry `uid` is cached here under hash `h`.
  bool holds(uint64_t h, uint64_t uid) const;
  /// The entry of cached block `b`.
  CacheEntry entry(BlockId b) const;
  /// Drops b's cache entry (its content is about to be invalid).
  void uncache(BlockId b) { evict(b); }
  uint64_t masked_hash(uint64_t parent_hash, const TokenId* tokens, uint64_t salt_hash) const {
    return hash_block(parent_hash, tokens, block_size_, salt_hash) & hash_mask_;
  }

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
    uint64_t uid = 0;
    uint64_t parent_uid = 0;
    uint64_t salt = 0;
    uint64_t owner = 0;
  };
  void check_id(BlockId b) const;
  void unlink(BlockId b);
  void push_back(BlockId b);
  void evict(BlockId b);
  const TokenId* tokens_of(BlockId b) const { return &tokens_[size_t(b) * block_size_]; }
  bool matches(BlockId b, uint64_t parent_uid, const TokenId* tokens, uint64_t salt_hash) const;
  void insert(BlockId b, const CacheEntry& e);

  int block_size_;
  uint64_t hash_mask_;
  std::vector<Meta> meta_;
  std::vector<TokenId> tokens_;  // NOTE: [num_blocks * block_size], valid where hash_valid
  BlockIndex cache_;
  BlockId head_ = kNoBlock, tail_ = kNoBlock;
  int num_free_ = 0;
  EvictHook on_evict_;
};

/// Source of cache-entry uids, shared by both tiers of one scheduler (process-wide, never 0).
uint64_t next_cache_uid();

}  // namespace pyserve

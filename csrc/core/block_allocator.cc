#include "pyserve/block_allocator.h"

#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pyserve {

namespace {
inline uint64_t mix(uint64_t h, uint64_t v) {
  // splitmix64-style avalanche of (h ^ v); cheap and well distributed.
  uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace

uint64_t hash_block(uint64_t parent_hash, const TokenId* tokens, int n, uint64_t salt_hash) {
  uint64_t h = mix(0x51ed270b27e5d4c1ULL ^ static_cast<uint64_t>(n), parent_hash);
  h = mix(h, salt_hash);
  // NOTE: two tokens per mix (one 64-bit word) halve the serial chain; the length in the seed
  // keeps an odd tail from aliasing a zero-padded pair.
  int i = 0;
  for (; i + 1 < n; i += 2)
    h = mix(h, uint64_t(static_cast<uint32_t>(tokens[i])) |
                   uint64_t(static_cast<uint32_t>(tokens[i + 1])) << 32);
  if (i < n) h = mix(h, static_cast<uint32_t>(tokens[i]));
  return h;
}

uint64_t hash_string(const std::string& s) {
  if (s.empty()) return 0;
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a, then mixed
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return mix(h, s.size());
}

uint64_t next_cache_uid() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

BlockAllocator::BlockAllocator(int num_blocks, int block_size, uint64_t hash_mask)
    : block_size_(block_size),
      hash_mask_(hash_mask),
      meta_(num_blocks),
      tokens_(size_t(num_blocks) * block_size),
      cache_(num_blocks) {
  for (BlockId b = 0; b < num_blocks; ++b) push_back(b);
}

void BlockAllocator::unlink(BlockId b) {
  Meta& m = meta_[b];
  if (m.prev != kNoBlock)
    meta_[m.prev].next = m.next;
  else
    head_ = m.next;
  if (m.next != kNoBlock)
    meta_[m.next].prev = m.prev;
  else
    tail_ = m.prev;
  m.prev = m.next = kNoBlock;
  m.in_free_list = false;
  --num_free_;
}

void BlockAllocator::push_back(BlockId b) {
  Meta& m = meta_[b];
  m.prev = tail_;
  m.next = kNoBlock;
  if (tail_ != kNoBlock)
    meta_[tail_].next = b;
  else
    head_ = b;
  tail_ = b;
  m.in_free_list = true;
  ++num_free_;
}

void BlockAllocator::evict(BlockId b) {
  Meta& m = meta_[b];
  if (m.hash_valid) {
    cache_.erase(m.hash, b);
    m.hash_valid = false;
  }
  m.uid = 0;  // children registered under the old contents can never verify again
}

BlockId BlockAllocator::allocate() {
  if (head_ == kNoBlock) return kNoBlock;
  BlockId b = head_;
  unlink(b);
  if (on_evict_ && meta_[b].hash_valid) on_evict_(b, entry(b));
  evict(b);
  meta_[b].ref = 1;
  return b;
}

void BlockAllocator::check_id(BlockId b) const {
  if (b < 0 || b >= num_blocks())
    throw std::out_of_range("block id " + std::to_string(b) + " out of range");
}

void BlockAllocator::incref(BlockId b) {
  check_id(b);
  Meta& m = meta_[b];
  if (m.in_free_list) unlink(b);
  ++m.ref;
}

void BlockAllocator::decref(BlockId b) {
  check_id(b);
  Meta& m = meta_[b];
  if (m.ref <= 0) throw std::logic_error("decref of free block " + std::to_string(b));
  if (--m.ref == 0) push_back(b);
}

bool BlockAllocator::matches(BlockId b, uint64_t parent_uid, const TokenId* tokens,
                             uint64_t salt_hash) const {
  const Meta& m = meta_[b];
  if (!m.hash_valid || m.parent_uid != parent_uid || m.salt != salt_hash) return false;
  return std::memcmp(tokens_of(b), tokens, sizeof(TokenId) * block_size_) == 0;
}

BlockId BlockAllocator::match(uint64_t h, uint64_t parent_uid, const TokenId* tokens,
                              uint64_t salt_hash) const {
  const BlockId b = cache_.find(h);
  if (b == kNoBlock || !matches(b, parent_uid, tokens, salt_hash)) return kNoBlock;
  return b;
}

bool BlockAllocator::holds(uint64_t h, uint64_t uid) const {
  if (uid == 0) return false;
  const BlockId b = cache_.find(h);
  return b != kNoBlock && meta_[b].uid == uid;
}

CacheEntry BlockAllocator::entry(BlockId b) const {
  check_id(b);
  const Meta& m = meta_[b];
  if (!m.hash_valid) return CacheEntry{};
  return CacheEntry{m.hash, m.uid, m.parent_uid, m.salt, m.owner, tokens_of(b)};
}

void BlockAllocator::insert(BlockId b, const CacheEntry& e) {
  Meta& m = meta_[b];
  m.hash_valid = true;
  m.hash = e.hash;
  m.uid = e.uid;
  m.parent_uid = e.parent_uid;
  m.salt = e.salt;
  m.owner = e.owner;
  std::memcpy(&tokens_[size_t(b) * block_size_], e.tokens, sizeof(TokenId) * block_size_);
  cache_.insert(e.hash, b);
}

bool BlockAllocator::adopt(BlockId b, const CacheEntry& e) {
  check_id(b);
  if (meta_[b].hash_valid || e.uid == 0 || cache_.contains(e.hash)) return false;
  insert(b, e);
  return true;
}

void BlockAllocator::lookup(const TokenId* tokens, int n, uint64_t salt_hash,
                            std::vector<BlockId>* hits, std::vector<uint64_t>* hashes) {
  uint64_t parent_hash = 0, parent_uid = 0;
  for (int start = 0; start + block_size_ <= n; start += block_size_) {
    const TokenId* blk = tokens + start;
    uint64_t h = masked_hash(parent_hash, blk, salt_hash);
    BlockId b = match(h, parent_uid, blk, salt_hash);
    if (b == kNoBlock) break;
    incref(b);
    hits->push_back(b);
    hashes->push_back(h);
    parent_hash = h;
    parent_uid = meta_[b].uid;
  }
}

BlockId BlockAllocator::register_block(BlockId b, BlockId parent, uint64_t parent_hash,
                                       const TokenId* tokens, uint64_t salt_hash, uint64_t* hash) {
  uint64_t parent_uid = parent == kNoBlock ? 0 : uid(parent);
  *hash = masked_hash(parent_hash, tokens, salt_hash);
  if (parent != kNoBlock && parent_uid == 0) return b;  // the parent is gone: stay uncached
  return register_child(b, parent_uid, *hash, tokens, salt_hash, 0);
}

BlockId BlockAllocator::register_child(BlockId b, uint64_t parent_uid, uint64_t h,
                                       const TokenId* tokens, uint64_t salt_hash, uint64_t owner) {
  check_id(b);
  if (meta_[b].hash_valid) return b;  // already cached (a prefix hit)
  const BlockId old = cache_.find(h);
  if (old != kNoBlock) return matches(old, parent_uid, tokens, salt_hash) ? old : b;
  insert(b, CacheEntry{h, next_cache_uid(), parent_uid, salt_hash, owner, tokens});
  return b;
}

std::vector<BlockId> BlockAllocator::free_list() const {
  std::vector<BlockId> out;
  for (BlockId b = head_; b != kNoBlock; b = meta_[b].next) out.push_back(b);
  return out;
}

void BlockAllocator::check() const {
  int n_free = 0;
  BlockId prev = kNoBlock;
  for (BlockId b = head_; b != kNoBlock; b = meta_[b].next) {
    if (meta_[b].ref != 0) throw std::logic_error("block in free list with refs");
    if (meta_[b].prev != prev) throw std::logic_error("free list links broken");
    prev = b;
    if (++n_free > num_blocks()) throw std::logic_error("free list cycle");
  }
  if (n_free != num_free_) throw std::logic_error("free count mismatch");
  for (BlockId b = 0; b < num_blocks(); ++b) {
    const Meta& m = meta_[b];
    if (m.ref < 0) throw std::logic_error("negative ref count");
    if ((m.ref == 0) != m.in_free_list) throw std::logic_error("ref/free-list disagreement");
  }
  int n_valid = 0;
  for (BlockId b = 0; b < num_blocks(); ++b) n_valid += meta_[b].hash_valid;
  if (n_valid != cache_.size()) throw std::logic_error("cached blocks missing from the map");
  cache_.for_each([&](uint64_t h, BlockId b) {
    if (b < 0 || b >= num_blocks()) throw std::logic_error("cache map holds a bad block id");
    if (!meta_[b].hash_valid || meta_[b].hash != h) throw std::logic_error("cache map stale");
    if (meta_[b].uid == 0) throw std::logic_error("cached block without uid");
  });
  for (BlockId b = 0; b < num_blocks(); ++b) {
    if (meta_[b].hash_valid && cache_.find(meta_[b].hash) != b)
      throw std::logic_error("cached block not reachable through the map");
  }
}

}  // namespace pyserve

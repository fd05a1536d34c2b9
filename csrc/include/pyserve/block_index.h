// The prefix cache's index: chained block hash -> the block that holds that content.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "pyserve/types.h"

namespace pyserve {

/// A hash -> block map with linear probing over one flat array: no allocation per entry and
/// usually one cache line per probe (it replaced std::unordered_map, whose node per entry made
/// prefix lookups, registrations and evictions the simulator's largest cost).
///
/// NOTE: capacity is a power of two of at least twice `max_entries` (a pool caches at most one
/// entry per block), so the load factor stays <= 1/2. Erase shifts the rest of the probe run
/// back (no tombstones), so a lookup never scans more than the run its key hashes into.
class BlockIndex {
 public:
  explicit BlockIndex(int max_entries);

  /// The block stored under `key`, or kNoBlock.
  BlockId find(uint64_t key) const;
  bool contains(uint64_t key) const { return find(key) != kNoBlock; }
  /// Stores key -> b and returns true; returns false (unchanged) when `key` is present.
  bool insert(uint64_t key, BlockId b);
  /// Removes `key` if it maps to `b`; returns whether it did.
  bool erase(uint64_t key, BlockId b);
  int size() const { return size_; }
  /// Calls f(key, block) for every entry (in no particular order).
  template <class F>
  void for_each(F f) const {
    for (const Slot& s : slots_)
      if (s.block != kNoBlock) f(s.key, s.block);
  }

 private:
  struct Slot {
    uint64_t key = 0;
    BlockId block = kNoBlock;  // kNoBlock: empty slot
  };
  // Fibonacci hashing: the top bits of key * golden ratio, so structured keys (a small
  // prefix_hash_mask) still spread over the table.
  size_t home(uint64_t key) const { return size_t((key * 0x9e3779b97f4a7c15ULL) >> shift_); }
  size_t probe(uint64_t key) const;  // the slot holding key, or the empty slot ending its run

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 0;
  int size_ = 0;
};

}  // namespace pyserve

#include "pyserve/block_index.h"

#include <stdexcept>

namespace pyserve {

BlockIndex::BlockIndex(int max_entries) {
  if (max_entries < 0) throw std::invalid_argument("BlockIndex: max_entries must be >= 0");
  int bits = 1;
  while ((size_t(1) << bits) < 2 * size_t(max_entries)) ++bits;
  slots_.resize(size_t(1) << bits);
  mask_ = slots_.size() - 1;
  shift_ = 64 - bits;
}

size_t BlockIndex::probe(uint64_t key) const {
  size_t i = home(key);
  while (slots_[i].block != kNoBlock && slots_[i].key != key) i = (i + 1) & mask_;
  return i;
}

BlockId BlockIndex::find(uint64_t key) const { return slots_[probe(key)].block; }

bool BlockIndex::insert(uint64_t key, BlockId b) {
  Slot& s = slots_[probe(key)];
  if (s.block != kNoBlock) return false;
  if (2 * size_t(size_ + 1) > slots_.size()) throw std::logic_error("BlockIndex over capacity");
  s.key = key;
  s.block = b;
  ++size_;
  return true;
}

bool BlockIndex::erase(uint64_t key, BlockId b) {
  size_t i = probe(key);
  if (slots_[i].block == kNoBlock || slots_[i].block != b) return false;
  // Backward shift: an entry later in the run moves into the hole unless its home lies
  // cyclically in (hole, its slot], where moving it would put it before its home.
  for (size_t j = (i + 1) & mask_; slots_[j].block != kNoBlock; j = (j + 1) & mask_) {
    if (((j - home(slots_[j].key)) & mask_) >= ((j - i) & mask_)) {
      slots_[i] = slots_[j];
      i = j;
    }
  }
  slots_[i] = Slot{};
  --size_;
  return true;
}

}  // namespace pyserve

// Phase 2 of a step: bring back swapped requests and admit waiting ones, best key first.
#include <algorithm>

#include "pyserve/scheduler.h"

namespace pyserve {

void Scheduler::schedule_admissions() {
  while (budget_ >= 1 && int(decodes_.size() + prefills_.size()) < cfg_.max_num_seqs &&
         int(running_.size()) < cfg_.max_num_seqs) {
    const bool from_swapped =
        !swapped_.empty() && (waiting_.empty() || *swapped_.begin() < *waiting_.begin());
    if (!from_swapped && waiting_.empty()) return;
    Request& r = req((from_swapped ? swapped_ : waiting_).begin()->second);
    // Stop at the first request that does not fit: later ones must not jump the order.
    if (!(from_swapped ? admit_swapped(r) : admit_waiting(r))) return;
  }
}

void Scheduler::prefix_lookup(Request& r) {
  const int bs = cfg_.block_size;
  std::vector<BlockId> hits;
  std::vector<uint64_t> hashes;
  gpu_.lookup(r.tokens.data(), r.num_tokens(), r.salt_hash, &hits, &hashes);
  counters_.prefix_query_tokens += r.num_tokens();
  int cached = int(hits.size()) * bs;
  if (cached >= r.num_tokens()) {
    // At least one token must be computed. The last block is shared and cached, so recompute its
    // last token into a private copy (copy-on-write) rather than the whole block.
    BlockId src = hits.back();
    BlockId dst = gpu_.allocate();
    if (dst == kNoBlock) {
      gpu_.decref(src);
      hits.pop_back();
      hashes.pop_back();
      cached -= bs;
    } else {
      plan_.copy.push_back(src);
      plan_.copy.push_back(dst);
      deferred_decref_.push_back(src);  // NOTE: src must survive until the copy has run
      hits.back() = dst;
      hashes.pop_back();
      cached = r.num_tokens() - 1;
    }
  }
  counters_.prefix_hit_tokens += cached;
  r.num_cached_tokens = cached;
  r.num_computed = cached;
  r.blocks = std::move(hits);
  r.block_hashes = std::move(hashes);
  r.chain_tail = r.block_hashes.empty() ? kNoBlock : r.blocks[r.block_hashes.size() - 1];
  r.chain_tail_gen = r.chain_tail == kNoBlock ? 0 : gpu_.generation(r.chain_tail);
}

bool Scheduler::admit_waiting(Request& r) {
  // NOTE: with no free block nothing can be admitted (cached blocks are full, so the first token
  // to compute always needs a fresh block); skip the prefix lookup it would undo.
  if (gpu_.num_free() == 0) return false;
  if (cfg_.enable_prefix_caching && r.blocks.empty()) prefix_lookup(r);
  int n = std::min(r.remaining_to_compute(), budget_);
  if (!grow(r, &n, true)) {
    // Undo the lookup; a planned copy for this request is dropped with it.
    if (!plan_.copy.empty() && !r.blocks.empty() && plan_.copy.back() == r.blocks.back()) {
      plan_.copy.resize(plan_.copy.size() - 2);
    }
    free_gpu_blocks(r);
    return false;
  }
  start_running(waiting_, r, n);
  return true;
}

bool Scheduler::admit_swapped(Request& r) {
  const int bs = cfg_.block_size;
  int n = std::min(r.remaining_to_compute(), budget_);
  int need = std::max(int(r.cpu_blocks.size()), (r.num_computed + n + bs - 1) / bs);
  if (need > gpu_.num_free()) return false;
  for (BlockId c : r.cpu_blocks) {
    BlockId g = gpu_.allocate();
    plan_.swap_in.push_back(c);
    plan_.swap_in.push_back(g);
    cpu_.free(c);  // NOTE: safe: swap-outs of this step were all planned before any swap-in
    r.blocks.push_back(g);
  }
  counters_.blocks_swapped_in += int64_t(r.cpu_blocks.size());
  r.cpu_blocks.clear();
  // The new GPU blocks are not in the prefix cache; registering them again re-links the chain.
  r.block_hashes.clear();
  r.chain_tail = kNoBlock;
  grow(r, &n, false);
  start_running(swapped_, r, n);
  return true;
}

void Scheduler::start_running(Queue& from, Request& r, int num_tokens) {
  dequeue(from, r);
  leave_queue(r);
  r.status = Status::kRunning;
  r.protected_until_step = plan_.step + cfg_.min_steps_between_preemptions;
  running_.push_back(r.id);
  emit(r, num_tokens);
}

}  // namespace pyserve

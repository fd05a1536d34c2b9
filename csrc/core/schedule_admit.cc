// Phase 2 of a step: bring back swapped requests and admit waiting ones, best key first.
#include <algorithm>

#include "pyserve/scheduler.h"

namespace pyserve {

void Scheduler::schedule_admissions() {
  while (budget_ >= 1 && int(decodes_.size() + prefills_.size()) < cfg_.max_num_seqs &&
         int(running_.size()) < cfg_.max_num_seqs) {
    const bool from_swapped =
        !swapped_.empty() && (waiting_.empty() || *swapped_.begin() < *waiting_.begin());
    if (!from_swapped && waiting_.empty()) break;
    Request& r = req((from_swapped ? swapped_ : waiting_).begin()->second);
    // Stop at the first request that does not fit: later ones must not jump the order.
    if (!(from_swapped ? admit_swapped(r) : admit_waiting(r))) break;
  }
  prefetch_waiting();
}

void Scheduler::prefix_lookup(Request& r) {
  const int bs = cfg_.block_size;
  std::vector<BlockId> hits;
  std::vector<uint64_t> uids;
  const auto& hs = chain_hashes(r);
  uint64_t parent_uid = 0;
  int from_host = 0;
  // NOTE: each level is looked up on the GPU, then on the host tier (a hit there is copied back
  // by this step's swap-ins); the parent is named by uid, which a block keeps across tiers.
  for (size_t i = 0; i < hs.size(); ++i) {
    const TokenId* blk = &r.tokens[i * bs];
    BlockId g = gpu_.match(hs[i], parent_uid, blk, r.salt_hash);
    uint64_t uid = 0;
    if (g != kNoBlock) {
      gpu_.incref(g);
      uid = gpu_.uid(g);
    } else {
      g = load_from_host(hs[i], parent_uid, blk, r.salt_hash, &uid);
      if (g == kNoBlock) break;
      ++from_host;
    }
    hits.push_back(g);
    uids.push_back(uid);
    parent_uid = uid;
  }
  counters_.prefix_query_tokens += r.num_tokens();
  counters_.blocks_loaded += from_host;
  counters_.host_hit_tokens += int64_t(from_host) * bs;
  int cached = int(hits.size()) * bs;
  if (cached >= r.num_tokens()) {
    // At least one token must be computed. The last block is shared and cached, so recompute its
    // last token into a private copy (copy-on-write) rather than the whole block.
    BlockId src = hits.back();
    BlockId dst = gpu_.allocate();
    if (dst == kNoBlock) {
      gpu_.decref(src);
      hits.pop_back();
      uids.pop_back();
      cached -= bs;
    } else {
      plan_.copy.push_back(src);
      plan_.copy.push_back(dst);
      deferred_decref_.push_back(src);  // NOTE: src must survive until the copy has run
      hits.back() = dst;
      uids.pop_back();
      cached = r.num_tokens() - 1;
    }
  }
  counters_.prefix_hit_tokens += cached;
  r.num_cached_tokens = cached;
  r.num_computed = cached;
  r.num_registered = int(uids.size());
  r.blocks = std::move(hits);
  r.chain_tail_uid = uids.empty() ? 0 : uids.back();
}

bool Scheduler::admit_waiting(Request& r) {
  // NOTE: with no free block nothing can be admitted (cached blocks are full, so the first token
  // to compute always needs a fresh block); skip the prefix lookup it would undo.
  if (!ensure_free(1)) return false;
  if (cfg_.enable_prefix_caching && r.blocks.empty()) prefix_lookup(r);
  int n = std::min(r.remaining_to_compute(), budget_);
  if (!grow(r, &n, true)) {
    // Undo the lookup; a planned copy for this request is dropped with it.
    if (!plan_.copy.empty() && !r.blocks.empty() && plan_.copy.back() == r.blocks.back()) {
      plan_.copy.resize(plan_.copy.size() - 2);
    }
    // NOTE: host-tier loads stay planned: their GPU blocks stay cached with the copied KV.
    free_gpu_blocks(r);
    return false;
  }
  if (!pins_.empty() && r.tagged()) release_pin(r.spec.program_id);  // now it holds them
  start_running(waiting_, r, n);
  return true;
}

bool Scheduler::admit_swapped(Request& r) {
  const int bs = cfg_.block_size;
  int n = std::min(r.remaining_to_compute(), budget_);
  int need = std::max(int(r.cpu_blocks.size()), (r.num_computed + n + bs - 1) / bs);
  if (!ensure_free(need)) return false;
  for (BlockId c : r.cpu_blocks) {
    BlockId g = gpu_.allocate();
    plan_.swap_in.push_back(c);
    plan_.swap_in.push_back(g);
    cpu_deferred_.push_back(c);  // NOTE: released after the step: offloads may follow this
    r.blocks.push_back(g);
  }
  counters_.blocks_swapped_in += int64_t(r.cpu_blocks.size());
  r.cpu_blocks.clear();
  // The new GPU blocks are not in the prefix cache; registering them again re-links the chain.
  r.num_registered = 0;
  r.chain_tail_uid = 0;
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

// Preemption: by recompute (free the blocks) or by swap (move them to the CPU pool).
#include <stdexcept>

#include "pyserve/scheduler.h"

namespace pyserve {

SeqId Scheduler::pick_victim(bool respect_protection) {
  const int64_t step = plan_.step;
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    const Request& r = req(*it);
    if (r.status != Status::kRunning || r.last_scheduled_step == step) continue;
    if (respect_protection && r.protected_until_step > step) continue;
    return *it;
  }
  if (respect_protection) return -1;
  throw std::logic_error("no preemptible request while blocks are short");
}

void Scheduler::free_gpu_blocks(Request& r) {
  // NOTE: last block first, so the LRU free list evicts a sequence's tail before its prefix (an
  // evicted prefix would orphan every cached block after it, on either tier).
  for (auto it = r.blocks.rbegin(); it != r.blocks.rend(); ++it) gpu_.decref(*it);
  r.blocks.clear();
  r.num_registered = 0;
  r.chain_tail_uid = 0;
  r.num_computed = 0;
}

void Scheduler::preempt(Request& r) {
  ++r.num_preemptions;
  preempted_this_step_ = true;
  plan_.preempted.push_back(r.id);
  const bool swap = cfg_.preemption_mode == PreemptionMode::kSwap && !r.blocks.empty() &&
                    cpu_.num_free() >= int(r.blocks.size());
  if (swap) {
    for (BlockId b : r.blocks) {
      BlockId c = cpu_.allocate();
      plan_.swap_out.push_back(b);
      plan_.swap_out.push_back(c);
      r.cpu_blocks.push_back(c);
      gpu_.decref(b);
    }
    counters_.blocks_swapped_out += int64_t(r.blocks.size());
    ++counters_.num_preemptions_swap;
    r.blocks.clear();
    enqueue(swapped_, r);  // keeps num_computed: the K/V live in the CPU blocks
  } else {
    free_gpu_blocks(r);  // full blocks stay in the prefix cache, so recompute often hits
    ++counters_.num_preemptions_recompute;
    enqueue(waiting_, r);
  }
}

void Scheduler::proactive_preemption() {
  // vllm#40004: a better waiting request may displace worse running work when the batch is full,
  // not only under memory pressure. Bounded per step; recently admitted requests are protected.
  int done = 0;
  while (done < cfg_.max_preemptions_per_step) {
    const Queue* q = nullptr;
    if (!waiting_.empty()) q = &waiting_;
    if (!swapped_.empty() && (!q || *swapped_.begin() < *waiting_.begin())) q = &swapped_;
    if (!q) return;
    const Request& cand = req(q->begin()->second);
    int want = q == &swapped_
                   ? int(cand.cpu_blocks.size()) + 1
                   : (std::min(cand.remaining_to_compute(), budget_) + cfg_.block_size - 1) /
                         cfg_.block_size;
    bool full = int(running_.size()) >= cfg_.max_num_seqs || !ensure_free(want);
    if (!full) return;
    SeqId v = pick_victim(true);
    if (v < 0 || !(policy_->preempt_class(cand) < policy_->preempt_class(req(v)))) return;
    preempt(req(v));
    compact_running();
    ++done;
  }
}

}  // namespace pyserve

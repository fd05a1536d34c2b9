// Phase 1 of a step: running requests, decodes first, then continuing prefill chunks.
#include <algorithm>

#include "pyserve/scheduler.h"

namespace pyserve {

namespace {
inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
}  // namespace

bool Scheduler::grow(Request& r, int* num_tokens, bool allow_partial) {
  const int bs = cfg_.block_size;
  const int have = static_cast<int>(r.blocks.size());
  int need = std::max(0, ceil_div(r.num_computed + *num_tokens, bs) - have);
  if (!ensure_free(need)) {
    if (!allow_partial) return false;
    int fit = (have + gpu_.num_free()) * bs - r.num_computed;
    if (fit < 1) return false;
    *num_tokens = std::min(*num_tokens, fit);
    need = std::max(0, ceil_div(r.num_computed + *num_tokens, bs) - have);
  }
  for (int i = 0; i < need; ++i) r.blocks.push_back(gpu_.allocate());
  return true;
}

void Scheduler::compact_running() {
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [&](SeqId id) { return req(id).status != Status::kRunning; }),
                 running_.end());
}

void Scheduler::schedule_running() {
  const int64_t step = plan_.step;
  // Stall-free budget: every running decode has one token reserved before any prefill chunk.
  int pending_decodes = 0;
  for (SeqId id : running_) pending_decodes += req(id).is_decode();
  // NOTE: running_ is best-first and memory goes in that order; victims come from the worst end
  // among requests not yet emitted, so a request never loses its blocks to a worse one. The plan
  // still lists decodes first (build_plan keeps two lists).
  for (size_t i = 0; i < running_.size() && budget_ >= 1; ++i) {
    Request& r = req(running_[i]);
    if (r.status != Status::kRunning || r.last_scheduled_step == step) continue;
    const bool decode = r.is_decode();
    int n = decode ? 1 : std::min(r.remaining_to_compute(), budget_ - pending_decodes);
    if (n < 1) continue;
    while (!grow(r, &n, !decode)) {
      SeqId v = pick_victim(false);
      pending_decodes -= req(v).is_decode();
      preempt(req(v));
      if (v == r.id) break;
    }
    if (r.status != Status::kRunning) continue;
    pending_decodes -= decode;
    emit(r, n);
  }
  compact_running();
}

}  // namespace pyserve

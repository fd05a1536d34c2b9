// Consistency checks run by the tests after every step: nothing leaks, nothing is shared wrongly.
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "pyserve/scheduler.h"

namespace pyserve {

namespace {
void ensure(bool ok, const std::string& msg) {
  if (!ok) throw std::logic_error("invariant broken: " + msg);
}
}  // namespace

void Scheduler::check_invariants() const {
  gpu_.check();
  cpu_.check();
  std::vector<int> refs(gpu_.num_blocks(), 0);
  std::vector<int> cpu_refs(cpu_.num_blocks(), 0);
  std::vector<bool> cpu_held(cpu_.num_blocks(), false);
  int n_running = 0, n_waiting = 0, n_swapped = 0;
  for (const auto& slot : slots_) {
    if (!slot) continue;
    const Request& r = *slot;
    const std::string who = "request '" + r.spec.request_id + "' ";
    switch (r.status) {
      case Status::kRunning:
        ++n_running;
        break;
      case Status::kWaiting:
        ++n_waiting;
        break;
      case Status::kSwapped:
        ++n_swapped;
        break;
      case Status::kFinished:
        ensure(r.blocks.empty() && r.cpu_blocks.empty(), who + "finished but holds blocks");
        continue;
    }
    ensure(r.status == Status::kRunning || r.blocks.empty(), who + "holds GPU blocks off-GPU");
    ensure(r.status == Status::kSwapped || r.cpu_blocks.empty(), who + "holds CPU blocks");
    ensure(r.status != Status::kSwapped || !r.cpu_blocks.empty(), who + "swapped without blocks");
    const int bs = cfg_.block_size;
    ensure(int(r.blocks.size()) * bs >= r.num_computed || r.status != Status::kRunning,
           who + "computed tokens exceed its blocks");
    ensure(r.num_computed <= r.num_tokens(), who + "computed past its tokens");
    for (BlockId b : r.blocks) ++refs[b];
    for (BlockId c : r.cpu_blocks) {
      ensure(!cpu_held[c] && cpu_.ref_count(c) > 0, who + "CPU block shared or free");
      ensure(!cpu_.is_cached(c), who + "swap block is also a host-tier cache entry");
      cpu_held[c] = true;
      ++cpu_refs[c];
    }
  }
  for (BlockId b : deferred_decref_) ++refs[b];
  for (BlockId c : cpu_deferred_) ++cpu_refs[c];
  for (const auto& [key, pin] : pins_) {
    for (BlockId b : pin.blocks) {
      ensure(gpu_.is_cached(b), "pin of '" + key + "' holds an uncached block");
      ++refs[b];
    }
  }
  int used = 0;
  for (BlockId b = 0; b < gpu_.num_blocks(); ++b) {
    ensure(refs[b] == gpu_.ref_count(b), "block " + std::to_string(b) + " ref count " +
                                             std::to_string(gpu_.ref_count(b)) + " but " +
                                             std::to_string(refs[b]) + " owners");
    used += refs[b] > 0;
  }
  ensure(used + gpu_.num_free() == gpu_.num_blocks(), "free + used != total");
  int cpu_used = 0;
  for (BlockId c = 0; c < cpu_.num_blocks(); ++c) {
    ensure(cpu_refs[c] == cpu_.ref_count(c), "host block " + std::to_string(c) + " ref count " +
                                                 std::to_string(cpu_.ref_count(c)) + " but " +
                                                 std::to_string(cpu_refs[c]) + " owners");
    cpu_used += cpu_refs[c] > 0;
  }
  ensure(cpu_used + cpu_.num_free() == cpu_.num_blocks(), "CPU free + used != total");
  // Both tiers: one uid names one content, so a uid cached on both tiers has one hash.
  std::unordered_map<uint64_t, uint64_t> uid_hash;
  for (BlockId b = 0; b < gpu_.num_blocks(); ++b)
    if (gpu_.is_cached(b)) uid_hash.emplace(gpu_.uid(b), gpu_.entry(b).hash);
  for (BlockId c = 0; c < cpu_.num_blocks(); ++c) {
    if (!cpu_.is_cached(c)) continue;
    auto it = uid_hash.find(cpu_.uid(c));
    ensure(it == uid_hash.end() || it->second == cpu_.entry(c).hash,
           "uid " + std::to_string(cpu_.uid(c)) + " names different contents on the two tiers");
  }
  ensure(n_running == int(running_.size()), "running list out of sync");
  ensure(n_waiting == int(waiting_.size()), "waiting queue out of sync");
  ensure(n_swapped == int(swapped_.size()), "swapped queue out of sync");
}

}  // namespace pyserve

// Randomized scheduler scenarios under AddressSanitizer + UndefinedBehaviorSanitizer (ctest).
// Random arrivals, lengths, aborts (also mid-step) and preemptions in both modes; invariants are
// checked after every step and the pool must be empty at the end.
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "pyserve/block_allocator.h"
#include "pyserve/scheduler.h"

using namespace pyserve;

namespace {

int run_case(uint64_t seed, PreemptionMode mode, const std::string& policy, bool prefix,
             uint64_t hash_mask) {
  std::mt19937_64 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  SchedulerConfig cfg;
  cfg.num_gpu_blocks = uni(10, 40);
  cfg.num_cpu_blocks = uni(0, 40);
  cfg.block_size = 4;
  cfg.max_num_batched_tokens = uni(8, 48);
  cfg.max_num_seqs = uni(2, 8);
  cfg.max_model_len = 40;
  cfg.preemption_mode = mode;
  cfg.policy = policy;
  cfg.enable_prefix_caching = prefix;
  cfg.prefix_hash_mask = hash_mask;
  cfg.min_steps_between_preemptions = uni(0, 3);
  Scheduler s(cfg, {0});
  std::vector<std::string> live;
  int next = 0;
  for (int stepno = 0; stepno < 2000; ++stepno) {
    if (uni(0, 9) < 3) {
      RequestSpec spec;
      spec.request_id = "r" + std::to_string(next);
      int n = uni(1, 30), base = uni(0, 2);
      for (int i = 0; i < n; ++i) spec.prompt.push_back((i + base * 1000) % 50 + 1);
      spec.max_tokens = uni(1, 20);
      spec.priority = uni(0, 2);
      spec.arrival_time = next;
      s.add_request(spec);
      live.push_back(spec.request_id);
      ++next;
    }
    if (!live.empty() && uni(0, 99) < 5) {
      size_t k = uni(0, int(live.size()) - 1);
      if (s.find(live[k]) >= 0) s.abort(live[k]);
      live.erase(live.begin() + k);
    }
    const StepPlan& p = s.schedule();
    if (p.num_tokens() > cfg.max_num_batched_tokens) throw std::logic_error("budget exceeded");
    if (!live.empty() && uni(0, 99) < 2) {
      const std::string& rid = live[uni(0, int(live.size()) - 1)];
      if (s.find(rid) >= 0) {  // mid-step: a client abort or a stop string matched by the client
        FinishedCall f = uni(0, 1) ? s.abort(rid) : s.finish(rid, FinishReason::kStop);
        if (f.request_id != rid || f.service < 0.0) throw std::logic_error("bad finished call");
      }
    }
    std::vector<int32_t> sampled(p.sample_seq_idx.size());
    for (auto& t : sampled) t = uni(0, 59);
    const StepReport& rep = s.update(sampled.data(), int(sampled.size()), 0.001);
    if (rep.tokens.size() != rep.token_seq_ids.size() || rep.tokens.size() > sampled.size())
      throw std::logic_error("report rows do not match the sampled rows");
    for (const FinishedCall& f : rep.finished)
      if (s.find(f.request_id) >= 0) throw std::logic_error("a finished call is still findable");
    s.check_invariants();
  }
  for (const auto& rid : live)
    if (s.find(rid) >= 0) s.abort(rid);
  s.schedule();
  s.update(nullptr, 0, 0.0);
  s.check_invariants();
  if (s.stats().gpu_blocks_free != cfg.num_gpu_blocks) throw std::logic_error("blocks leaked");
  return 0;
}

void collision_case() {
  BlockAllocator a(32, 4, 0x3);
  std::vector<std::vector<TokenId>> seqs;
  for (int i = 0; i < 12; ++i) seqs.push_back({i, i + 1, i + 2, i + 3});
  std::vector<BlockId> owner(32, -1);
  for (size_t i = 0; i < seqs.size(); ++i) {
    BlockId b = a.allocate();
    uint64_t h = 0;
    a.register_block(b, kNoBlock, 0, seqs[i].data(), 0, &h);
    owner[b] = int(i);
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    std::vector<BlockId> hits;
    std::vector<uint64_t> hashes;
    a.lookup(seqs[i].data(), 4, 0, &hits, &hashes);
    for (BlockId b : hits) {
      if (owner[b] != int(i)) throw std::logic_error("collision aliased different tokens");
      a.decref(b);
    }
  }
  a.check();
}

}  // namespace

int main() {
  int cases = 0;
  collision_case();
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    for (auto mode : {PreemptionMode::kRecompute, PreemptionMode::kSwap}) {
      const char* policy = seed % 2 ? "fcfs" : "priority";
      uint64_t mask = seed % 3 == 0 ? 0x7 : ~uint64_t{0};
      run_case(seed, mode, policy, seed % 4 != 1, mask);
      ++cases;
    }
  }
  std::printf("%d randomized scheduler cases passed\n", cases);
  return 0;
}

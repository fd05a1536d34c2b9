// Randomized scheduler scenarios under AddressSanitizer + UndefinedBehaviorSanitizer (ctest).
// Random arrivals, lengths, aborts (also mid-step) and preemptions in both modes; invariants are
// checked after every step and the pool must be empty at the end.
#include <algorithm>
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

// Sessions over the host tier: programs whose calls extend their previous context, every
// retention policy, pins, offload/load/prefetch. A shadow copy of the KV (one token id per slot,
// moved by the plan's swap-out, swap-in and copy pairs, written through slot_mapping) must hold
// exactly each scheduled sequence's tokens at every position it attends to.
int session_case(uint64_t seed, const std::string& retention, uint64_t hash_mask) {
  std::mt19937_64 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  SchedulerConfig cfg;
  cfg.num_gpu_blocks = uni(12, 30);
  cfg.num_cpu_blocks = uni(0, 3) == 0 ? 0 : uni(4, 60);
  cfg.block_size = 4;
  cfg.max_num_batched_tokens = uni(8, 32);
  cfg.max_num_seqs = uni(2, 6);
  cfg.max_model_len = 48;
  cfg.preemption_mode = uni(0, 1) ? PreemptionMode::kSwap : PreemptionMode::kRecompute;
  cfg.kv_retention = retention;
  cfg.prefix_hash_mask = hash_mask;
  cfg.retention_ttl_max_s = 0.05;
  cfg.retention_prefetch_blocks = uni(0, 8);
  Scheduler s(cfg, {0});
  const int bs = cfg.block_size;
  std::vector<TokenId> gpu_kv(size_t(cfg.num_gpu_blocks) * bs, -1);
  std::vector<TokenId> cpu_kv(size_t(cfg.num_cpu_blocks) * bs, -1);
  auto move = [&](const std::vector<int32_t>& pairs, std::vector<TokenId>& from,
                  std::vector<TokenId>& to) {
    for (size_t i = 0; i + 1 < pairs.size(); i += 2)
      std::copy_n(&from[size_t(pairs[i]) * bs], bs, &to[size_t(pairs[i + 1]) * bs]);
  };
  std::vector<std::vector<TokenId>> context(6);  // per program: its last prompt + output
  std::vector<std::string> live;
  int next = 0;
  for (int stepno = 0; stepno < 1500; ++stepno) {
    if (uni(0, 9) < 3) {
      const int p = uni(0, 5);
      RequestSpec spec;
      spec.request_id = "c" + std::to_string(next++);
      spec.program_id = "p" + std::to_string(p);
      spec.prompt = context[p].size() + 8 > 40 ? std::vector<TokenId>{} : context[p];
      for (int i = uni(1, 8); i > 0; --i) spec.prompt.push_back(uni(1, 30));
      spec.max_tokens = uni(1, 6);
      spec.arrival_time = s.now();
      s.add_request(spec);
      if (uni(0, 1)) s.mark_coming_back(spec.program_id);
      live.push_back(spec.request_id);
    }
    if (uni(0, 99) < 2) {
      const std::string pid = "p" + std::to_string(uni(0, 5));
      if (s.programs().contains(pid)) s.end_program(pid);
    }
    const StepPlan& plan = s.schedule();
    move(plan.swap_out, gpu_kv, cpu_kv);
    move(plan.swap_in, cpu_kv, gpu_kv);
    move(plan.copy, gpu_kv, gpu_kv);
    for (int t = 0; t < plan.num_tokens(); ++t) gpu_kv[plan.slot_mapping[t]] = plan.input_ids[t];
    for (int i = 0; i < plan.num_seqs(); ++i) {
      const Request& r = s.request(plan.seq_ids[i]);
      for (int t = 0; t < plan.seq_lens[i]; ++t) {
        BlockId b = plan.kv_indices[plan.kv_indptr[i] + t / bs];
        if (gpu_kv[size_t(b) * bs + t % bs] != r.tokens[t])
          throw std::logic_error("KV of '" + r.spec.request_id + "' wrong at position " +
                                 std::to_string(t) + " (retention " + retention + ")");
      }
    }
    std::vector<int32_t> sampled(plan.sample_seq_idx.size());
    for (auto& t : sampled) t = uni(1, 30);
    for (size_t j = 0; j < sampled.size(); ++j) {
      const Request& r = s.request(plan.seq_ids[plan.sample_seq_idx[j]]);
      if (r.num_output() + 1 >= r.spec.max_tokens) {
        std::vector<TokenId> ctx = r.tokens;
        ctx.push_back(sampled[j]);
        context[r.spec.program_id[1] - '0'] = ctx;
      }
    }
    s.update(sampled.data(), int(sampled.size()), 0.001 * uni(1, 10));
    s.check_invariants();
  }
  for (const auto& rid : live)
    if (s.find(rid) >= 0) s.abort(rid);
  s.release_all_pins();
  s.schedule();
  s.update(nullptr, 0, 0.0);
  s.check_invariants();
  if (s.stats().gpu_blocks_free != cfg.num_gpu_blocks) throw std::logic_error("GPU blocks leaked");
  if (s.stats().cpu_blocks_free != cfg.num_cpu_blocks) throw std::logic_error("host blocks leaked");
  return int(s.stats().blocks_loaded + s.stats().blocks_prefetched);
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
  int64_t loaded = 0;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    for (const char* retention : {"lru", "ttl", "program"}) {
      loaded += session_case(seed, retention, seed % 3 == 0 ? 0x7 : ~uint64_t{0});
      ++cases;
    }
  }
  if (loaded == 0) throw std::logic_error("no session case loaded a block from the host tier");
  std::printf("%d randomized scheduler cases passed (%lld host-tier blocks loaded)\n", cases,
              static_cast<long long>(loaded));
  return 0;
}

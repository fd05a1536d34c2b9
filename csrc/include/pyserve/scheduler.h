// Continuous-batching scheduler with stall-free chunked prefill, prefix caching and preemption.
#pragma once
#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pyserve/block_allocator.h"
#include "pyserve/config.h"
#include "pyserve/policy.h"
#include "pyserve/program_table.h"
#include "pyserve/request.h"
#include "pyserve/retention.h"
#include "pyserve/step_plan.h"

namespace pyserve {

struct SchedulerStats {
  int num_running = 0, num_waiting = 0, num_swapped = 0;
  int gpu_blocks_free = 0, gpu_blocks_total = 0, gpu_blocks_cached = 0;
  int cpu_blocks_free = 0, cpu_blocks_total = 0;
  int64_t num_preemptions_recompute = 0, num_preemptions_swap = 0;
  int64_t blocks_swapped_out = 0, blocks_swapped_in = 0;
  int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0;
  // Host tier of the prefix cache: hit tokens served from it, blocks moved GPU -> host on
  // eviction, host -> GPU on a hit (loaded) or ahead of admission (prefetched); pinned blocks.
  int64_t host_hit_tokens = 0, blocks_offloaded = 0, blocks_loaded = 0, blocks_prefetched = 0;
  int cpu_blocks_cached = 0, gpu_blocks_pinned = 0;
  int64_t num_steps = 0;
  int64_t num_finished_stop = 0, num_finished_length = 0, num_finished_abort = 0;
};

class Scheduler {
 public:
  /// Throws std::invalid_argument for an invalid config. `programs` may be shared by several
  /// schedulers (one router); null creates a private table.
  Scheduler(const SchedulerConfig& cfg, std::vector<TokenId> eos_token_ids,
            std::shared_ptr<ProgramTable> programs = nullptr);

  /// Validates and enqueues a request; returns its dense id. Throws std::invalid_argument for a
  /// duplicate id, empty prompt or a prompt longer than max_model_len (state unchanged).
  SeqId add_request(RequestSpec spec);
  /// Aborts a request in any state and frees its blocks. Throws for an unknown id.
  FinishedCall abort(const std::string& request_id) {
    return finish(request_id, FinishReason::kAbort);
  }
  /// Ends a request in any state with `reason` (kStop when the client matched a stop string);
  /// frees its blocks. Throws std::invalid_argument for an unknown id or reason kNone.
  FinishedCall finish(const std::string& request_id, FinishReason reason);

  /// Builds the next step. The returned plan is valid until the next call.
  const StepPlan& schedule();
  /// Consumes the step's sampled tokens (one per sample row, in plan order) and its duration;
  /// returns the step's report (valid until the next update()).
  const StepReport& update(const int32_t* sampled, int num_sampled, double step_seconds);

  /// Programs (sessions): explicit start / end; calls may also start them implicitly.
  void start_program(const std::string& id) { programs_->start(id, now_); }
  void end_program(const std::string& id);
  /// The program's current call ends in a tool call: it will be back (retention policies).
  bool mark_coming_back(const std::string& id) { return programs_->mark_coming_back(id); }
  const ProgramTable& programs() const { return *programs_; }
  std::shared_ptr<ProgramTable> program_table() const { return programs_; }
  /// Moves the clock forward to t (wall-clock executors); never backwards.
  void advance_clock(double t) { now_ = std::max(now_, t); }

  const Request& request(SeqId id) const;
  SeqId find(const std::string& request_id) const;
  bool has_unfinished() const {
    return !running_.empty() || !waiting_.empty() || !swapped_.empty();
  }
  SchedulerStats stats() const;
  const SchedulerConfig& config() const { return cfg_; }
  const BlockAllocator& allocator() const { return gpu_; }
  const BlockAllocator& host_allocator() const { return cpu_; }
  const Retention& retention() const { return *retention_; }
  /// Releases every pin (the KV becomes ordinary evictable cache).
  void release_all_pins();
  const Policy& policy() const { return *policy_; }
  double now() const { return now_; }
  /// Throws std::logic_error if any allocator or bookkeeping invariant is broken.
  void check_invariants() const;

 private:
  using Queue = std::set<std::pair<Key, SeqId>>;
  Request& req(SeqId id) { return *slots_[id]; }
  Key make_key(const Request& r) const;
  // scheduler.cc (with the public lifecycle above)
  void enqueue(Queue& q, Request& r);
  void dequeue(Queue& q, Request& r);
  void refresh_queued();
  void leave_queue(Request& r);

  // schedule_running.cc
  void schedule_running();
  bool grow(Request& r, int* num_tokens, bool allow_partial);
  void compact_running();
  // schedule_admit.cc
  void schedule_admissions();
  bool admit_waiting(Request& r);
  bool admit_swapped(Request& r);
  void start_running(Queue& from, Request& r, int num_tokens);
  void prefix_lookup(Request& r);
  // preempt.cc
  void proactive_preemption();
  void preempt(Request& r);
  SeqId pick_victim(bool respect_protection);
  void free_gpu_blocks(Request& r);
  // kv_tier.cc
  void on_gpu_evict(BlockId g, const CacheEntry& e);
  BlockId load_from_host(uint64_t h, uint64_t parent_uid, const TokenId* blk, uint64_t salt,
                         uint64_t* uid);
  const std::vector<uint64_t>& chain_hashes(Request& r);
  void prefetch_waiting();
  RetentionView view_of(const std::string& program_id, int context_tokens) const;
  RetentionView view_of(const ProgramEntry* program, int context_tokens) const;
  void pin_finished(Request& r);
  void release_pin(const std::string& key);
  void expire_pins();
  bool ensure_free(int n);
  // step_plan.cc
  void emit(Request& r, int num_tokens);
  void build_plan();
  // update.cc
  void register_full_blocks(Request& r);
  bool check_stop(Request& r, TokenId token);
  void finish(Request& r, FinishReason reason);
  FinishedCall finished_call(const Request& r) const;
  void fill_report(double step_seconds);
  void release_deferred();

  SchedulerConfig cfg_;
  std::vector<TokenId> eos_;
  std::shared_ptr<ProgramTable> programs_;
  std::unique_ptr<Policy> policy_;
  std::unique_ptr<Retention> retention_;
  BlockAllocator gpu_;
  BlockAllocator cpu_;  // host pool: swap space and the host tier of the prefix cache

  std::vector<std::unique_ptr<Request>> slots_;
  std::vector<SeqId> free_slots_, pending_release_;
  std::unordered_map<std::string, SeqId> ids_;
  std::vector<SeqId> running_;  // NOTE: sorted best-first at the start of each step
  Queue waiting_, swapped_;

  // Per-step scratch.
  StepPlan plan_;
  StepReport report_;
  std::vector<std::pair<SeqId, int>> decodes_, prefills_;
  std::vector<BlockId> deferred_decref_;  // copy sources kept alive until the step ran
  std::vector<BlockId> cpu_deferred_;     // host blocks read by this step's swap-ins, likewise
  // Pinned KV of finished calls (retention), per program id. NOTE: each pin holds one reference
  // on each of its blocks.
  struct Pin {
    std::vector<BlockId> blocks;
    double expiry = 0.0;
    double value = 0.0;
  };
  std::unordered_map<std::string, Pin> pins_;
  // hash_string(program id) -> id; "" once end_program ended it (its blocks may be dropped).
  std::unordered_map<uint64_t, std::string> owner_keys_;
  int budget_ = 0;
  bool preempted_this_step_ = false;
  std::vector<std::pair<Key, SeqId>> sort_buf_;

  int64_t arrivals_ = 0;
  double now_ = 0.0;
  double next_collect_ = 0.0;
  SchedulerStats counters_;
};

}  // namespace pyserve

// One LLM call as the core sees it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "pyserve/program_table.h"
#include "pyserve/types.h"

namespace pyserve {

/// What a client supplies when adding a request (validated by Scheduler::add_request).
struct RequestSpec {
  std::string request_id;
  std::vector<TokenId> prompt;
  int max_tokens = 16;
  int min_tokens = 0;
  bool ignore_eos = false;
  std::vector<TokenId> stop_token_ids;
  double priority = 0.0;  // user priority, lower runs earlier
  double arrival_time = 0.0;
  std::string cache_salt;  // isolates prefix-cache entries (e.g. per tenant)
  // Program-aware fields (Autellix). Empty program_id: an untagged call, its own program.
  std::string program_id;
  double ltr_score = 0.0;                // learned-ranking score, lower = predicted shorter
  double remaining_hint = -1.0;          // oracle/hint of remaining work (sjf), < 0 if unknown
  double program_remaining_hint = -1.0;  // program-level remaining work (srpt), < 0 if unknown
};

/// Sort key: lexicographic, lower runs earlier. k1 = arrival, k2 = preemptions, k3 = arrival order.
struct Key {
  double k0 = 0.0;
  double k1 = 0.0;
  int32_t k2 = 0;
  int64_t k3 = 0;
  bool operator<(const Key& o) const {
    if (k0 != o.k0) return k0 < o.k0;
    if (k1 != o.k1) return k1 < o.k1;
    if (k2 != o.k2) return k2 < o.k2;
    return k3 < o.k3;
  }
};

struct Request {
  SeqId id = -1;
  RequestSpec spec;
  uint64_t salt_hash = 0;
  int64_t arrival_seq = 0;      // order of arrival in the core; last tie-break
  std::vector<TokenId> tokens;  // prompt followed by outputs
  int num_prompt = 0;
  int num_computed = 0;             // tokens whose K/V are in the cache
  std::vector<BlockId> blocks;      // GPU block table
  std::vector<BlockId> cpu_blocks;  // CPU block table while swapped
  // NOTE: chained hashes of the full blocks of tokens[0..block_hashes.size()*bs), in order: a
  // function of the tokens alone (which only grow), so each block is hashed once for the whole
  // life of the call (Scheduler::chain_hashes) and both the prefix lookups and the registration of
  // computed blocks read them.
  std::vector<uint64_t> block_hashes;
  int num_registered = 0;  // leading blocks registered in (or found in) the prefix cache
  // Cache-entry uid verified for block num_registered - 1 (on either tier; it may belong to
  // another request); 0 when none.
  uint64_t chain_tail_uid = 0;
  Status status = Status::kWaiting;
  FinishReason finish = FinishReason::kNone;
  int num_preemptions = 0;
  double service = 0.0;  // model-execution seconds charged to this call
  int64_t last_scheduled_step = -1;
  int64_t protected_until_step = -1;  // no proactive preemption before this step (no thrash)
  int num_cached_tokens = 0;          // prefix-cache hit tokens at (last) admission
  bool ever_scheduled = false;        // reported once in StepReport::first_scheduled
  Key key;                            // key under which it sits in the waiting set

  // Program bookkeeping. NOTE: `program` stays valid while the call is active (the table never
  // drops an entry with active calls); an untagged call points at its own `solo` entry, which
  // is never in the table.
  ProgramEntry* program = nullptr;
  ProgramEntry solo;
  bool tagged() const { return !spec.program_id.empty(); }
  double wait_since = 0.0;   // when it last entered the waiting/swapped queue
  double total_wait = 0.0;   // all time spent queued (folded into the program at the end)
  int64_t enqueue_step = 0;  // step at which it last entered a queue

  // Policy state (the policies own its meaning).
  int queue = 0;                 // multi-level queue index
  double queue_service = 0.0;    // service attained in the current queue (quantum accounting)
  double call_wait = 0.0;        // anti-starvation wait counter (reset on promotion)
  double call_service = 0.0;     // anti-starvation service counter (reset on promotion)
  double snapshot = 0.0;         // ATLAS: program critical-path scalar at arrival
  bool first_call = false;       // plas hybrid: its program had no completed call at arrival
  int64_t boost_steps_left = 0;  // ltr: steps left at top priority after starving

  int num_tokens() const { return static_cast<int>(tokens.size()); }
  int num_output() const { return num_tokens() - num_prompt; }
  int remaining_to_compute() const { return num_tokens() - num_computed; }
  bool is_decode() const { return num_computed >= num_prompt && remaining_to_compute() == 1; }
};

/// A call's sort key under a policy's primary value: ties by arrival time, or with
/// `ltr_tie_break` by the learned-ranking score (lower = predicted shorter; arrival order stays
/// the last tie-break through k3).
inline Key make_call_key(double primary, const Request& r, bool ltr_tie_break) {
  return Key{primary, ltr_tie_break ? r.spec.ltr_score : r.spec.arrival_time, r.num_preemptions,
             r.arrival_seq};
}

}  // namespace pyserve

// The flat arrays one scheduler step hands to the executor (see docs/interfaces.md).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "pyserve/types.h"

namespace pyserve {

/// NOTE: sequences are ordered decodes first, then prefill chunks. Buffers are reused across
/// steps; views handed to Python are valid until the next schedule() call.
struct StepPlan {
  int num_decodes = 0;
  int num_prefills = 0;
  std::vector<int32_t> seq_ids;
  std::vector<int32_t> input_ids;
  std::vector<int32_t> positions;
  std::vector<int64_t> slot_mapping;
  std::vector<int32_t> qo_indptr{0};
  std::vector<int32_t> kv_indptr{0};
  std::vector<int32_t> kv_indices;
  std::vector<int32_t> kv_last_page_len;
  std::vector<int32_t> seq_lens;
  std::vector<int32_t> sample_seq_idx;
  std::vector<int32_t> sample_token_idx;
  std::vector<int32_t> swap_out;  // (gpu, cpu) pairs, flattened
  std::vector<int32_t> swap_in;   // (cpu, gpu) pairs, flattened
  std::vector<int32_t> copy;      // (src, dst) pairs, flattened
  std::vector<int32_t> preempted;
  int64_t step = 0;

  int num_seqs() const { return num_decodes + num_prefills; }
  int num_tokens() const { return static_cast<int>(input_ids.size()); }
  void clear();
};

/// A request that left the core (finished, stopped by the client, or aborted), with what the
/// router and the metrics need: its service, its queueing time and its program's values after
/// the call was folded in (the call's own values for an untagged call).
struct FinishedCall {
  SeqId id = -1;
  std::string request_id;
  FinishReason reason = FinishReason::kNone;
  int num_prompt_tokens = 0;
  int num_output_tokens = 0;
  int num_cached_tokens = 0;
  double service = 0.0;
  double wait = 0.0;
  double program_service = 0.0;
  double program_critical = 0.0;
  double program_wait = 0.0;
};

/// Everything one step produced, filled by Scheduler::update() in one call.
/// NOTE: token rows are the plan's sample rows whose request was still running (in plan order);
/// `token_rows[i]` is the sample row of token i. Buffers are reused; valid until the next update.
struct StepReport {
  int64_t step = -1;
  int num_decodes = 0, num_prefills = 0, num_tokens = 0;
  double start_time = 0.0, end_time = 0.0;  // core clock around the step
  std::vector<SeqId> token_seq_ids;
  std::vector<TokenId> tokens;
  std::vector<int32_t> token_rows;
  std::vector<SeqId> first_scheduled;        // requests scheduled for the first time in this step
  std::vector<int32_t> first_cached_tokens;  // their prefix-cache hits (tokens)
  std::vector<SeqId> scheduled;              // every request the step ran (decodes, then prefills)
  std::vector<FinishedCall> finished;
  int gpu_blocks_free = 0, gpu_blocks_total = 0;  // KV headroom after the step
  int num_running = 0, num_waiting = 0, num_swapped = 0;

  int num_seqs() const { return num_decodes + num_prefills; }
  void clear();
};

}  // namespace pyserve

// The flat arrays one scheduler step hands to the executor (see docs/interfaces.md).
#pragma once
#include <cstdint>
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

/// One finished request reported by update() or abort.
struct Finished {
  SeqId id;
  FinishReason reason;
};

}  // namespace pyserve

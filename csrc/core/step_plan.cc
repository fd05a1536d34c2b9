// Phase 3 of a step: lay the chosen sequences out as flat, FlashInfer-ready arrays.
#include "pyserve/step_plan.h"

#include <algorithm>

#include "pyserve/scheduler.h"

namespace pyserve {

void StepPlan::clear() {
  num_decodes = num_prefills = 0;
  for (auto* v : {&seq_ids, &input_ids, &positions, &kv_indices, &kv_last_page_len, &seq_lens,
                  &sample_seq_idx, &sample_token_idx, &swap_out, &swap_in, &copy, &preempted})
    v->clear();
  slot_mapping.clear();
  qo_indptr.assign(1, 0);
  kv_indptr.assign(1, 0);
}

void Scheduler::emit(Request& r, int num_tokens) {
  r.last_scheduled_step = plan_.step;
  budget_ -= num_tokens;
  if (num_tokens == 1 && r.is_decode()) {
    decodes_.emplace_back(r.id, num_tokens);
  } else {
    prefills_.emplace_back(r.id, num_tokens);
  }
}

void Scheduler::build_plan() {
  const int bs = cfg_.block_size;
  plan_.num_decodes = int(decodes_.size());
  plan_.num_prefills = int(prefills_.size());
  for (const auto* list : {&decodes_, &prefills_}) {
    for (const auto& [id, n] : *list) {
      const Request& r = req(id);
      const int idx = int(plan_.seq_ids.size());
      plan_.seq_ids.push_back(id);
      const int start = r.num_computed, end = start + n;
      plan_.input_ids.insert(plan_.input_ids.end(), r.tokens.begin() + start,
                             r.tokens.begin() + end);
      for (int t = start; t < end; ++t) plan_.positions.push_back(t);
      for (int t = start; t < end;) {  // slot of token t: blocks[t / bs] * bs + t % bs
        const int b = t / bs, stop = std::min(end, (b + 1) * bs);
        const int64_t base = int64_t(r.blocks[b]) * bs - int64_t(b) * bs;
        for (; t < stop; ++t) plan_.slot_mapping.push_back(base + t);
      }
      plan_.qo_indptr.push_back(int32_t(plan_.input_ids.size()));
      const int nb = (end + bs - 1) / bs;
      plan_.kv_indices.insert(plan_.kv_indices.end(), r.blocks.begin(), r.blocks.begin() + nb);
      plan_.kv_indptr.push_back(int32_t(plan_.kv_indices.size()));
      plan_.kv_last_page_len.push_back(end - (nb - 1) * bs);
      plan_.seq_lens.push_back(end);
      if (end == r.num_tokens()) {
        plan_.sample_seq_idx.push_back(idx);
        plan_.sample_token_idx.push_back(int32_t(plan_.input_ids.size()) - 1);
      }
    }
  }
}

}  // namespace pyserve

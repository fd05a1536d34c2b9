// After the executor ran a step: append tokens, stop, register cached blocks, charge service.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "pyserve/scheduler.h"

namespace pyserve {

void Scheduler::release_deferred() {
  for (BlockId b : deferred_decref_) gpu_.decref(b);
  deferred_decref_.clear();
  for (BlockId c : cpu_deferred_) cpu_.decref(c);
  cpu_deferred_.clear();
}

void Scheduler::register_full_blocks(Request& r) {
  if (!cfg_.enable_prefix_caching) return;
  const int bs = cfg_.block_size;
  const int full = r.num_computed / bs;
  if (r.num_registered >= full) return;
  const uint64_t owner = r.tagged() ? hash_string(r.spec.program_id) : 0;
  const std::vector<uint64_t>& hs = chain_hashes(r);  // covers every full block of tokens
  for (int i = r.num_registered; i < full; ++i) {
    // NOTE: the parent must still be the entry verified at level i-1, on either tier. If it was
    // another request's block and got dropped since, the chain is broken: stop (safe).
    const uint64_t parent_hash = i > 0 ? hs[i - 1] : 0;
    if (i > 0 && !gpu_.holds(parent_hash, r.chain_tail_uid) &&
        !cpu_.holds(parent_hash, r.chain_tail_uid))
      return;
    const uint64_t parent_uid = i > 0 ? r.chain_tail_uid : 0;
    const TokenId* blk = &r.tokens[size_t(i) * bs];
    const uint64_t h = hs[i];
    BlockId c = cpu_.num_blocks() ? cpu_.match(h, parent_uid, blk, r.salt_hash) : kNoBlock;
    BlockId canon;
    if (c != kNoBlock && gpu_.adopt(r.blocks[i], cpu_.entry(c))) {
      canon = r.blocks[i];  // recomputed content the host tier already has: same uid
    } else {
      canon = gpu_.register_child(r.blocks[i], parent_uid, h, blk, r.salt_hash, owner);
    }
    r.chain_tail_uid = gpu_.uid(canon);
    r.num_registered = i + 1;
    if (r.chain_tail_uid == 0) return;  // a colliding entry holds the slot: stay uncached
  }
}

bool Scheduler::check_stop(Request& r, TokenId token) {
  const RequestSpec& s = r.spec;
  if (r.num_output() >= s.min_tokens) {
    bool eos = !s.ignore_eos && std::find(eos_.begin(), eos_.end(), token) != eos_.end();
    bool stop = std::find(s.stop_token_ids.begin(), s.stop_token_ids.end(), token) !=
                s.stop_token_ids.end();
    if (eos || stop) {
      finish(r, FinishReason::kStop);
      return true;
    }
  }
  if (r.num_output() >= s.max_tokens || r.num_tokens() >= cfg_.max_model_len) {
    finish(r, FinishReason::kLength);
    return true;
  }
  return false;
}

void Scheduler::finish(Request& r, FinishReason reason) {
  if (r.status == Status::kWaiting || r.status == Status::kSwapped) leave_queue(r);
  if (r.status == Status::kRunning && reason != FinishReason::kAbort && cfg_.enable_prefix_caching)
    pin_finished(r);  // the retention policy may keep the KV on the GPU for the next call
  if (r.status == Status::kRunning) free_gpu_blocks(r);
  for (BlockId c : r.cpu_blocks) cpu_.decref(c);
  r.cpu_blocks.clear();
  r.status = Status::kFinished;
  r.finish = reason;
  if (reason == FinishReason::kStop) ++counters_.num_finished_stop;
  if (reason == FinishReason::kLength) ++counters_.num_finished_length;
  if (reason == FinishReason::kAbort) ++counters_.num_finished_abort;
  policy_->on_finish(r, now_);
  // Aborts fold in too, or program entries would leak service and active-call counts.
  // NOTE: by entry, not id: an ended program's retired entry takes its own calls' service.
  if (r.tagged()) {
    programs_->call_finished(*r.program, r.service, r.total_wait, now_);
  } else {
    programs_->solo_finished(r.solo, r.service, r.total_wait, now_);
  }
  r.program = nullptr;
  ids_.erase(r.spec.request_id);
  pending_release_.push_back(r.id);
}

FinishedCall Scheduler::finished_call(const Request& r) const {
  FinishedCall f;
  f.id = r.id;
  f.request_id = r.spec.request_id;
  f.reason = r.finish;
  f.num_prompt_tokens = r.num_prompt;
  f.num_output_tokens = r.num_output();
  f.num_cached_tokens = r.num_cached_tokens;
  f.service = r.service;
  f.wait = r.total_wait;
  // NOTE: a tagged entry may already be gone (ended program, last call): report the call's own.
  const ProgramEntry* p = r.tagged() ? programs_->find(r.spec.program_id) : &r.solo;
  if (p != nullptr) {
    f.program_service = p->service;
    f.program_critical = p->critical;
    f.program_wait = p->wait;
  } else {
    f.program_service = r.service;
    f.program_critical = r.snapshot + r.service;
    f.program_wait = r.total_wait;
  }
  return f;
}

void StepReport::clear() {
  for (auto* v :
       {&token_seq_ids, &tokens, &token_rows, &first_scheduled, &first_cached_tokens, &scheduled})
    v->clear();
  finished.clear();
}

void Scheduler::fill_report(double step_seconds) {
  StepReport& rep = report_;
  rep.step = plan_.step;
  rep.num_decodes = plan_.num_decodes;
  rep.num_prefills = plan_.num_prefills;
  rep.num_tokens = plan_.num_tokens();
  rep.end_time = now_;
  rep.start_time = now_ - step_seconds;
  const SchedulerStats st = stats();
  rep.gpu_blocks_free = st.gpu_blocks_free;
  rep.gpu_blocks_total = st.gpu_blocks_total;
  rep.num_running = st.num_running;
  rep.num_waiting = st.num_waiting;
  rep.num_swapped = st.num_swapped;
}

const StepReport& Scheduler::update(const int32_t* sampled, int num_sampled, double step_seconds) {
  if (num_sampled != int(plan_.sample_seq_idx.size()))
    throw std::invalid_argument("update() got " + std::to_string(num_sampled) +
                                " sampled tokens, the step has " +
                                std::to_string(plan_.sample_seq_idx.size()) + " sample rows");
  if (!(step_seconds >= 0.0)) throw std::invalid_argument("step_seconds must be >= 0");
  release_deferred();
  report_.clear();
  now_ += step_seconds;
  // Service: the step's time is shared pro rata by the tokens each sequence ran in it.
  const double per_token = plan_.num_tokens() > 0 ? step_seconds / double(plan_.num_tokens()) : 0.0;
  for (int i = 0; i < plan_.num_seqs(); ++i) {
    Request& r = req(plan_.seq_ids[i]);
    if (r.status != Status::kRunning) continue;  // aborted while the step ran
    report_.scheduled.push_back(r.id);
    if (!r.ever_scheduled) {
      r.ever_scheduled = true;
      report_.first_scheduled.push_back(r.id);
      report_.first_cached_tokens.push_back(r.num_cached_tokens);
    }
    const int n = plan_.qo_indptr[i + 1] - plan_.qo_indptr[i];
    r.num_computed += n;
    r.service += per_token * n;
    policy_->on_service(r, per_token * n);
    register_full_blocks(r);
  }
  bool any_finished = false;
  for (int j = 0; j < num_sampled; ++j) {
    Request& r = req(plan_.seq_ids[plan_.sample_seq_idx[j]]);
    if (r.status != Status::kRunning) continue;
    r.tokens.push_back(sampled[j]);
    report_.token_seq_ids.push_back(r.id);
    report_.tokens.push_back(sampled[j]);
    report_.token_rows.push_back(j);
    if (check_stop(r, sampled[j])) {
      report_.finished.push_back(finished_call(r));
      any_finished = true;
    }
  }
  if (any_finished) compact_running();
  fill_report(step_seconds);
  return report_;
}

}  // namespace pyserve

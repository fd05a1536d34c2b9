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
  const uint64_t owner = r.spec.program_id.empty() ? 0 : hash_string(r.program_key);
  for (int i = int(r.block_hashes.size()); i < full; ++i) {
    // NOTE: the parent must still be the entry verified at level i-1, on either tier. If it was
    // another request's block and got dropped since, the chain is broken: stop (safe).
    const uint64_t parent_hash = i > 0 ? r.block_hashes[i - 1] : 0;
    if (i > 0 && !gpu_.holds(parent_hash, r.chain_tail_uid) &&
        !cpu_.holds(parent_hash, r.chain_tail_uid))
      return;
    const uint64_t parent_uid = i > 0 ? r.chain_tail_uid : 0;
    const TokenId* blk = &r.tokens[size_t(i) * bs];
    uint64_t h = gpu_.masked_hash(parent_hash, blk, r.salt_hash);
    BlockId c = cpu_.num_blocks() ? cpu_.match(h, parent_uid, blk, r.salt_hash) : kNoBlock;
    BlockId canon;
    if (c != kNoBlock && gpu_.adopt(r.blocks[i], cpu_.entry(c))) {
      canon = r.blocks[i];  // recomputed content the host tier already has: same uid
    } else {
      canon =
          gpu_.register_child(r.blocks[i], parent_uid, parent_hash, blk, r.salt_hash, owner, &h);
    }
    r.chain_tail_uid = gpu_.uid(canon);
    r.block_hashes.push_back(h);
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
  policy_->on_finish(r, now_);
  // Aborts fold in too, or program entries would leak service and active-call counts.
  programs_->call_finished(r.program_key, r.service, r.total_wait, now_);
  if (r.spec.program_id.empty() && programs_->contains(r.program_key))
    programs_->end(r.program_key);
  r.program = nullptr;
  ids_.erase(r.spec.request_id);
  pending_release_.push_back(r.id);
}

std::vector<Finished> Scheduler::update(const int32_t* sampled, int num_sampled,
                                        double step_seconds) {
  if (num_sampled != int(plan_.sample_seq_idx.size()))
    throw std::invalid_argument("update() got " + std::to_string(num_sampled) +
                                " sampled tokens, the step has " +
                                std::to_string(plan_.sample_seq_idx.size()) + " sample rows");
  if (!(step_seconds >= 0.0)) throw std::invalid_argument("step_seconds must be >= 0");
  release_deferred();
  now_ += step_seconds;
  // Service: the step's time is shared pro rata by the tokens each sequence ran in it.
  const double per_token = plan_.num_tokens() > 0 ? step_seconds / double(plan_.num_tokens()) : 0.0;
  for (int i = 0; i < plan_.num_seqs(); ++i) {
    Request& r = req(plan_.seq_ids[i]);
    if (r.status != Status::kRunning) continue;  // aborted while the step ran
    const int n = plan_.qo_indptr[i + 1] - plan_.qo_indptr[i];
    r.num_computed += n;
    r.service += per_token * n;
    policy_->on_service(r, per_token * n);
    register_full_blocks(r);
  }
  std::vector<Finished> out;
  for (int j = 0; j < num_sampled; ++j) {
    Request& r = req(plan_.seq_ids[plan_.sample_seq_idx[j]]);
    if (r.status != Status::kRunning) continue;
    r.tokens.push_back(sampled[j]);
    if (check_stop(r, sampled[j])) out.push_back({r.id, r.finish});
  }
  if (!out.empty()) compact_running();
  return out;
}

}  // namespace pyserve
